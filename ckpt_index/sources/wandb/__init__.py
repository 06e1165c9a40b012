"""Metadata from a Weights & Biases run, for checkpoints without a sidecar.

Each step usable on its own from a notebook:

- :func:`find_run` (:mod:`.locate`) finds the run of a checkpoint on disk;
- :func:`read_run` (:mod:`.files`) reads it from its local files, ``files/`` and the
  ``run-<id>.wandb`` transaction log (:mod:`.log`), without network;
- :func:`fetch_online` (:mod:`.online`) asks the W&B API, bounded by a timeout and cached in an
  :class:`~.online.AnswerCache` the caller gives;
- :class:`WandbRun` (:mod:`.run`) is what a run says; :meth:`WandbRun.checkpoint_metrics` gives a
  checkpoint's metrics from the history at its step, never from the summary.

Importing this package stays cheap: wandb is imported only inside the functions that need it.
"""

from ckpt_index.sources.config_fields import model_fields_from_config
from ckpt_index.sources.wandb.files import read_run
from ckpt_index.sources.wandb.locate import RunLocation, find_run
from ckpt_index.sources.wandb.online import AnswerCache, fetch_online
from ckpt_index.sources.wandb.run import WandbRun

__all__ = [
    "AnswerCache",
    "RunLocation",
    "WandbRun",
    "fetch_online",
    "find_run",
    "model_fields_from_config",
    "read_run",
]
