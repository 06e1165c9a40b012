"""An unpickler that builds inert data from a checkpoint's pickle, and its conversion to plain Python.

Every global the pickle names becomes a :class:`Placeholder` type that records how it was called
and the state it was given; the module it names is never imported. A short allow-list of pure-data
constructors (``OrderedDict``, ``set``, the tensor rebuilders, numpy scalars, ...) gets stand-ins
defined here, which build plain values or :class:`TensorDescriptor` objects from their arguments
and fall back to a placeholder when the arguments are not the expected plain data. So every
callable a pickle can reach is a placeholder or a stand-in, and REDUCE, BUILD, NEWOBJ and the
SET*/APPEND* opcodes only ever run code from this module.

Nothing here imports torch, numpy or omegaconf.
"""

from __future__ import annotations

import _compat_pickle
import functools
import ntpath
import pickle
import posixpath
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
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

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        self = object.__new__(cls)
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None
        self.dict_items: list[tuple[Any, Any]] | None = None
        self.list_items: list[Any] | None = None
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


class _Refuse(Exception):
    """A stand-in was called with something other than the plain data it accepts."""


class OrderedDictState(dict):
    """``collections.OrderedDict`` as a plain dict that also accepts BUILD (state_dict ``_metadata``)."""

    def __setstate__(self, state: Any) -> None:
        self.pickled_state = state


# ---------------------------------------------------------------------------------------------
# Stand-ins for the allow-listed globals


def _is_int(value: Any) -> bool:
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


def _int_tuple(value: Any) -> tuple[int, ...]:
    if (
        isinstance(value, (tuple, list))
        and len(value) <= MAX_NDIM
        and all(_is_int(v) and -MAX_DIM <= v < MAX_DIM for v in value)
    ):
        return tuple(value)
    raise _Refuse


def _ordered_dict(*args: Any) -> OrderedDictState:
    if not args:
        return OrderedDictState()
    if len(args) == 1 and isinstance(args[0], dict):
        return OrderedDictState(args[0])
    if (
        len(args) == 1
        and isinstance(args[0], (list, tuple))
        and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in args[0])
    ):
        return OrderedDictState(args[0])
    raise _Refuse


