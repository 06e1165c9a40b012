"""Hydra run configs as a metadata source: lookup order, unresolved interpolations, model fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ckpt_index.hydra_config import find_hydra_config, load_config, model_fields
from ckpt_index.sidecar import SidecarError

SEED_STYLE = {
    "exp_name": "ocr_v1",
    "paths": {"output_dir": "${hydra:runtime.output_dir}"},
    "stamp": "${now:%Y-%m-%d}",
    "model": {
        "architecture": "dbnet",
        "component_overrides": {
            "encoder": {"model_name": "resnet50", "pretrained": True},
            "decoder": {"name": "pan_decoder", "in_channels": [256, 512, 1024, 2048]},
            "head": {"name": "db_head"},
            "loss": {"name": "db_loss"},
        },
    },
    "logger": {"wandb": {"id": "abc123"}},
}


def write_yaml(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def run(tmp_path: Path) -> Path:
    ckpt = tmp_path / "outputs" / "run1" / "checkpoints" / "epoch-01_step-000010.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    return ckpt


def test_run_directory_config_two_levels_up(run: Path) -> None:
    config = write_yaml(run.parent.parent / ".hydra" / "config.yaml", SEED_STYLE)
    assert find_hydra_config(run) == config


def test_sidecar_configs_come_first(run: Path) -> None:
    write_yaml(run.parent.parent / ".hydra" / "config.yaml", SEED_STYLE)
    beside = run.with_name("epoch-01_step-000010.resolved.config.json")
    beside.write_text(json.dumps({"model": {"architecture": "pan"}}))
    assert find_hydra_config(run) == beside
    yaml_beside = write_yaml(run.with_name("epoch-01_step-000010.config.yaml"), {"a": 1})
    assert find_hydra_config(run) == yaml_beside


def test_checkpoint_folder_before_run_directory(run: Path) -> None:
    write_yaml(run.parent.parent / ".hydra" / "config.yaml", SEED_STYLE)
    nearer = write_yaml(run.parent / ".hydra" / "config.yaml", {"x": 1})
    assert find_hydra_config(run) == nearer


def test_parent_folders_last(run: Path, tmp_path: Path) -> None:
    far = write_yaml(tmp_path / ".hydra" / "config.yaml", SEED_STYLE)
    assert find_hydra_config(run) == far


def test_no_config(run: Path) -> None:
    assert find_hydra_config(run) is None


def test_interpolations_are_not_resolved(run: Path) -> None:
    path = write_yaml(run.parent.parent / ".hydra" / "config.yaml", SEED_STYLE)
    config = load_config(path)
    assert config["paths"]["output_dir"] == "${hydra:runtime.output_dir}"
    assert config["stamp"] == "${now:%Y-%m-%d}"


def test_model_fields_from_seed_layout(run: Path) -> None:
    config = load_config(write_yaml(run.parent.parent / ".hydra" / "config.yaml", SEED_STYLE))
    assert model_fields(config) == {
        "architecture": "dbnet", "encoder": "resnet50", "decoder": "pan_decoder",
        "head": "db_head", "loss": "db_loss", "exp_name": "ocr_v1", "wandb_run_id": "abc123",
    }


def test_model_fields_from_flat_hparams() -> None:
    hparams = {"architecture_name": "craft", "encoder": {"model_name": "resnet18"},
               "decoder": {"_target_": "ocr.models.decoders.UNetDecoder"}, "loss": "dice"}
    assert model_fields(hparams) == {"architecture": "craft", "encoder": "resnet18",
                                     "decoder": "UNetDecoder", "loss": "dice"}


def test_interpolated_names_are_not_taken() -> None:
    assert model_fields({"model": {"architecture": "${arch}"}, "exp_name": "${name}"}) == {}


@pytest.mark.parametrize("text", ["a: [", "- 1\n- 2\n", "!!python/object/apply:os.system ['true']"])
def test_unusable_configs_raise_sidecar_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(SidecarError):
        load_config(path)
