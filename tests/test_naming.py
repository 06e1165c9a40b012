"""The naming scheme's parsers and formatters (ckpt_index.naming)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_index.naming import (
    best_checkpoint_name,
    parse_checkpoint_name,
    parse_run_dir,
    run_dir_name,
    run_dir_of,
    scheme_checkpoint_name,
)


@pytest.mark.parametrize(
    ("name", "tag", "arch", "encoder", "phase", "stamp"),
    [
        ("ocr_baseline_v1-dbnet-resnet18_training_20251015_120000", "ocr_baseline_v1", "dbnet",
         "resnet18", "training", "20251015_120000"),
        ("ocr_lr_sweep-dbnet-mobilenetv3_small_050_finetuning_20251003_033800", "ocr_lr_sweep",
         "dbnet", "mobilenetv3_small_050", "finetuning", "20251003_033800"),
        ("team-a-v2-pan-efficientnet_b0_validation_20251101_000001", "team-a-v2", "pan",
         "efficientnet_b0", "validation", "20251101_000001"),
        ("exp-craft_training_20251015_120000", "exp", "craft", None, "training", "20251015_120000"),
    ],
)
def test_run_dir_names(name, tag, arch, encoder, phase, stamp) -> None:
    parsed = parse_run_dir(name)
    assert parsed is not None
    assert (parsed.tag, parsed.architecture, parsed.encoder, parsed.phase, parsed.timestamp) == (
        tag, arch, encoder, phase, stamp)
    assert run_dir_name(parsed.tag, parsed.model, parsed.phase, parsed.timestamp) == name


@pytest.mark.parametrize("name", ["outputs", "my_experiment", "dbnet-resnet50", "x_training_2025"])
def test_other_directory_names_are_not_parsed(name: str) -> None:
    assert parse_run_dir(name) is None


@pytest.mark.parametrize(
    ("name", "fmt", "epoch", "step"),
    [
        ("epoch-22_step-001932.ckpt", "scheme", 22, 1932),
        ("epoch_epoch_22_step_step_001932_20251009_015037.ckpt", "legacy_double", 22, 1932),
        ("epoch_epoch_02_step_step_000176.ckpt", "legacy_double", 2, 176),
        ("epoch_22_step_1932.ckpt", "legacy", 22, 1932),
        ("epoch_22_step_1932_20251009_015037.ckpt", "legacy", 22, 1932),
        ("epoch=7-step=640.ckpt", "lightning", 7, 640),
        ("epoch=7-step=640-v1.ckpt", "lightning", 7, 640),
        ("model-epoch=3-val_loss=0.12-step=55.ckpt", "lightning", 3, 55),
        ("epoch=3.ckpt", "lightning", 3, None),
        ("last.ckpt", "last", None, None),
        ("last-v2.ckpt", "last", None, None),
        ("whatever.ckpt", "unknown", None, None),
    ],
)
def test_checkpoint_names(name, fmt, epoch, step) -> None:
    parsed = parse_checkpoint_name(name)
    assert (parsed.format, parsed.epoch, parsed.step) == (fmt, epoch, step)


def test_best_names_carry_the_metric() -> None:
    parsed = parse_checkpoint_name("best-hmean-0.8920.ckpt")
    assert (parsed.format, parsed.metric, parsed.metric_value) == ("best", "hmean", 0.892)
    assert best_checkpoint_name("val/hmean", 0.89204) == "best-hmean-0.8920.ckpt"


def test_scheme_names_round_trip() -> None:
    name = scheme_checkpoint_name(7, 640)
    assert name == "epoch-07_step-000640.ckpt"
    assert parse_checkpoint_name(name).format == "scheme"
    assert scheme_checkpoint_name(123, 1234567) == "epoch-123_step-1234567.ckpt"


def test_run_dir_of() -> None:
    assert run_dir_of("/o/run/checkpoints/x.ckpt") == Path("/o/run")
    assert run_dir_of("/o/run/x.ckpt") == Path("/o/run")
