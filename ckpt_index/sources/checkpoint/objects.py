"""What the safe unpickler builds: placeholders for named globals, tensor and storage descriptors,
and the dtype tables and shape bounds they rely on.

Nothing here imports torch or numpy: a dtype is its name (``"float32"``), its element size comes
from :data:`ELEMENT_SIZE`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, ClassVar

# ---------------------------------------------------------------------------------------------
# dtypes

#: torch dtype name (canonical) -> element size in bytes.
ELEMENT_SIZE = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint64": 8,
    "uint32": 4,
    "uint16": 2,
    "uint8": 1,
    "bool": 1,
    "complex128": 16,
    "complex64": 8,
    "complex32": 4,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "float8_e4m3fnuz": 1,
    "float8_e5m2fnuz": 1,
    "float8_e8m0fnu": 1,
    "float4_e2m1fn_x2": 1,
    "qint8": 1,
    "quint8": 1,
    "qint32": 4,
    "quint4x2": 1,
    "quint2x4": 1,
}
_DTYPE_ALIASES = {
    "float": "float32",
    "double": "float64",
    "half": "float16",
    "long": "int64",
    "int": "int32",
    "short": "int16",
    "cfloat": "complex64",
    "cdouble": "complex128",
    "chalf": "complex32",
}
#: ``torch.<X>Storage`` (the legacy typed-storage names torch still writes) -> dtype.
STORAGE_DTYPES = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
    "QInt8Storage": "qint8",
    "QInt32Storage": "qint32",
    "QUInt8Storage": "quint8",
    "QUInt4x2Storage": "quint4x2",
    "QUInt2x4Storage": "quint2x4",
    "UntypedStorage": "uint8",  # torch 2.x writes new dtypes as bytes plus an explicit dtype
}
_STRUCT_CODES = {
    "float64": "d",
    "float32": "f",
    "float16": "e",
    "int64": "q",
    "int32": "i",
    "int16": "h",
    "int8": "b",
    "uint64": "Q",
    "uint32": "I",
    "uint16": "H",
    "uint8": "B",
    "complex128": "dd",
    "complex64": "ff",
}
#: numpy dtype codes (``numpy.dtype('f8', ...)``) -> torch-style dtype names.
_NUMPY_DTYPES = {
    "f8": "float64",
    "f4": "float32",
    "f2": "float16",
    "i8": "int64",
    "i4": "int32",
    "i2": "int16",
    "i1": "int8",
    "u8": "uint64",
    "u4": "uint32",
    "u2": "uint16",
    "u1": "uint8",
    "b1": "bool",
    "c16": "complex128",
    "c8": "complex64",
}


def decode_scalar(
    dtype: str, data: bytes, byteorder: str = "little"
) -> bool | int | float | complex | None:
    """The value of one element of ``dtype`` stored in ``data``, or None if not decodable."""
    if len(data) != ELEMENT_SIZE.get(dtype, -1):
        return None
    if dtype == "bool":
        return data != b"\x00"
    prefix = "<" if byteorder == "little" else ">"
    if dtype == "bfloat16":  # the top half of a float32
        padded = b"\x00\x00" + data if byteorder == "little" else data + b"\x00\x00"
        return struct.unpack(prefix + "f", padded)[0]
    code = _STRUCT_CODES.get(dtype)
    if code is None:
        return None
    values = struct.unpack(prefix + code, data)
    return complex(*values) if len(values) == 2 else values[0]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an int and not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


#: Bounds on shapes and strides from a pickle, checked before any product is taken: a shape of a
#: million dims of 2**63 costs minutes of bigint multiplication.
MAX_NDIM = 64
MAX_DIM = 1 << 63
MAX_NUMEL = 1 << 63


def bounded_product(dims: Any, cap: int) -> int:
    """The product of ``dims`` (ints in ``[0, MAX_DIM)``), or -1 once it would exceed ``cap``."""
    total = 1
    for dim in dims:
        if not 0 <= dim < MAX_DIM:
            return -1
        total *= dim
        if total > cap:
            return -1
    return total


# ---------------------------------------------------------------------------------------------
# What the unpickler builds


class Placeholder:
    """An instance of a class the pickle names; records the call and the state, runs nothing.

    The subclasses (one per ``module.name``, made by :func:`placeholder_type`) carry ``module``
    and ``name``; instances keep ``args``/``kwargs`` (REDUCE, NEWOBJ), ``state`` (BUILD),
    ``dict_items`` (SETITEM on dict subclasses) and ``list_items`` (APPEND on list subclasses).
    """

    __slots__ = ("args", "kwargs", "state", "dict_items", "list_items")
    module: ClassVar[str] = ""
    name: ClassVar[str] = ""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    dict_items: list[tuple[Any, Any]] | None
    list_items: list[Any] | None

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        self = object.__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state = None
        self.dict_items = None
        self.list_items = None
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass  # __new__ recorded everything; calling the type (REDUCE) must not fail on arguments

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        if self.dict_items is None:
            self.dict_items = []
        self.dict_items.append((key, value))

    def append(self, item: Any) -> None:
        if self.list_items is None:
            self.list_items = []
        self.list_items.append(item)

    def extend(self, items: Any) -> None:
        for item in items:
            self.append(item)

    def __repr__(self) -> str:
        return f"<{self.module}.{self.name}>"


_TYPE_CACHE: dict[tuple[str, str], type[Placeholder]] = {}
_TYPE_CACHE_LIMIT = 10_000  # names come from untrusted files; do not grow without bound


def placeholder_type(module: str, name: str) -> type[Placeholder]:
    """The placeholder type for ``module.name`` (NEWOBJ needs a type, not a factory)."""
    key = (module, name)
    cls = _TYPE_CACHE.get(key)
    if cls is None:
        type_name = "".join(ch if ch.isprintable() else "?" for ch in name[:200]) or "?"
        cls = type(type_name, (Placeholder,), {"__slots__": (), "module": module, "name": name})
        if len(_TYPE_CACHE) < _TYPE_CACHE_LIMIT:
            _TYPE_CACHE[key] = cls
    return cls


def global_name(obj: Any) -> str | None:
    """``module.name`` of a placeholder instance or type, else None."""
    cls = obj if isinstance(obj, type) else type(obj)
    if issubclass(cls, Placeholder) and cls is not Placeholder:
        return f"{cls.module}.{cls.name}"
    return None


@dataclass(frozen=True)
class StorageType:
    """A ``torch.<X>Storage`` class named by the pickle."""

    name: str
    dtype: str


@dataclass(frozen=True)
class StorageRef:
    """A tensor storage the pickle refers to by persistent id; its bytes are never read here."""

    key: str
    dtype: str
    location: str
    numel: int
    #: Legacy (pre-1.6) storage views start ``offset`` elements into the root storage.
    offset: int = 0

    @property
    def nbytes(self) -> int:
        # numel is checked to be below 2**63 where the reference is made; keep it so here too.
        return min(self.numel, MAX_DIM) * ELEMENT_SIZE.get(self.dtype, 1)


@dataclass
class TensorDescriptor:
    """What a tensor would be, without its data: dtype, shape and where its storage lives.

    ``value`` is filled in by the checkpoint reader for 0-d tensors whose bytes it decoded.
    """

    dtype: str
    shape: tuple[int, ...]
    storage: StorageRef | None = None
    storage_offset: int = 0
    stride: tuple[int, ...] | None = None
    requires_grad: bool = False
    kind: str = "tensor"  # or "parameter", or the ``module.name`` of a tensor subclass
    value: bool | int | float | complex | None = None

    @property
    def storage_key(self) -> str | None:
        return self.storage.key if self.storage is not None else None

    @property
    def numel(self) -> int:
        """The element count, or -1 when it exceeds :data:`MAX_NUMEL` (no real tensor does)."""
        return bounded_product(self.shape, MAX_NUMEL)

    def __repr__(self) -> str:
        return f"<{self.kind} {self.dtype} {list(self.shape)}>"


class OrderedDictState(dict):
    """``collections.OrderedDict`` as a plain dict that also accepts BUILD (a state dict's
    ``_metadata``)."""

    def __setstate__(self, state: Any) -> None:
        self.pickled_state = state
