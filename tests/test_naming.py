"""The naming scheme's parsers and formatters (ckpt_index.naming)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckpt_index.sources.naming import (
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
        (
            "ocr_baseline_v1-dbnet-resnet18_training_20251015_120000",
            "ocr_baseline_v1",
            "dbnet",
            "resnet18",
            "training",
            "20251015_120000",
        ),
        (
            "ocr_lr_sweep-dbnet-mobilenetv3_small_050_finetuning_20251003_033800",
            "ocr_lr_sweep",
            "dbnet",
            "mobilenetv3_small_050",
            "finetuning",
            "20251003_033800",
        ),
        (
            "team-a-v2-pan-efficientnet_b0_validation_20251101_000001",
            "team-a-v2",
            "pan",
            "efficientnet_b0",
            "validation",
            "20251101_000001",
        ),
        ("exp-craft_training_20251015_120000", "exp", "craft", None, "training", "20251015_120000"),
    ],
)
def test_run_dir_names(name, tag, arch, encoder, phase, stamp) -> None:
    parsed = parse_run_dir(name)
    assert parsed is not None
    assert (parsed.tag, parsed.architecture, parsed.encoder, parsed.phase, parsed.timestamp) == (
        tag,
        arch,
        encoder,
        phase,
        stamp,
    )
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
        ("epoch=10.ckpt", "lightning", 10, None),
        # Names that give the epoch alone.
        ("epoch-5.ckpt", "epoch_only", 5, None),
        ("epoch_15.ckpt", "epoch_only", 15, None),
        ("epoch_15-v1.ckpt", "epoch_only", 15, None),
        ("epoch-5x.ckpt", "unknown", None, None),
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


# ------------------------------------------------------------------- hostile names (issue 8)
BIG = "9" * 5000  # beyond int()'s 4,300-digit limit: converting it raised ValueError


@pytest.mark.parametrize(
    ("name", "epoch", "step"),
    [
        ("epoch=99999999999999999999-step=1.ckpt", None, 1),  # once aborted every sync
        ("epoch=9223372036854775807-step=9223372036854775808.ckpt", 2**63 - 1, None),
        ("epoch-9223372036854775808_step-000001.ckpt", None, 1),
        (f"epoch_{BIG}_step_{BIG}.ckpt", None, None),
        (f"epoch_epoch_{BIG}_step_step_7.ckpt", None, 7),
        (f"epoch={'0' * 5000}7-step={'0' * 5000}640.ckpt", 7, 640),
        (f"epoch-{BIG}_step-{BIG}.ckpt", None, None),
    ],
)
def test_epochs_and_steps_fit_64_bits_or_are_none(name, epoch, step) -> None:
    parsed = parse_checkpoint_name(name)
    assert (parsed.epoch, parsed.step) == (epoch, step)
    assert parsed.format != "unknown"


@pytest.mark.parametrize(
    "name", ["epoch=\u0663-step=\u0661\u0660.ckpt", "epoch-\uff17_step-\uff16\uff14\uff10.ckpt"]
)
def test_only_ascii_digits_are_numbers(name: str) -> None:
    # int() reads Arabic-Indic and full-width digits; a file name's digits are ASCII.
    parsed = parse_checkpoint_name(name)
    assert (parsed.format, parsed.epoch, parsed.step) == ("unknown", None, None)


def test_best_names_give_only_storable_metrics() -> None:
    assert parse_checkpoint_name("best-hmean-1e999.ckpt").metric_value is None  # inf
    assert parse_checkpoint_name(f"best-hmean-{BIG}.ckpt").metric_value is None
    # os.fsdecode turns an undecodable byte into a lone surrogate, which no index can store.
    undecodable = parse_checkpoint_name("best-h\udcffmean-0.5.ckpt")
    assert (undecodable.format, undecodable.metric, undecodable.metric_value) == ("best", None, 0.5)
    assert parse_run_dir("ocr\udcff-dbnet_training_20251015_120000") is None


HOSTILE_PARSE = r"""
import resource, sys
from ckpt_index.sources.naming import parse_checkpoint_name, parse_run_dir
N = 4096
units = ["-epoch=1", "_epoch=1_", "-1", "-1.1", "-1e1", "a-", "b_", "a-b_", "-a_a", "12345678_",
         "a-b_c_12345678_123456-", "epoch_", "_step_", "epoch-", "_step-", "best-", "-v1", "=", "9"]
names = []
for unit in units:
    for head in ("", "best-", "last", "epoch=1", "epoch_1_step_", "epoch-1_step-", "a-b_c_"):
        for tail in ("", ".ckpt", "!", "-v1.ckpt", "_20251015_120000", "-step=1"):
            names.append((head + unit * (N // len(unit)))[:N] + tail)
names += ["epoch=" + "9" * 5000, "epoch_" + "0" * 5000 + "1_step_2", "best-x-" + "1" * 5000,
          "best-" + "1" * 5000 + "." + "1" * 5000 + "e" + "9" * 5000]
for name in names:
    parse_checkpoint_name(name)
    parse_run_dir(name)
print(len(names))
"""


def test_hostile_names_parse_in_bounded_time_and_memory() -> None:
    from helpers.child_limits import run_child

    # Measured in a grandchild: this process's own RUSAGE_CHILDREN counts every earlier child.
    result = run_child(HOSTILE_PARSE, timeout=120)
    result.assert_bounded()  # under 20 s (about a second on a loaded machine) and 600 MB
    assert int(result.stdout) > 700


def test_a_file_named_with_a_huge_epoch_does_not_stop_a_sync(outputs: Path, invoke) -> None:
    from helpers.checkpoints import write_checkpoint

    run = outputs / "ocr_v1-dbnet-resnet18_training_20251015_120000" / "checkpoints"
    run.mkdir(parents=True)
    (run / "epoch=99999999999999999999-step=1.ckpt").write_bytes(b"")
    write_checkpoint(run / "epoch-01_step-000010.ckpt")
    result = invoke("sync", str(outputs))
    assert result.exit_code == 0, result.output
    listed = invoke("query", "--format", "paths", "--include-orphans").stdout.split()
    assert str(run / "epoch-01_step-000010.ckpt") in listed