def _collection(factory: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if not args:
            return factory()
        if len(args) == 1 and isinstance(args[0], (list, tuple, set, frozenset)):
            return factory(args[0])
        raise _Refuse

    return build


def _numbers(factory: type) -> Callable[..., Any]:
    def build(*args: Any) -> Any:
        if all(v is None or isinstance(v, (int, float)) for v in args):
            return factory(*args)
        raise _Refuse

    return build


def _codecs_encode(text: Any, encoding: Any = "utf-8", *rest: Any) -> bytes:
    # Protocol 2 pickles bytes as _codecs.encode(text, 'latin1'); allow exactly that.
    if isinstance(text, str) and encoding in ("latin1", "latin-1") and not rest:
        return text.encode("latin-1")
    raise _Refuse


def _bytes(*args: Any) -> bytes:
    if not args:
        return b""
    if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
        return bytes(args[0])
    if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
        return args[0].encode("latin-1")
    raise _Refuse


def _torch_size(*args: Any) -> tuple[int, ...]:
    if not args:
        return ()
    if len(args) == 1:
        return _int_tuple(args[0])
    raise _Refuse


def _torch_device(*args: Any) -> str:
    if len(args) == 1 and isinstance(args[0], str):
        return args[0]
    if len(args) == 2 and isinstance(args[0], str) and _is_int(args[1]):
        return f"{args[0]}:{args[1]}"
    raise _Refuse


def _tensor(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    dtype: str | None = None,
) -> TensorDescriptor:
    if not isinstance(storage, StorageRef) or not _is_int(offset) or not 0 <= offset < MAX_DIM:
        raise _Refuse
    return TensorDescriptor(
        dtype=dtype or storage.dtype,
        shape=_int_tuple(size),
        storage=storage,
        storage_offset=offset,
        stride=_int_tuple(stride) if stride is not None else None,
        requires_grad=bool(requires_grad),
    )


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any) -> TensorDescriptor:
    return _tensor(storage, offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> TensorDescriptor:
    return _tensor(storage, offset, size, stride, requires_grad)


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> TensorDescriptor:
    if not isinstance(dtype, str) or dtype not in ELEMENT_SIZE:
        raise _Refuse
    return _tensor(storage, offset, size, stride, requires_grad, dtype=dtype)


def _rebuild_parameter(
    data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None
) -> TensorDescriptor:
    if not isinstance(data, TensorDescriptor):
        raise _Refuse
    return replace(data, requires_grad=bool(requires_grad), kind="parameter")


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    if not (
        isinstance(func, _StandIn) and func.func in _TENSOR_REBUILDERS and isinstance(args, tuple)
    ):
        raise _Refuse
    result = func(*args)
    if isinstance(result, TensorDescriptor):
        kind = global_name(new_type)
        if kind and kind not in ("torch.Tensor", "torch._tensor.Tensor"):
            result = replace(
                result, kind="parameter" if kind == "torch.nn.parameter.Parameter" else kind
            )
    return result


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    code = numpy_dtype_code(dtype)
    if code is None or not isinstance(data, bytes):
        raise _Refuse
    name, byteorder = code
    value = decode_scalar(name, data, byteorder)
    if value is None:
        raise _Refuse
    return value


def numpy_dtype_code(dtype: Any) -> tuple[str, str] | None:
    """(dtype name, byteorder) of a ``numpy.dtype`` placeholder, if it is a simple numeric one."""
    if global_name(dtype) != "numpy.dtype" or not dtype.args or not isinstance(dtype.args[0], str):
        return None
    name = _NUMPY_DTYPES.get(dtype.args[0])
    if name is None:
        return None
    order = dtype.state[1] if isinstance(dtype.state, tuple) and len(dtype.state) > 1 else "="
    return name, "big" if order == ">" else "little"


def _newobj(cls: Any, *args: Any) -> Any:
    # copyreg.__newobj__ (a custom __reduce__ at protocols 0 and 1): what NEWOBJ does later on.
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        return cls.__new__(cls, *args)
    raise _Refuse


def _newobj_ex(cls: Any, args: Any = (), kwargs: Any = None) -> Any:
    if isinstance(cls, type) and issubclass(cls, Placeholder) and isinstance(args, tuple):
        return cls.__new__(cls, *args, **(kwargs if isinstance(kwargs, dict) else {}))
    raise _Refuse


def _reconstructor(cls: Any, base: Any = None, state: Any = None) -> Any:
    # copyreg._reconstructor (protocols 0 and 1): an instance of cls, filled by a later BUILD.
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        return cls.__new__(cls)
    raise _Refuse


_TENSOR_REBUILDERS: frozenset[Callable[..., Any]] = frozenset(
    {
        _rebuild_tensor,
        _rebuild_tensor_v2,
        _rebuild_tensor_v3,
        _rebuild_parameter,
    }
)

_SAFE_CALLABLES: dict[tuple[str, str], Callable[..., Any]] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): _collection(set),
    ("builtins", "frozenset"): _collection(frozenset),
    ("builtins", "slice"): _numbers(slice),
    ("builtins", "complex"): _numbers(complex),
    ("builtins", "bytes"): _bytes,
    ("builtins", "bytearray"): _bytes,
    ("_codecs", "encode"): _codecs_encode,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("copyreg", "__newobj__"): _newobj,
    ("copyreg", "__newobj_ex__"): _newobj_ex,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch.tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,  # torch < 1.9 spelling
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
}


class _StandIn:
    """An allow-listed global: calls its safe function, or records a placeholder if it refuses.

    A slotted instance rather than a function, so a BUILD aimed at it cannot set attributes on an
    object shared by every read in the process.
    """

    __slots__ = ("module", "name", "func")

    def __init__(self, module: str, name: str, func: Callable[..., Any]) -> None:
        self.module, self.name, self.func = module, name, func

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.func(*args, **kwargs)
        except (_Refuse, TypeError, ValueError, OverflowError):
            return placeholder_type(self.module, self.name)(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"BUILD on the global {self.module}.{self.name}")

    def __repr__(self) -> str:
        return f"<{self.module}.{self.name}>"


_STAND_INS: dict[tuple[str, str], _StandIn] = {
    key: _StandIn(*key, func) for key, func in _SAFE_CALLABLES.items()
}


