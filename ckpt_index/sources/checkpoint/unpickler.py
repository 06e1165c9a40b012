"""An unpickler that builds inert data from a checkpoint's pickle.

Every global the pickle names becomes a :class:`Placeholder` type that records how it was called
and the state it was given; the module it names is never imported. A short allow-list of
pure-data constructors (``OrderedDict``, ``set``, the tensor rebuilders, numpy scalars, ...) gets
stand-ins (:mod:`.standins`), which build plain values or :class:`TensorDescriptor` objects from
their arguments and fall back to a placeholder when the arguments are not the expected plain
data. So every callable a pickle can reach is a placeholder or a stand-in, and REDUCE, BUILD,
NEWOBJ and the SET*/APPEND* opcodes only ever run code from these modules.

The parts: :mod:`.objects` (what is built), :mod:`.standins` (the allow-listed globals),
:mod:`.scan` (the opcode pre-pass and its limits), :mod:`.weights_only` (torch's allow-list) and
:mod:`.convert` (plain Python from what was built). This module holds the unpickler itself and
re-exports the names the reader and the tests use. Nothing here imports torch, numpy or
omegaconf.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from typing import Any

from ckpt_index.sources.checkpoint.convert import ConversionLimit, to_plain
from ckpt_index.sources.checkpoint.objects import (
    ELEMENT_SIZE,
    MAX_DIM,
    Placeholder,
    StorageRef,
    StorageType,
    TensorDescriptor,
    bounded_product,
    decode_scalar,
    global_name,
    is_int,
)
from ckpt_index.sources.checkpoint.scan import (
    MAX_PICKLE_CONTAINERS,
    MAX_PICKLE_OBJECTS,
    MAX_TUPLE_NESTING,
    scan_pickle,
)
from ckpt_index.sources.checkpoint.standins import resolve_global
from ckpt_index.sources.checkpoint.weights_only import WEIGHTS_ONLY_ALLOWED, weights_only_name

__all__ = [
    "ELEMENT_SIZE",
    "MAX_GLOBALS_RECORDED",
    "MAX_PICKLE_CONTAINERS",
    "MAX_PICKLE_OBJECTS",
    "MAX_TUPLE_NESTING",
    "WEIGHTS_ONLY_ALLOWED",
    "ConversionLimit",
    "Placeholder",
    "SafeUnpickler",
    "StorageRef",
    "StorageType",
    "TensorDescriptor",
    "bounded_product",
    "decode_scalar",
    "global_name",
    "resolve_global",
    "scan_pickle",
    "to_plain",
]

#: Globals remembered per pickle at most (each costs a few bytes of pickle).
MAX_GLOBALS_RECORDED = 10_000


class SafeUnpickler(pickle.Unpickler):
    """Unpickles a checkpoint's pickle into placeholders, descriptors and plain data.

    ``storages`` collects every storage the pickle references, by key; ``globals`` every global it
    names (``module.name`` as torch.load spells them; at most :data:`MAX_GLOBALS_RECORDED`).
    """

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.storages: dict[str, StorageRef] = {}
        self.globals: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        if not isinstance(module, str) or not isinstance(name, str):
            raise pickle.UnpicklingError("global names must be strings")
        if len(self.globals) < MAX_GLOBALS_RECORDED:
            self.globals.add(weights_only_name(module, name))
        return resolve_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError(f"unsupported persistent id {_short(pid)}")
        kind = _ascii(pid[0])
        if kind == "module" and len(pid) >= 2:  # legacy format: a module class with its source
            return pid[1]
        if kind != "storage" or len(pid) not in (5, 6):
            raise pickle.UnpicklingError(f"unsupported persistent id {_short(pid)}")
        storage_type, key, location, numel = pid[1:5]
        key, location = _ascii(key), _ascii(location)
        if (
            not isinstance(storage_type, StorageType)
            or not isinstance(key, str)
            or not is_int(numel)
            or not 0 <= numel < MAX_DIM
        ):
            raise pickle.UnpicklingError(f"unsupported storage reference {_short(pid)}")
        ref = StorageRef(
            key, storage_type.dtype, location if isinstance(location, str) else "?", numel
        )
        self.storages.setdefault(key, ref)
        view = pid[5] if len(pid) == 6 else None
        if view is not None:  # legacy storage view: (view_key, offset, size) into the root storage
            if not (
                isinstance(view, tuple)
                and len(view) == 3
                and is_int(view[1])
                and is_int(view[2])
                and 0 <= view[1] < MAX_DIM
                and 0 <= view[2] < MAX_DIM
            ):
                raise pickle.UnpicklingError(f"unsupported storage view {_short(pid)}")
            ref = replace(ref, numel=view[2], offset=view[1])
        return ref


def _ascii(value: Any) -> Any:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
