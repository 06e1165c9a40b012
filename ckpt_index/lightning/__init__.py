"""PyTorch Lightning integration: metadata sidecars and index rows written as training runs.

- :class:`MetadataCallback` writes ``X.metadata.yaml`` beside every checkpoint any
  ``ModelCheckpoint`` saves and upserts its row into the index.
- :class:`UniqueModelCheckpoint` is a ``ModelCheckpoint`` that applies the naming scheme
  ``outputs/<tag>-<model>_<phase>_<timestamp>/checkpoints/epoch-XX_step-XXXXXX.ckpt``.

Requires the ``lightning`` extra (``lightning.pytorch``). Importing :mod:`ckpt_index` never imports
this subpackage; the classes below load lightning on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ckpt_index.lightning.metadata_callback import MetadataCallback
    from ckpt_index.lightning.model_checkpoint import UniqueModelCheckpoint

_EXPORTS = {
    "MetadataCallback": "ckpt_index.lightning.metadata_callback",
    "UniqueModelCheckpoint": "ckpt_index.lightning.model_checkpoint",
}

__all__ = ["MetadataCallback", "UniqueModelCheckpoint"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ckpt_index.lightning' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
