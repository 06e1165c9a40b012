"""The conversion of what the safe unpickler built to plain Python data (:func:`to_plain`)."""

from __future__ import annotations

import ntpath
import posixpath
from typing import Any

from ckpt_index.sources.checkpoint.objects import (
    ELEMENT_SIZE,
    MAX_NDIM,
    Placeholder,
    StorageRef,
    StorageType,
    TensorDescriptor,
    bounded_product,
    decode_scalar,
    is_int,
)
from ckpt_index.sources.checkpoint.standins import _StandIn, numpy_dtype_code


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
    """One conversion: the node budget and depth limit it spends and checks."""

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
        return self.built(obj, down)

    def built(self, obj: Any, depth: int) -> Any:
        """What the unpickler built that is not plain data: descriptors, placeholders, ..."""
        if isinstance(obj, bytearray):
            return bytes(obj)
        if isinstance(obj, TensorDescriptor):
            return obj.value if obj.value is not None else repr(obj)
        if isinstance(obj, Placeholder):
            return self.placeholder(obj, depth)
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
        if obj.module.startswith("omegaconf."):
            state = obj.state if isinstance(obj.state, dict) else {}
            if name in _OMEGACONF_CONTAINERS or "_content" in state:
                return self.omegaconf_content(state.get("_content"), depth)
            if "_val" in state:
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

    def omegaconf_content(self, content: Any, depth: int) -> Any:
        """An OmegaConf container's ``_content``: a dict, a list, or a value (None, ``"???"`` or
        an interpolation string)."""
        if isinstance(content, dict):
            return {self.key(k, depth): self.convert(v, depth) for k, v in content.items()}
        if isinstance(content, list):
            return [self.convert(v, depth) for v in content]
        return self.convert(content, depth)


def _numpy_array(state: Any) -> Any:
    """A small numeric numpy array (BUILD state of ``_reconstruct``) as nested lists, else None."""
    if not (isinstance(state, tuple) and len(state) == 5):
        return None
    _version, shape, dtype, fortran, raw = state
    code = numpy_dtype_code(dtype)
    if code is None or fortran or not isinstance(raw, bytes) or not isinstance(shape, tuple):
        return None
    if len(shape) > MAX_NDIM or not all(is_int(d) for d in shape):
        return None
    count = bounded_product(shape, _MAX_ARRAY_ELEMENTS)
    size = ELEMENT_SIZE[code[0]]
    if count < 0 or len(raw) != count * size:
        return None
    flat: list[Any] = [
        decode_scalar(code[0], raw[i * size : (i + 1) * size], code[1]) for i in range(count)
    ]
    if not shape:
        return flat[0]
    for dim in reversed(shape[1:]):
        flat = [flat[i : i + dim] for i in range(0, len(flat), dim)] if dim else []
    return flat
