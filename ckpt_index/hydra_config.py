"""Hydra run configs as a metadata source (SPEC section 8).

Looked up in this order: configs saved beside the checkpoint (``X.config.yaml``,
``X.resolved.config.json``), then ``.hydra/config.yaml`` in the checkpoint's folder and up to two
levels above it (a run directory holds ``checkpoints/`` and ``.hydra/``), then in further parent
folders. Files are parsed with the same bounded safe loader as sidecars and handed to OmegaConf
without resolving interpolations, so ``${hydra:runtime.output_dir}`` or ``${now:...}`` stay text
instead of failing.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

from ckpt_index.sidecar import CKPT_SUFFIX, SidecarError, parse_sidecar_bytes

#: Parent folders searched beyond the first two levels (an outputs tree is rarely deeper).
MAX_PARENT_LEVELS = 6


def candidate_paths(ckpt_path: str | Path) -> list[Path]:
    ckpt = Path(ckpt_path)
    stem = ckpt.name[: -len(CKPT_SUFFIX)] if ckpt.name.endswith(CKPT_SUFFIX) else ckpt.stem
    paths = [ckpt.with_name(stem + ".config.yaml"), ckpt.with_name(stem + ".resolved.config.json")]
    folder = ckpt.parent
    for directory in [folder, *list(folder.parents)[: 2 + MAX_PARENT_LEVELS]]:
        paths.append(directory / ".hydra" / "config.yaml")
    return paths


def find_hydra_config(ckpt_path: str | Path) -> Path | None:
    """The config file that describes the run of ``ckpt_path``, or None."""
    return next((p for p in candidate_paths(ckpt_path) if p.is_file()), None)


def load_config(path: str | Path) -> dict[str, Any]:
    """A config as plain data, interpolations left unresolved. Raises SidecarError when unusable.

    The checkpoints of a run share its config: it is parsed once per (path, size, mtime).
    """
    path = Path(path)
    st = path.stat()
    return copy.deepcopy(_load_config(str(path), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _load_config(name: str, _size: int, _mtime_ns: int) -> dict[str, Any]:
    path = Path(name)
    data = path.read_bytes()[: 1 << 21]
    if path.suffix == ".json":
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise SidecarError(path, f"JSON error: {exc}") from None
        if not isinstance(document, dict):
            raise SidecarError(path, "expected a mapping at the top level")
    else:
        document = parse_sidecar_bytes(data, path)
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(OmegaConf.create(document), resolve=False)
    assert isinstance(container, dict)
    return container


def get_path(data: Any, dotted: str) -> Any:
    """``get_path(cfg, "model.encoder.model_name")``, None where any part is missing."""
    for key in dotted.split("."):
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _text(value: str) -> str | None:
    # "${...}" is an unresolved interpolation; "<module.name>" is how the checkpoint reader renders
    # an object it did not build (a class, a callable, a payload): neither is a name.
    if value.startswith("${") or (value.startswith("<") and value.endswith(">")):
        return None
    return value


def _name(value: Any) -> str | None:
    """A component name from a string, or a mapping's name/model_name/_target_."""
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, dict):
        for key in ("model_name", "name"):
            if isinstance(value.get(key), str) and _text(value[key]):
                return value[key]
        target = value.get("_target_")
        if isinstance(target, str):
            return target.rsplit(".", 1)[-1]
    return None


def model_fields(config: dict[str, Any]) -> dict[str, Any]:
    """architecture, encoder, decoder, head, loss, exp_name and wandb_run_id a config gives.

    Understands the seeds' layout (``model.architecture``, ``model.component_overrides.*``) and
    flatter ones (``architecture_name``, ``encoder: {model_name: ...}``) as stored in hparams.
    """
    fields: dict[str, Any] = {}
    architecture = (
        get_path(config, "model.architecture") or config.get("architecture_name")
        or config.get("architecture") or get_path(config, "model.architecture_name")
    )
    if _name(architecture):
        fields["architecture"] = _name(architecture)
    for part in ("encoder", "decoder", "head", "loss"):
        for dotted in (f"model.component_overrides.{part}", f"model.{part}", part):
            name = _name(get_path(config, dotted))
            if name:
                fields[part] = name
                break
    exp_name = config.get("exp_name") or get_path(config, "experiment.name")
    if isinstance(exp_name, str) and not exp_name.startswith("${"):
        fields["exp_name"] = exp_name
    for dotted in ("wandb_run_id", "logger.wandb.id", "wandb.id", "wandb.run_id"):
        run_id = get_path(config, dotted)
        if isinstance(run_id, str) and run_id and not run_id.startswith("${"):
            fields["wandb_run_id"] = run_id
            break
    return fields
