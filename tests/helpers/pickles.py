"""Pickles that name arbitrary globals, and payloads that would run code if anything loaded them.

A reader that is safe never imports what such a pickle names and never calls it; each payload
would create a canary file if it ran.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import posix
import subprocess
import sys
from pathlib import Path
from typing import Any


class Global:
    """Pickles as a reference to ``module.name``; the module need not exist here."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args: Any) -> Any:
        raise AssertionError("only pickled, never called")


class Call:
    """Pickles as ``func(*args)`` (REDUCE) or ``func.__new__(func, *args)`` (NEWOBJ), then BUILD."""

    def __init__(self, func: Any, *args: Any, state: Any = None, newobj: bool = False) -> None:
        self.func, self.args, self.state, self.newobj = func, args, state, newobj

    def __call__(self, *args: Any) -> Any:
        raise AssertionError("only pickled, never called")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class _Pickler(pickle._Pickler):  # the pure-Python pickler, so Global can be written as GLOBAL
    def __init__(self, file: io.BytesIO, protocol: int, persistent: dict[int, Any]) -> None:
        super().__init__(file, protocol)
        self._persistent = persistent

    def persistent_id(self, obj: Any) -> Any:
        return self._persistent.get(id(obj))

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, Global):
            if self.proto >= 4:
                self.save(obj.module)
                self.save(obj.name)
                self.write(pickle.STACK_GLOBAL)
            else:
                self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        if isinstance(obj, Call) and obj.newobj:
            # save_reduce without obj: func need not be the class of the object being built.
            self.save_reduce(copyreg.__newobj__, (obj.func, *obj.args), obj.state)
            return
        super().save(obj, save_persistent_id)


def dumps(obj: Any, protocol: int = 2, persistent: dict[int, Any] | None = None) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol, persistent or {}).dump(obj)
    return buffer.getvalue()


def payloads(canary: Path) -> dict[str, Call]:
    """Calls that would each create ``canary`` if anything ran them."""
    write = f"open({str(canary)!r}, 'w').close()"
    touch = f"touch {canary}"
    return {
        "os.system": Call(Global("os", "system"), touch),
        "posix.system": Call(posix.system, touch),
        "subprocess.Popen": Call(subprocess.Popen, [sys.executable, "-c", write]),
        "builtins.eval": Call(eval, write),
        "builtins.exec": Call(exec, write),
        "getattr gadget": Call(Call(getattr, Call(__import__, "os"), "system"), touch),
        "nested pickle.loads": Call(pickle.loads, pickle.dumps(Call(posix.system, touch))),
        "NEWOBJ and BUILD": Call(Global("os", "system"), newobj=True, state={"cmd": touch}),
    }


PAYLOAD_NAMES = list(payloads(Path("x")))
