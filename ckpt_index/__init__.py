"""ckpt-index: find the right model checkpoint with an indexed SQL query.

YAML sidecars (``X.metadata.yaml`` beside ``X.ckpt``) are the source of truth; the SQLite (or
PostgreSQL) index is derived from them by :func:`sync`. Importing this package is cheap: the
public names below are loaded on first use, and torch, lightning, wandb and pandas never are.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "CheckpointMetadataV1": "ckpt_index.sidecar.schema",
    "SidecarError": "ckpt_index.sidecar.files",
    "load_metadata": "ckpt_index.sidecar.files",
    "save_metadata": "ckpt_index.sidecar.files",
    "sidecar_path_for": "ckpt_index.sidecar.files",
    "resolve_db_url": "ckpt_index.index.engine",
    "open_engine": "ckpt_index.index.engine",
    "read_only_engine": "ckpt_index.index.readonly",
    "connect": "ckpt_index.api",
    "sync_index": "ckpt_index.api",
    "query_index": "ckpt_index.api",
    "read_checkpoint": "ckpt_index.api",
    "QuerySpec": "ckpt_index.query.spec",
    "QueryError": "ckpt_index.query.names",
    "UnknownNameError": "ckpt_index.query.names",
    "validate_tree": "ckpt_index.tools.validate",
    "pin": "ckpt_index.tools.pin",
    "unpin": "ckpt_index.tools.pin",
    "disk_usage": "ckpt_index.tools.du",
    "build_catalog": "ckpt_index.tools.catalog",
    "CheckpointCatalog": "ckpt_index.tools.catalog",
    "plan_gc": "ckpt_index.tools.gc_plan",
    "GcPolicy": "ckpt_index.tools.gc_plan",
    "GcPlan": "ckpt_index.tools.gc_plan",
    "apply_gc": "ckpt_index.tools.gc_apply",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ckpt_index' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
