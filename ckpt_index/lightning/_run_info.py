"""Facts about the run a checkpoint belongs to: experiment name, Hydra config, W&B run id."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ckpt_index.sources.naming import run_dir_of
from ckpt_index.vocabulary import UNKNOWN


def hydra_config_path(ckpt_path: str) -> str | None:
    """The ``.hydra/config.yaml`` of the run, as an absolute path; ``None`` without one.

    Inside a Hydra app the running job's output directory is authoritative; otherwise the same
    rule as a sync's (:func:`ckpt_index.sources.hydra.find_hydra_config`): a config saved beside
    the checkpoint, else the nearest ``.hydra/config.yaml`` in its folder or the folders above.
    """
    if "hydra" in sys.modules:  # never import Hydra just to find out that it is not running
        try:
            from hydra.core.hydra_config import HydraConfig

            if HydraConfig.initialized():
                hydra = HydraConfig.get()
                if hydra.output_subdir is not None:
                    path = Path(hydra.runtime.output_dir) / hydra.output_subdir / "config.yaml"
                    if path.is_file():
                        return str(path.absolute())
        except Exception:  # noqa: BLE001 - a half-initialised Hydra must not cost a sidecar
            pass
    from ckpt_index.sources.hydra import find_hydra_config

    found = find_hydra_config(ckpt_path)
    return str(found.absolute()) if found is not None else None


def wandb_run_id(trainer: Any) -> str | None:
    """The id of the W&B run: a ``WandbLogger``'s version, else an active ``wandb.run``."""
    for logger in trainer.loggers:
        # By class name, subclasses included: no need to import the W&B logger to recognise it.
        if any(cls.__name__ == "WandbLogger" for cls in type(logger).__mro__):
            version = logger.version
            if version:
                return str(version)
    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    run_id = getattr(run, "id", None)
    return str(run_id) if run_id else None


def default_exp_name(trainer: Any, ckpt_path: str) -> str:
    """The run directory's name; ``<logger name>/<version>`` in a logger's own layout."""
    run_dir = run_dir_of(ckpt_path)
    logger = trainer.loggers[0] if trainer.loggers else None
    if logger is not None:
        name, version = logger.name, logger.version
        version = version if isinstance(version, str) else f"version_{version}"
        if run_dir.name == version and name:
            # Lightning's <save_dir>/<name>/<version>/checkpoints: "version_3" alone says little.
            return f"{name}/{version}"
    if run_dir.name:
        return run_dir.name
    if logger is not None and logger.name:
        return str(logger.name)
    return UNKNOWN
