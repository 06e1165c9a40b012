"""Hydra run configs as a metadata source: lookup order, unresolved interpolations, model fields."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from helpers.child_limits import run_child

from ckpt_index.lightning._hparams import model_section
from ckpt_index.sidecar.files import SidecarError
from ckpt_index.sources.config_fields import model_fields_from_config, settings_from_config
from ckpt_index.sources.hydra import find_hydra_config, load_config, model_fields

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


def test_lightning_logger_layout_inside_a_hydra_run(tmp_path: Path) -> None:
    """Lightning's own layout puts checkpoints three folders below the Hydra run directory."""
    config = write_yaml(tmp_path / "run" / ".hydra" / "config.yaml", SEED_STYLE)
    ckpt = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert find_hydra_config(ckpt) == config


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
        "architecture": "dbnet",
        "encoder": "resnet50",
        "decoder": "pan_decoder",
        "head": "db_head",
        "loss": "db_loss",
        "exp_name": "ocr_v1",
        "wandb_run_id": "abc123",
    }


def test_model_fields_from_flat_hparams() -> None:
    hparams = {
        "architecture_name": "craft",
        "encoder": {"model_name": "resnet18"},
        "decoder": {"_target_": "ocr.models.decoders.UNetDecoder"},
        "loss": "dice",
    }
    assert model_fields(hparams) == {
        "architecture": "craft",
        "encoder": "resnet18",
        "decoder": "UNetDecoder",
        "loss": "dice",
    }


def test_interpolated_names_are_not_taken() -> None:
    assert model_fields({"model": {"architecture": "${arch}"}, "exp_name": "${name}"}) == {}


@pytest.mark.parametrize(
    "config",
    [
        SEED_STYLE,
        {"architecture_name": "craft", "backbone": {"model_name": "resnet18"}, "loss": "dice"},
        {"model": {"encoder": "resnet50", "component_overrides": {"encoder": "vgg16"}}},
        {"model/architecture": "dbnetpp", "model.component_overrides.encoder.model_name": "r18"},
        {"arch": " pan ", "head": {"_target_": "ocr.heads.DBHead"}, "decoder": "${dec}"},
    ],
)
def test_one_mapping_for_hydra_wandb_and_hparams(config: dict) -> None:
    """A Hydra config, a W&B run config and a module's hparams name the model the same way."""
    fields = model_fields(config)
    assert model_fields_from_config(config) == {
        k: v for k, v in fields.items() if k != "wandb_run_id"
    }
    section = model_section(config)
    assert section["architecture"] == fields.get("architecture", "unknown")
    assert section["encoder"]["model_name"] == fields.get("encoder", "unknown")
    for part in ("decoder", "head", "loss"):
        assert section[part]["name"] == fields.get(part, "unknown")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        # The example's Hydra config: ModelCheckpoint's settings under callbacks.model_checkpoint.
        (
            {
                "model": {"encoder": {"model_name": "mlp32", "pretrained": False, "frozen": False}},
                "callbacks": {
                    "model_checkpoint": {
                        "_target_": "lightning.pytorch.callbacks.ModelCheckpoint",
                        "monitor": "val/hmean",
                        "mode": "max",
                        "save_top_k": 2,
                        "save_last": True,
                    }
                },
            },
            {
                "encoder_pretrained": False,
                "encoder_frozen": False,
                "monitor": "val/hmean",
                "mode": "max",
                "save_top_k": 2,
                "save_last": True,
            },
        ),
        # Any callback name, found by its _target_; save_last="link" saves a last checkpoint.
        (
            {"callbacks": {"ckpt": {"_target_": "x.ModelCheckpoint", "save_last": "link"}}},
            {"save_last": True},
        ),
        # W&B's flattened keys; flags beside the encoder's name; "freeze" for frozen.
        (
            {"model/encoder": "resnet18", "model/pretrained": True, "checkpoint/save_top_k": -1},
            {"encoder_pretrained": True, "save_top_k": -1},
        ),
        ({"encoder": {"model_name": "r18", "freeze": True}}, {"encoder_frozen": True}),
        # What a config does not state, or states as no value of its type, is absent.
        (SEED_STYLE, {"encoder_pretrained": True}),
        (
            {
                "callbacks": {
                    "model_checkpoint": {
                        "save_top_k": "${oc.env:K}",
                        "save_last": "yes",
                        "mode": "median",
                        "monitor": 5,
                    }
                },
                "model": {"encoder": {"model_name": "r18", "pretrained": "true"}},
            },
            {},
        ),
        ({"checkpoint": "path/to/resume.ckpt", "lr": 0.1}, {}),
    ],
)
def test_settings_are_read_only_where_a_config_states_them(config: dict, expected: dict) -> None:
    assert settings_from_config(config) == expected


@pytest.mark.parametrize("text", ["a: [", "- 1\n- 2\n", "!!python/object/apply:os.system ['true']"])
def test_unusable_configs_raise_sidecar_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(SidecarError):
        load_config(path)


# --------------------------------------------------------------------------------------------
# Hostile and odd configs: one-line SidecarError or plain data, bounded time and memory


