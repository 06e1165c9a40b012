"""The checkpoint reader's tasks for parsing workers (run by name by :mod:`ckpt_index.isolation`).

Each returns plain data: a worker's reply may hold no object of the reader's classes.
"""

from __future__ import annotations

from typing import Any

from ckpt_index.sources.checkpoint.reader import (
    CheckpointReadError,
    check_integrity,
    read_checkpoint,
    to_plain,
)
from ckpt_index.sources.checkpoint.unpickler import ConversionLimit


def read_checkpoint_task(path: str) -> tuple[Any, ...]:
    """``("ok", fields, raw, state_dict_shapes)`` of :func:`read_checkpoint`, or ``("error",
    reason)``: ``raw`` is :func:`to_plain` of the pickle (empty, with a warning, when that is
    over its limits)."""
    try:
        contents = read_checkpoint(path)
    except CheckpointReadError as exc:
        return ("error", exc.reason)
    fields = {k: v for k, v in vars(contents).items() if k not in ("raw", "path")}
    fields.pop("state_dict_shapes", None)  # a cached_property lands in vars() once computed
    try:
        raw = to_plain(contents.raw)
    except ConversionLimit as exc:
        raw = {}
        fields["warnings"] = [*fields.get("warnings", []), f"contents: {exc}"]
    return ("ok", fields, raw, dict(contents.state_dict_shapes))


def inspect_checkpoint_task(path: str) -> tuple[str | None, list[str] | None]:
    """(why the file is unusable, or None; the globals ``torch.load(weights_only=True)`` would
    refuse, or None when the file is unusable)."""
    broken = check_integrity(path)
    if broken is not None:
        return broken, None
    try:
        return None, list(read_checkpoint(path).unsafe_globals)
    except CheckpointReadError as exc:
        return exc.reason, None
