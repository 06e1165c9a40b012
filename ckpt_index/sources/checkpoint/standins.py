"""Stand-ins for the globals a checkpoint's pickle may call: the allow-list of pure-data
constructors (``OrderedDict``, ``set``, the tensor rebuilders, numpy scalars, ...).

Each stand-in builds plain values or :class:`~.objects.TensorDescriptor` objects from its
arguments and falls back to a placeholder when they are not the plain data it accepts; every
other global resolves to a placeholder type (:func:`resolve_global`), so the module a pickle names
is never imported.
"""

from __future__ import annotations

import _compat_pickle
import pickle
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ckpt_index.sources.checkpoint.objects import (
    _DTYPE_ALIASES,
    _NUMPY_DTYPES,
    ELEMENT_SIZE,
    MAX_DIM,
    MAX_NDIM,
    STORAGE_DTYPES,
    OrderedDictState,
    Placeholder,
    StorageRef,
    StorageType,
    TensorDescriptor,
    decode_scalar,
    global_name,
    is_int,
    placeholder_type,
)


class _Refuse(Exception):
    """A stand-in was called with something other than the plain data it accepts."""


def _int_tuple(value: Any) -> tuple[int, ...]:
    if (
        isinstance(value, (tuple, list))
        and len(value) <= MAX_NDIM
        and all(is_int(v) and -MAX_DIM <= v < MAX_DIM for v in value)
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
    if len(args) == 2 and isinstance(args[0], str) and is_int(args[1]):
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
    if not isinstance(storage, StorageRef) or not is_int(offset) or not 0 <= offset < MAX_DIM:
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