def test_a_date_is_an_ordinary_value(run: Path) -> None:
    path = run.parent.parent / ".hydra" / "config.yaml"
    path.parent.mkdir()
    path.write_text(
        "created: 2024-01-01\nstarted: 2024-01-01 12:30:00\n2: two\nnull: n\n"
        "model:\n  architecture: dbnet\n  tags: !!set {a: null}\n"
    )
    config = load_config(path)
    assert config["created"] == "2024-01-01"
    assert config["started"] == "2024-01-01T12:30:00"
    assert config["2"] == "two" and config["null"] == "n"
    assert config["model"]["tags"] == ["a"]
    assert json.loads(json.dumps(config, allow_nan=False)) == config
    assert model_fields(config) == {"architecture": "dbnet"}


def test_json_config_values_are_plain(tmp_path: Path) -> None:
    path = tmp_path / "x.resolved.config.json"
    path.write_text('{"exp_name": "a\\ud800b", "model": {"architecture": "dbnet"}}')
    config = load_config(path)
    assert config["exp_name"] == "a\ufffdb"
    config["exp_name"].encode("utf-8")


@pytest.mark.parametrize(
    "value",
    [
        "5",
        "[dbnet]",
        "{x: 1}",
        "null",
        "true",
        '"a\\0b"',
        '"line\\nbreak"',
        '"${arch}"',
        '"<ocr.models.Net>"',
        "x" * 600,
    ],
)
def test_odd_values_are_not_names(tmp_path: Path, value: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"exp_name: {value}\nmodel:\n  architecture: {value}\n  encoder: {value}\n"
        f"  decoder: {{_target_: {value}}}\nwandb_run_id: {value}\n"
    )
    assert model_fields(load_config(path)) == {}


def test_model_fields_of_any_shape_does_not_raise() -> None:
    for config in [
        {"model": 5},
        {"model": [1]},
        {"model": {"architecture": {"name": 3}}},
        {"encoder": {"model_name": None, "_target_": 7}},
        {1: 2},
        [],
        None,
        "x",
        {"exp_name": "a\x00b", "wandb_run_id": "\ud800"},
    ]:
        assert model_fields(config) == {}  # type: ignore[arg-type]


def test_an_unresolved_architecture_falls_back_to_the_flat_name() -> None:
    config = {"model": {"architecture": "${architecture_name}"}, "architecture_name": "craft"}
    assert model_fields(config) == {"architecture": "craft"}


def test_a_fifo_is_passed_over_by_the_lookup(run: Path) -> None:
    fifo = run.parent / ".hydra" / "config.yaml"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    real = write_yaml(run.parent.parent / ".hydra" / "config.yaml", SEED_STYLE)
    assert find_hydra_config(run) == real


LOAD_IN_CHILD = """
import sys
from ckpt_index.sources.hydra import load_config
from ckpt_index.sidecar.files import SidecarError
try:
    load_config(sys.argv[1])
    print("LOADED")
except SidecarError as exc:
    print("REASON", exc.reason)
"""


def _deep_flow(depth: int) -> str:
    return "a: " + "[" * depth + "]" * depth + "\n"


def _deep_block(depth: int) -> str:
    return "".join(" " * i + f"k{i}:\n" for i in range(depth)) + " " * depth + "v: 1\n"


def _sparse(size: int):
    def make(path: Path) -> None:
        with open(path, "wb") as handle:
            handle.truncate(size)

    return make


HOSTILE_CONFIGS = [
    # (id, make the file, a word of the reason)
    ("sparse-4gib", _sparse(4 << 30), "limit"),
    ("fifo", os.mkfifo, "FIFO"),
    ("deep-flow-990", lambda p: p.write_text(_deep_flow(990)), "nests deeper"),
    ("deep-block-990", lambda p: p.write_text(_deep_block(990)), "nests deeper"),
    ("deep-block-1400", lambda p: p.write_text(_deep_block(1400)), "nests deeper"),
    ("deep-flow-500k", lambda p: p.write_text(_deep_flow(500_000)), "nest"),
    (
        "alias-bomb",
        lambda p: p.write_text(
            "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n"
                for i in range(8)
            )
        ),
        "alias bomb",
    ),
    (
        "wide-2mib",
        lambda p: p.write_text("a: [" + ",".join(["0"] * ((2 << 20) // 2 - 8)) + "]\n"),
        "values",
    ),
    ("deep-json", None, "nests deeper"),
]


@pytest.mark.parametrize(
    "make, word", [c[1:] for c in HOSTILE_CONFIGS], ids=[c[0] for c in HOSTILE_CONFIGS]
)
def test_hostile_config_is_refused_in_bounded_time_and_memory(
    tmp_path: Path, make, word: str
) -> None:
    if make is None:
        path = tmp_path / "x.resolved.config.json"
        path.write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    else:
        path = tmp_path / ".hydra" / "config.yaml"
        path.parent.mkdir()
        make(path)
    result = run_child(LOAD_IN_CHILD, str(path))
    result.assert_bounded()
    assert result.stdout.startswith("REASON "), result.stdout
    assert len(result.stdout.strip().splitlines()) == 1
    assert word.lower() in result.stdout.lower(), result.stdout
