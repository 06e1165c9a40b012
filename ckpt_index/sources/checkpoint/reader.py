"""Read a Lightning ``.ckpt`` without running code from it and without reading its tensors.

A checkpoint written by ``torch.save`` (torch >= 1.6) is a zip archive: ``<prefix>/data.pkl``,
the pickled checkpoint dict, beside one member per tensor storage. Only the pickle is read (plus
``<prefix>/byteorder``), with :class:`~ckpt_index.sources.checkpoint.unpickler.SafeUnpickler`:
every global it names becomes an inert placeholder (the module is never imported) and tensors
become :class:`TensorDescriptor` objects (dtype, shape). The few bytes of 0-d tensors outside the
state dict and optimizer states, such as ModelCheckpoint's ``best_model_score``, are decoded so
scores come out as numbers. What is read does not grow with the size of the weights.

The pre-1.6 format (pickles followed by raw storages) is read the same way. Anything else, and
every truncated or corrupt file, raises :class:`CheckpointReadError` with a one-line reason.

This module is the public read API; :mod:`.integrity` checks a file without reading it,
:mod:`.formats` loads the pickle of either format, :mod:`.fields` takes the fields from it.

Example::

    contents = read_checkpoint("outputs/run/checkpoints/best.ckpt")
    contents.epoch, contents.hyper_parameters["encoder"]
    contents.checkpoint_callbacks[0]["monitor"]
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ckpt_index import safe_io
from ckpt_index.sources.checkpoint.convert import to_plain
from ckpt_index.sources.checkpoint.fields import decode_scalars, summarize, text
from ckpt_index.sources.checkpoint.formats import (
    CheckpointReadError,
    CountingFile,
    TooLarge,
    load,
)
from ckpt_index.sources.checkpoint.integrity import check_integrity, describe
from ckpt_index.sources.checkpoint.objects import Placeholder, StorageRef, TensorDescriptor
from ckpt_index.sources.checkpoint.weights_only import WEIGHTS_ONLY_ALLOWED

if TYPE_CHECKING:
    from ckpt_index.isolation.pool import Limits

__all__ = [
    "CheckpointContents",
    "CheckpointReadError",
    "Placeholder",
    "StorageRef",
    "TensorDescriptor",
    "check_integrity",
    "read_checkpoint",
    "read_checkpoint_isolated",
    "to_plain",
]


@dataclass
class CheckpointContents:
    """What :func:`read_checkpoint` found in a checkpoint.

    ``raw`` is the unpickled top-level dict (placeholders and tensor descriptors included); the
    other fields are plain Python taken from it. ``checkpoint_callbacks`` has one dict per
    ModelCheckpoint state: ``state_key``, ``monitor``, ``mode``, ``current_score`` (the monitored
    value when this file was saved), ``best_model_score``, ``best_model_path``, ``best_k_models``
    (path -> score), ``kth_best_model_path``, ``last_model_path``, ``dirpath`` and ``config`` (the
    arguments in the state key, when they parse).
    """

    path: Path
    raw: dict[Any, Any] = field(repr=False)
    bytes_read: int
    format: str  # "zip" or "legacy"
    epoch: int | None = None
    global_step: int | None = None
    lightning_version: str | None = None
    hyper_parameters: dict[Any, Any] | None = None
    #: The DataModule's ``save_hyperparameters()`` (Lightning's ``datamodule_hyper_parameters``).
    datamodule_hyper_parameters: dict[Any, Any] | None = None
    cleval_metrics: dict[str, float] | None = None
    checkpoint_callbacks: list[dict[str, Any]] = field(default_factory=list)
    #: Parts of the checkpoint that could not be converted (too deep, too large, out of range),
    #: one line each.
    warnings: list[str] = field(default_factory=list)
    #: The globals the pickle names that ``torch.load(weights_only=True)`` refuses by default,
    #: sorted ``module.name``: empty when the file loads with ``weights_only=True``, else what to
    #: pass to ``torch.serialization.add_safe_globals`` (or a reason to use ``weights_only=False``).
    unsafe_globals: list[str] = field(default_factory=list)

    @cached_property
    def state_dict_shapes(self) -> dict[str, tuple[int, ...]]:
        """Parameter and buffer name -> shape, from ``state_dict`` (or a bare saved state dict)."""
        state = self.raw.get("state_dict")
        if not isinstance(state, dict):
            bare = bool(self.raw) and all(
                isinstance(v, TensorDescriptor) for v in self.raw.values()
            )
            state = self.raw if bare else {}
        return {text(k): v.shape for k, v in state.items() if isinstance(v, TensorDescriptor)}


def read_checkpoint(path: str | os.PathLike[str]) -> CheckpointContents:
    """Read the metadata of the checkpoint at ``path`` safely, in this process (see the module
    docstring).

    The reader bounds its own work, but for files you do not trust use
    :func:`ckpt_index.read_checkpoint` (or :func:`read_checkpoint_isolated`): it runs this in a
    worker process under a memory ceiling and a time budget, so a crash costs only the read.

    Raises:
        CheckpointReadError: the file is missing, empty, truncated, not a torch checkpoint, or its
            pickle is malformed.
    """
    path = Path(path)
    try:
        fd, _ = safe_io.open_fd(path, max_size=None)
    except safe_io.UnsafeFileError as exc:
        raise CheckpointReadError(path, exc.reason) from None
    with CountingFile(fd, "rb", closefd=True) as file:
        try:
            raw, scalars, fmt, names = load(file, path)
            try:
                decode_scalars(raw, scalars)
            finally:
                if scalars is not None:
                    scalars.close()
            contents = CheckpointContents(
                path=path,
                raw=raw,
                bytes_read=0,
                format=fmt,
                unsafe_globals=sorted(names - WEIGHTS_ONLY_ALLOWED),
            )
            summarize(contents)
        except CheckpointReadError:
            raise
        except TooLarge as exc:
            raise CheckpointReadError(path, str(exc)) from None
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # a seek to a negative offset read from a damaged header
                raise CheckpointReadError(
                    path, "corrupt file: an offset in it points outside it"
                ) from None
            raise CheckpointReadError(path, f"read error: {exc.strerror or exc}") from None
        except MemoryError:
            raise CheckpointReadError(path, "out of memory while reading it") from None
        except Exception as exc:  # noqa: BLE001 - the contract: only CheckpointReadError escapes
            # A bug for the fuzzer to find (it refuses this reason), never a crash of the caller.
            reason = f"{_UNEXPECTED} {type(exc).__name__}: {describe(exc)}"
            raise CheckpointReadError(path, reason) from None
        contents.bytes_read = file.bytes_read
    return contents


_UNEXPECTED = "unexpected error while reading:"


def read_checkpoint_isolated(
    path: str | os.PathLike[str], limits: Limits | None = None
) -> CheckpointContents:
    """:func:`read_checkpoint` in a worker process under ``limits`` (see
    :mod:`ckpt_index.isolation.pool`).

    A file that crashes the reader or exceeds a limit raises :class:`CheckpointReadError` naming
    why. The contents come back as plain data: ``raw`` is what :func:`to_plain` makes of the
    pickle (placeholders as ``"<module.name>"`` text, tensors as their descriptions).
    """
    from ckpt_index.isolation.pool import run_isolated

    path = Path(path)
    outcome = run_isolated(
        "ckpt_index.sources.checkpoint.tasks:read_checkpoint_task", [str(path)], limits
    )
    if not outcome.ok:
        raise CheckpointReadError(path, outcome.reason or "reader failed")
    if outcome.value[0] == "error":
        raise CheckpointReadError(path, outcome.value[1])
    _, fields, raw, shapes = outcome.value
    contents = CheckpointContents(path=path, raw=raw, **fields)
    contents.__dict__["state_dict_shapes"] = shapes  # the worker computed it from the descriptors
    return contents
