"""Checkpoint files for tests: tiny well-formed stand-ins with sidecars, and real ``torch.save``
files whose fields a hostile writer chose."""

from __future__ import annotations

import copy
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

from ckpt_index.sidecar.files import dump_document, sidecar_path_for
from helpers.sidecars import seed_document


def tiny_checkpoint(tag: str = "") -> bytes:
    """The bytes of a tiny but well-formed checkpoint (torch's zip layout, plain data only).

    The sync checks that a checkpoint beside a sidecar is a complete archive, so stand-ins for
    checkpoint files must be real ones; ``tag`` varies their content and size.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"epoch": 0, "tag": tag}, protocol=2))
        archive.writestr("archive/byteorder", "little")
    return buffer.getvalue()


def write_checkpoint(
    ckpt: Path,
    document: dict[str, Any] | str | None = None,
    *,
    ckpt_file: bool = True,
    **changes: Any,
) -> Path:
    """Write ``ckpt`` (a tiny well-formed checkpoint) and its sidecar.

    ``document`` is a mapping (default: the seed callback example), raw YAML text, or None for
    no sidecar. ``changes`` set dotted keys, e.g. ``**{"metrics.hmean": 0.9}``.
    """
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if ckpt_file:
        ckpt.write_bytes(tiny_checkpoint())
    if document is None and not changes:
        return ckpt
    if isinstance(document, str):
        sidecar_path_for(ckpt).write_text(document)
        return ckpt
    doc = copy.deepcopy(document) if document is not None else seed_document()
    for dotted, value in changes.items():
        target = doc
        *parents, last = dotted.split(".")
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value
    sidecar_path_for(ckpt).write_text(dump_document(doc))
    return ckpt


def crafted(path: Path, contents: dict[str, Any]) -> Path:
    """A real torch checkpoint (``torch.save``) whose fields a hostile writer chose."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"layer.weight": torch.zeros(1, 2)}, **contents}, path)
    return path


def checkpoint_callback(monitor: Any, mode: Any = "max") -> dict[str, Any]:
    """A checkpoint's ``callbacks`` entry of a ``ModelCheckpoint`` with this monitor and mode."""
    return {
        f"ModelCheckpoint{{'monitor': {monitor!r}, 'mode': {mode!r}}}": {
            "monitor": monitor,
            "mode": mode,
            "current_score": 0.5,
            "best_model_path": "",
        }
    }
