"""What a worker process and its parent share: task names and the wire between them.

A task is a function named by ``"package.module:function"``; only names under ``ckpt_index.`` are
run, so a request can never make a worker import or call anything outside the package. The
module holding a task may list, in ``WORKER_IMPORTS``, the modules its tasks import lazily: each
worker imports them before its memory ceiling is set, so that the ceiling is the file's alone.

On the wire every message is a length-prefixed pickle (little-endian 64-bit size, then the pickle)
of plain data: containers and atoms, loaded by :class:`PlainUnpickler`, which refuses every
class but a few pure-data builtins. A worker cannot hand its parent anything that runs code.
"""

from __future__ import annotations

import io
import pickle
import re
import struct
from collections.abc import Callable
from typing import Any

#: The package whose functions may run as tasks.
TASK_PACKAGE = "ckpt_index"
_TASK_NAME = re.compile(r"(ckpt_index(?:\.\w+)+):(\w+)\Z")
#: Name of a module-level tuple of modules to import before the memory ceiling.
WORKER_IMPORTS = "WORKER_IMPORTS"

#: Exit status of a worker that hit its memory ceiling (MemoryError was raised).
EXIT_MEMORY = 86
#: No reply may exceed this (a worker's memory is capped anyway; this caps the parent's).
MAX_REPLY_BYTES = 256 << 20
HEADER = struct.Struct("<Q")

Task = str | Callable[..., Any]


def task_name(task: Task) -> str:
    """The ``"module:function"`` name of ``task`` (a function or its name), checked.

    Raises ValueError for a name outside the package or not of that form.
    """
    name = task if isinstance(task, str) else f"{task.__module__}:{task.__qualname__}"
    split_task(name)
    return name


def split_task(name: str) -> tuple[str, str]:
    """(module, function) of a task name; ValueError unless it names a function of the package."""
    match = _TASK_NAME.match(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(
            f"unknown task {name!r}: tasks are named 'module:function' within {TASK_PACKAGE}"
        )
    return match.group(1), match.group(2)


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def frame(obj: Any) -> bytes:
    """``obj`` as one message: its size, then its pickle."""
    data = pickle.dumps(obj, protocol=5)
    return HEADER.pack(len(data)) + data


def recv(stream: io.RawIOBase) -> Any:
    """The next message on a blocking ``stream``; None at its end."""
    header = _read_exact(stream, HEADER.size)
    if header is None:
        return None
    (size,) = HEADER.unpack(header)
    data = _read_exact(stream, size)
    if data is None:
        return None
    return PlainUnpickler(io.BytesIO(data)).load()


def _read_exact(stream: io.RawIOBase, size: int) -> bytes | None:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class PlainUnpickler(pickle.Unpickler):
    """Loads plain data only: containers and atoms, no class but a few pure-data builtins."""

    _ALLOWED = {
        ("builtins", "complex"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "slice"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a worker reply")
