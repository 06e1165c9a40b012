"""The globals ``torch.load(weights_only=True)`` allows, and how it spells the names it checks.

Replicated from torch so that telling whether a file needs ``weights_only=False`` never imports
torch.
"""

from __future__ import annotations

import _compat_pickle

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


def weights_only_name(module: str, name: str) -> str:
    """``module.name`` as ``torch.load(weights_only=True)`` spells the global it checks."""
    if (module, name) in _TORCH_NAME_MAPPING:
        module, name = _TORCH_NAME_MAPPING[(module, name)]
    else:
        module = _TORCH_IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"