def _canonical(module: str, name: str) -> tuple[str, str]:
    """Python 2 spellings (``__builtin__.set``, written by protocol 2 pickles) to Python 3 ones."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def resolve_global(module: str, name: str) -> Any:
    """What ``find_class(module, name)`` yields: a stand-in, a constant or a placeholder type."""
    module, name = _canonical(module, name)
    stand_in = _STAND_INS.get((module, name))
    if stand_in is not None:
        return stand_in
    if module in ("torch", "torch.cuda", "torch.storage") and name in STORAGE_DTYPES:
        return StorageType(f"{module}.{name}", STORAGE_DTYPES[name])
    if module == "torch":
        dtype = _DTYPE_ALIASES.get(name, name)
        if dtype in ELEMENT_SIZE:
            return dtype  # torch.float32 and friends as their names
    return placeholder_type(module, name)


#: Objects the pickle may create (each opcode that pushes onto the stack counts, references
#: included). A Lightning checkpoint of 100k tensors with Adam state pushes about 9 million.
MAX_PICKLE_OBJECTS = 20_000_000
#: Containers (lists, dicts, sets, tuples, called globals) among them; that checkpoint has 2.3 million.
MAX_PICKLE_CONTAINERS = 6_000_000
#: Tuples and frozensets nested deeper than this are refused: CPython hashes a tuple by recursing
#: in C without a depth check, so a dict key nested a million deep crashes the process.
MAX_TUPLE_NESTING = 100

# What each opcode does to the stack, for scan_pickle's model of it.
(
    _ATOM,
    _CONTAINER,
    _TUPLE_N,
    _TUPLE_MARK,
    _LIST_MARK,
    _POP_N,
    _POP_N_PUSH,
    _POP_MARK_ONLY,
    _GET,
    _PUT,
    _MEMOIZE,
    _DUP,
    _MARK,
    _POP,
    _PERSID,
    _KEEP,
    _NOTHING,
    _STOP,
    _SETITEM,
) = range(19)


@functools.cache
def _opcode_table() -> tuple[tuple[int | None, int, int] | None, ...]:
    """Opcode byte -> (argument size, effect, count), None if unknown.

    The argument size follows pickletools' convention (< 0 for variable); ``count`` is how many
    items the effect pops, where it pops a fixed number.
    """
    import pickletools

    effects: dict[str, tuple[int, int]] = {
        "EMPTY_LIST": (_CONTAINER, 0),
        "EMPTY_DICT": (_CONTAINER, 0),
        "EMPTY_SET": (_CONTAINER, 0),
        "BYTEARRAY8": (_CONTAINER, 0),
        "TUPLE1": (_TUPLE_N, 1),
        "TUPLE2": (_TUPLE_N, 2),
        "TUPLE3": (_TUPLE_N, 3),
        "TUPLE": (_TUPLE_MARK, 0),
        "FROZENSET": (_TUPLE_MARK, 0),
        "LIST": (_LIST_MARK, 0),
        "DICT": (_LIST_MARK, 0),
        "INST": (_LIST_MARK, 0),
        "OBJ": (_LIST_MARK, 0),
        "APPEND": (_POP_N, 1),
        "SETITEM": (_SETITEM, 2),
        "APPENDS": (_POP_MARK_ONLY, 0),
        "SETITEMS": (_POP_MARK_ONLY, 0),
        "ADDITEMS": (_POP_MARK_ONLY, 0),
        "POP_MARK": (_POP_MARK_ONLY, 0),
        "REDUCE": (_POP_N_PUSH, 2),
        "NEWOBJ": (_POP_N_PUSH, 2),
        "NEWOBJ_EX": (_POP_N_PUSH, 3),
        "STACK_GLOBAL": (_POP_N_PUSH, 2),
        "BUILD": (_POP_N, 1),
        "GET": (_GET, 0),
        "BINGET": (_GET, 0),
        "LONG_BINGET": (_GET, 0),
        "PUT": (_PUT, 0),
        "BINPUT": (_PUT, 0),
        "LONG_BINPUT": (_PUT, 0),
        "MEMOIZE": (_MEMOIZE, 0),
        "DUP": (_DUP, 0),
        "MARK": (_MARK, 0),
        "POP": (_POP, 0),
        # The legacy format's ("module", cls, source) persistent id yields one of its items.
        "BINPERSID": (_PERSID, 1),
        "READONLY_BUFFER": (_KEEP, 1),
        "READWRITE_BUFFER": (_KEEP, 1),
        "PROTO": (_NOTHING, 0),
        "FRAME": (_NOTHING, 0),
        "STOP": (_STOP, 0),
    }
    table: list[tuple[int | None, int, int] | None] = [None] * 256
    for op in pickletools.opcodes:
        size = op.arg.n if op.arg is not None else 0
        if op.code in "ci":  # GLOBAL and INST take two newline-terminated lines
            size = _TWO_LINES
        effect, count = effects.get(op.name, (_ATOM, 0))  # the rest push one new atom
        table[ord(op.code)] = (size, effect, count)
    return tuple(table)


_TWO_LINES = -100
_LENGTH_WIDTHS = {-2: 1, -3: 4, -4: 4, -5: 8}  # pickletools' TAKEN_FROM_ARGUMENT{1,4,4U,8U}


def scan_pickle(data: bytes, start: int = 0) -> int:
    """Check the opcodes of the pickle at ``data[start:]`` without running any; return where it ends.

    A model of the unpickler's stack finds, before anything is built:

    - memo indexes beyond the count of opcodes so far (CPython's C unpickler grows its memo to the
      largest index a PUT names: a five-byte ``LONG_BINPUT 2**30`` allocates 16 GiB);
    - more than :data:`MAX_PICKLE_OBJECTS` objects or :data:`MAX_PICKLE_CONTAINERS` containers (a
      few hundred compressed bytes of ``EMPTY_LIST`` would become gigabytes of lists);
    - tuples or frozensets nested deeper than :data:`MAX_TUPLE_NESTING` (exact: they are immutable,
      so the depth of every stack and memo slot is known).

    Raises :class:`pickle.UnpicklingError` with a one-line reason (it says "truncated" when the
    data ends first).
    """
    table, fast_atoms = _opcode_table(), _fast_atoms()
    find, end = data.find, len(data)
    pos = start
    # Per stack slot, the tuple nesting of what it holds (0 for anything but a tuple or frozenset);
    # memo slots likewise, only the non-zero ones kept. A memo index cannot exceed the number of
    # opcodes so far, which ``pos`` bounds (an opcode is at least a byte).
    stack: list[int] = []
    push = stack.append
    marks: list[int] = []
    memo: dict[int, int] = {}
    memo_len = pushes = containers = 0
    fence = 0  # the unpickler never pops below the last mark
    while pos < end:
        code = data[pos]
        # Fast paths, most frequent first, for what real checkpoints are mostly made of.
        size = fast_atoms[code]
        if size >= 0:  # an atom with a fixed-size argument (BININT1, NEWFALSE, EMPTY_TUPLE, ...)
            pos += size + 1
            pushes += 1
            if pushes > MAX_PICKLE_OBJECTS:
                break
            push(0)
            continue
        if code == _LONG_BINPUT or code == _BINPUT:
            at = pos
            pos += 5 if code == _LONG_BINPUT else 2
            if pos > end:
                break
            index = int.from_bytes(data[at + 1 : pos], "little")
            if index > at:
                raise pickle.UnpicklingError(f"memo index out of range at byte {at}")
            if len(stack) <= fence:
                raise pickle.UnpicklingError(f"PUT on an empty stack at byte {at}")
            if stack[-1]:
                memo[index] = stack[-1]
            elif memo:
                memo.pop(index, None)
            continue
        if code == _BINGET or code == _LONG_BINGET:
            at = pos
            pos += 2 if code == _BINGET else 5
            pushes += 1
            if pushes > MAX_PICKLE_OBJECTS:
                break
            push(memo.get(int.from_bytes(data[at + 1 : pos], "little"), 0) if memo else 0)
            continue
        if code == _BINUNICODE:
            pos += 5 + int.from_bytes(data[pos + 1 : pos + 5], "little")
            pushes += 1
            if pushes > MAX_PICKLE_OBJECTS:
                break
            push(0)
            continue
        if code == _MARK_CODE:
            pos += 1
            fence = len(stack)
            marks.append(fence)
            pushes += 1
            if pushes > MAX_PICKLE_OBJECTS:
                break
            continue
        if code == _REDUCE and len(stack) - 2 >= fence:  # a call's result is never a nested tuple
            pos += 1
            del stack[-1]
            stack[-1] = 0
            pushes += 1
            containers += 1
            if containers > MAX_PICKLE_CONTAINERS:
                break
            continue
        if code == _TUPLE_CODE and marks:
            pos += 1
            mark = marks.pop()
            fence = marks[-1] if marks else 0
            depth = 1
            if len(stack) > mark:
                depth += max(stack[mark:])
                del stack[mark:]
            if depth > MAX_TUPLE_NESTING:
                raise pickle.UnpicklingError(
                    f"a tuple or frozenset nested deeper than {MAX_TUPLE_NESTING} levels at byte {pos - 1}"
                )
            push(depth)
            pushes += 1
            containers += 1
            if containers > MAX_PICKLE_CONTAINERS:
                break
            continue
        entry = table[code]
        if entry is None:
            raise pickle.UnpicklingError(f"invalid opcode {bytes([code])!r} at byte {pos}")
        at = pos
        pos += 1
        size, effect, count = entry
        if size == 0:
            pass
        elif size > 0:
            pos += size
        elif size == -1:  # up to a newline
            line_end = find(b"\n", pos)
            if line_end < 0:
                break
            pos = line_end + 1
        elif size == _TWO_LINES:
            first = find(b"\n", pos)
            line_end = find(b"\n", first + 1) if first >= 0 else -1
            if line_end < 0:
                break
            pos = line_end + 1
        else:  # a length of 1, 4 (signed or not) or 8 bytes, then that many bytes
            width = _LENGTH_WIDTHS[size]
            length = int.from_bytes(data[pos : pos + width], "little", signed=size == -3)
            if length < 0:
                raise pickle.UnpicklingError(f"negative length at byte {at}")
            pos += width + length
        if pos > end:
            break
        if effect == _ATOM:
            push(0)
            pushes += 1
        elif effect == _TUPLE_N or effect == _TUPLE_MARK:
            if effect == _TUPLE_MARK:
                if not marks:
                    raise pickle.UnpicklingError(f"no MARK before byte {at}")
                count = len(stack) - marks.pop()
            elif len(stack) - count < fence:
                raise pickle.UnpicklingError(f"stack underflow at byte {at}")
            depth = 1
            if count:
                depth += max(stack[-count:])
                del stack[-count:]
                if depth > MAX_TUPLE_NESTING:
                    raise pickle.UnpicklingError(
                        f"a tuple or frozenset nested deeper than {MAX_TUPLE_NESTING} levels at byte {at}"
                    )
            fence = marks[-1] if marks else 0
            push(depth)
            pushes += 1
            containers += 1
        elif effect == _POP_N_PUSH or effect == _PERSID or effect == _KEEP:
            if len(stack) - count < fence:
                raise pickle.UnpicklingError(f"stack underflow at byte {at}")
            # A call never returns a nested tuple (every callable is a stand-in or a placeholder
            # type); a legacy persistent id yields one of its own items.
            depth = stack[-1] if effect != _POP_N_PUSH else 0
            del stack[-count:]
            push(depth)
            pushes += 1
            containers += effect == _POP_N_PUSH
        elif effect == _POP_N or effect == _SETITEM:
            if len(stack) - count - 1 < fence:
                raise pickle.UnpicklingError(f"stack underflow at byte {at}")
            del stack[-count:]
        elif effect == _CONTAINER:
            push(0)
            pushes += 1
            containers += 1
        elif effect == _LIST_MARK or effect == _POP_MARK_ONLY:
            if not marks:
                raise pickle.UnpicklingError(f"no MARK before byte {at}")
            del stack[marks.pop() :]
            fence = marks[-1] if marks else 0
            if effect == _LIST_MARK:
                push(0)
                pushes += 1
                containers += 1
            elif code != _POP_MARK and not stack:  # APPENDS, SETITEMS, ADDITEMS need their target
                raise pickle.UnpicklingError(f"stack underflow at byte {at}")
        elif effect == _PUT or effect == _GET:
            index = _memo_index(code, data, at, pos)
            if effect == _GET:
                push(memo.get(index, 0))
                pushes += 1
            elif index > at:
                raise pickle.UnpicklingError(f"memo index out of range at byte {at}")
            elif len(stack) <= fence:
                raise pickle.UnpicklingError(f"PUT on an empty stack at byte {at}")
            elif stack[-1]:
                memo[index] = stack[-1]
            else:
                memo.pop(index, None)
        elif effect == _MEMOIZE:
            if len(stack) <= fence:
                raise pickle.UnpicklingError(f"MEMOIZE on an empty stack at byte {at}")
            if stack[-1]:
                memo[memo_len] = stack[-1]
            memo_len += 1
        elif effect == _DUP:
            if len(stack) <= fence:
                raise pickle.UnpicklingError(f"stack underflow at byte {at}")
            push(stack[-1])
            pushes += 1
        elif effect == _POP:
            if marks and marks[-1] == len(stack):
                marks.pop()
                fence = marks[-1] if marks else 0
            elif len(stack) <= fence:
                raise pickle.UnpicklingError(f"stack underflow at byte {at}")
            else:
                stack.pop()
        elif effect == _STOP:
            return pos
        if pushes > MAX_PICKLE_OBJECTS or containers > MAX_PICKLE_CONTAINERS:
            break
    # Every fast path that counts breaks out of the loop when a count is over its limit.
    if pushes > MAX_PICKLE_OBJECTS:
        raise pickle.UnpicklingError(f"creates more than {MAX_PICKLE_OBJECTS:,} objects")
    if containers > MAX_PICKLE_CONTAINERS:
        raise pickle.UnpicklingError(f"creates more than {MAX_PICKLE_CONTAINERS:,} containers")
    raise pickle.UnpicklingError("pickle data was truncated")


def _memo_index(code: int, data: bytes, at: int, after: int) -> int:
    """The memo index of the GET or PUT at ``data[at:after]``."""
    if code in _LINE_MEMO_OPS:  # a decimal line, newline included
        line = data[at + 1 : after - 1]
        try:
            if len(line) > 24:
                raise ValueError
            return int(line)
        except ValueError:
            raise pickle.UnpicklingError(f"invalid memo index at byte {at}") from None
    return int.from_bytes(data[at + 1 : after], "little")


_LINE_MEMO_OPS = frozenset(b"gp")
(
    _BINUNICODE,
    _BINPUT,
    _LONG_BINPUT,
    _BINGET,
    _LONG_BINGET,
    _MARK_CODE,
    _POP_MARK,
    _REDUCE,
    _TUPLE_CODE,
) = b"Xqrhj(1Rt"


@functools.cache
def _fast_atoms() -> tuple[int, ...]:
    """Opcode byte -> size of its fixed argument if it pushes one new atom, else -1."""
    sizes = [-1] * 256
    for code, entry in enumerate(_opcode_table()):
        if entry is not None and entry[1] == _ATOM and entry[0] is not None and entry[0] >= 0:
            sizes[code] = entry[0]
    return tuple(sizes)


#: What ``torch.load(weights_only=True)`` allows by default (torch 2.13, after ``import torch``):
#: ``torch/_weights_only_unpickler.py:_get_allowed_globals`` plus what torch registers itself with
#: ``add_safe_globals`` on import. Replicated so that telling whether a file needs
#: ``weights_only=False`` never imports torch.
WEIGHTS_ONLY_ALLOWED = frozenset(
    {
        "_codecs.encode",
        "builtins.bytearray",
        "builtins.complex",
        "builtins.set",
        "collections.Counter",
        "collections.OrderedDict",
        "torch.Size",
        "torch.Tensor",
        "torch.device",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch._tensor._rebuild_from_type_v2",
        "torch.storage.TypedStorage",
        "torch.storage.UntypedStorage",
        "torch.per_channel_affine",
        "torch.per_channel_affine_float_qparams",
        "torch.per_channel_symmetric",
        "torch.per_tensor_affine",
        "torch.per_tensor_symmetric",
        *(
            f"torch._utils.{f}"
            for f in (
                "_rebuild_device_tensor_from_cpu_tensor",
                "_rebuild_device_tensor_from_numpy",
                "_rebuild_meta_tensor_no_storage",
                "_rebuild_nested_tensor",
                "_rebuild_parameter",
                "_rebuild_parameter_with_state",
                "_rebuild_qtensor",
                "_rebuild_sparse_tensor",
                "_rebuild_tensor",
                "_rebuild_tensor_v2",
                "_rebuild_tensor_v3",
                "_rebuild_wrapper_subclass",
            )
        ),
        *(
            f"torch.{t}"
            for t in (
                "bfloat16",
                "bits16",
                "bits1x8",
                "bits2x4",
                "bits4x2",
                "bits8",
                "bool",
                "complex128",
                "complex32",
                "complex64",
                "float16",
                "float32",
                "float4_e2m1fn_x2",
                "float64",
                "float8_e4m3fn",
                "float8_e4m3fnuz",
                "float8_e5m2",
                "float8_e5m2fnuz",
                "float8_e8m0fnu",
                "qint32",
                "qint8",
                "quint2x4",
                "quint4x2",
                "quint8",
                *(f"int{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64)),
                *(f"uint{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 64)),
            )
        ),
        *(
            f"{module}.{kind}Storage"
            for module in ("torch", "torch.cuda")
            for kind in (
                "BFloat16",
                "Bool",
                "Byte",
                "Char",
                "ComplexDouble",
                "ComplexFloat",
                "Double",
                "Float",
                "Half",
                "Int",
                "Long",
                "Short",
            )
        ),
        *(f"torch.{kind}Storage" for kind in ("QInt32", "QInt8", "QUInt2x4", "QUInt4x2", "QUInt8")),
        *(
            f"{module}.{kind}Tensor"
            for module in ("torch", "torch.cuda", "torch.sparse", "torch.cuda.sparse")
            for kind in (
                "BFloat16",
                "Byte",
                "Char",
                "Double",
                "Float",
                "Half",
                "Int",
                "Long",
                "Short",
            )
        ),
        *(f"{module}.{kind}Tensor" for module in ("torch", "torch.cuda") for kind in ("Bool",)),
        "torch.distributed._mesh_layout._FlatLayout",
        "torch.distributed._mesh_layout._MeshLayout",
        "torch.nested._internal.nested_tensor.NestedTensor",
        "torch.nested._internal.nested_tensor._rebuild_njt",
    }
)
# torch.load's own renaming of Python 2 names (torch._utils), smaller than pickle's.
_TORCH_IMPORT_MAPPING = {
    "__builtin__": "builtins",
    "copy_reg": "copyreg",
    "Queue": "queue",
    "repr": "reprlib",
    "_abcoll": "collections.abc",
    "UserDict": "collections",
    "UserList": "collections",
    "UserString": "collections",
    "whichdb": "dbm",
    "StringIO": "io",
    "cStringIO": "io",
}
_TORCH_NAME_MAPPING = {
    key: value
    for key, value in _compat_pickle.NAME_MAPPING.items()
    if key[0] in ("__builtin__", "itertools", "UserDict", "UserList", "UserString", "exceptions")
    and key[1]
    in (
        "xrange",
        "reduce",
        "intern",
        "unichr",
        "unicode",
        "long",
        "izip",
        "imap",
        "ifilter",
        "ifilterfalse",
        "izip_longest",
        "IterableUserDict",
        "UserList",
        "UserString",
        "basestring",
        "StandardError",
        "UserDict",
    )
}
#: Globals remembered per pickle at most (each costs a few bytes of pickle).
MAX_GLOBALS_RECORDED = 10_000


def weights_only_name(module: str, name: str) -> str:
    """``module.name`` as ``torch.load(weights_only=True)`` spells the global it checks."""
    if (module, name) in _TORCH_NAME_MAPPING:
        module, name = _TORCH_NAME_MAPPING[(module, name)]
    else:
        module = _TORCH_IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


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
            or not _is_int(numel)
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
                and _is_int(view[1])
                and _is_int(view[2])
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


# ---------------------------------------------------------------------------------------------
# Conversion to plain Python


class ConversionLimit(Exception):
    """The object graph is too deep or would expand to too many nodes to convert."""


_OMEGACONF_CONTAINERS = {"omegaconf.dictconfig.DictConfig", "omegaconf.listconfig.ListConfig"}
_PATHS = {
    "pathlib.PosixPath": posixpath,
    "pathlib.PurePosixPath": posixpath,
    "pathlib.Path": posixpath,
    "pathlib.PurePath": posixpath,
    "pathlib.WindowsPath": ntpath,
    "pathlib.PureWindowsPath": ntpath,
}
_NUMPY_RECONSTRUCT = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"}
_MAX_ARRAY_ELEMENTS = 4096
_PLAIN_ATOMS = (type(None), bool, int, float, complex, str, bytes)


def to_plain(obj: Any, *, max_nodes: int = 250_000, max_depth: int = 100) -> Any:
    """``obj`` as plain Python data: dicts, lists, tuples, sets and atoms.

    OmegaConf containers become dicts and lists of their (unresolved) values, paths become strings,
    ``argparse.Namespace`` a dict, decoded 0-d tensors their value; any other placeholder renders as
    ``"<module.name>"`` and any other tensor as ``"<tensor float32 [2, 4]>"``. Raises
    :class:`ConversionLimit` past ``max_depth`` levels or ``max_nodes`` nodes (shared references
    are expanded, so a small pickle can describe a huge tree).
    """
    return _Converter(max_nodes, max_depth).convert(obj, 0)


class _Converter:
    def __init__(self, max_nodes: int, max_depth: int) -> None:
        self.max_nodes = self.budget = max_nodes
        self.max_depth = max_depth

    def convert(self, obj: Any, depth: int) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise ConversionLimit(f"expands to more than {self.max_nodes} nodes")
        if depth > self.max_depth:
            raise ConversionLimit(f"nested deeper than {self.max_depth} levels")
        if isinstance(obj, _PLAIN_ATOMS):
            return obj
        down = depth + 1
        if isinstance(obj, dict):
            return {self.key(k, down): self.convert(v, down) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.convert(v, down) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.convert(v, down) for v in obj)
        if isinstance(obj, (set, frozenset)):
            return type(obj)(self.key(v, down) for v in obj)
        if isinstance(obj, bytearray):
            return bytes(obj)
        if isinstance(obj, TensorDescriptor):
            return obj.value if obj.value is not None else repr(obj)
        if isinstance(obj, Placeholder):
            return self.placeholder(obj, down)
        if isinstance(obj, type) and issubclass(obj, Placeholder):
            return f"<{obj.module}.{obj.name}>"
        if isinstance(obj, StorageType):
            return f"<{obj.name}>"
        if isinstance(obj, _StandIn):
            return repr(obj)
        if isinstance(obj, StorageRef):
            return f"<storage {obj.dtype} [{obj.numel}]>"
        return repr(obj)  # slices and anything else the allow-list can build

    def key(self, obj: Any, depth: int) -> Any:
        value = self.convert(obj, depth)
        try:
            hash(value)
        except TypeError:
            return repr(value)
        return value

    def placeholder(self, obj: Placeholder, depth: int) -> Any:
        name = f"{obj.module}.{obj.name}"
        state = obj.state if isinstance(obj.state, dict) else {}
        if name in _OMEGACONF_CONTAINERS or (
            obj.module.startswith("omegaconf.") and "_content" in state
        ):
            content = state.get("_content")
            if isinstance(content, dict):
                return {self.key(k, depth): self.convert(v, depth) for k, v in content.items()}
            if isinstance(content, list):
                return [self.convert(v, depth) for v in content]
            return self.convert(content, depth)  # None, "???" or an interpolation string
        if obj.module.startswith("omegaconf.") and "_val" in state:
            return self.convert(state["_val"], depth)
        if name in _PATHS and obj.args and all(isinstance(p, str) for p in obj.args):
            return _PATHS[name].join(*obj.args)
        if name == "argparse.Namespace" and isinstance(obj.state, dict):
            return self.convert(obj.state, depth)
        if name in _NUMPY_RECONSTRUCT:
            array = _numpy_array(obj.state)
            if array is not None:
                return array
        if obj.dict_items is not None:
            return {self.key(k, depth): self.convert(v, depth) for k, v in obj.dict_items}
        if obj.list_items is not None:
            return [self.convert(v, depth) for v in obj.list_items]
        return f"<{name}>"


def _numpy_array(state: Any) -> Any:
    """A small numeric numpy array (BUILD state of ``_reconstruct``) as nested lists, else None."""
    if not (isinstance(state, tuple) and len(state) == 5):
        return None
    _version, shape, dtype, fortran, raw = state
    code = numpy_dtype_code(dtype)
    if code is None or fortran or not isinstance(raw, bytes) or not isinstance(shape, tuple):
        return None
    if len(shape) > MAX_NDIM or not all(_is_int(d) for d in shape):
        return None
    count = bounded_product(shape, _MAX_ARRAY_ELEMENTS)
    size = ELEMENT_SIZE[code[0]]
    if count < 0 or len(raw) != count * size:
        return None
    flat = [decode_scalar(code[0], raw[i * size : (i + 1) * size], code[1]) for i in range(count)]
    if not shape:
        return flat[0]
    for dim in reversed(shape[1:]):
        flat = [flat[i : i + dim] for i in range(0, len(flat), dim)] if dim else []
    return flat
