"""Tests for the sidecar schema ``CheckpointMetadataV1`` (``schema_version: "1.0"``).

Every constraint is exercised with a bad value, and the rejection reason must be one line that
names the field path. The seed sidecars must load unchanged; a missing hmean is only a warning;
unknown extra keys are kept.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers.sidecars import SEED_SIDECARS, seed_document
from pydantic import ValidationError

from ckpt_index.sidecar.files import (
    SidecarError,
    dump_document,
    dump_metadata,
    load_metadata,
    read_sidecar,
    save_metadata,
    validate_document,
)
from ckpt_index.sidecar.schema import (
    CheckpointMetadataV1,
    format_validation_error,
    metadata_warnings,
)

# --------------------------------------------------------------------------------------------
# Helpers


def with_change(path: str, value: Any, doc: dict | None = None) -> dict:
    """A copy of ``doc`` (default: the seed callback example) with dotted ``path`` set."""
    doc = copy.deepcopy(doc) if doc is not None else seed_document()
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    target[last] = value
    return doc


def without(path: str, doc: dict | None = None) -> dict:
    """A copy of ``doc`` with dotted ``path`` removed."""
    doc = copy.deepcopy(doc) if doc is not None else seed_document()
    *parents, last = path.split(".")
    target = doc
    for key in parents:
        target = target[key]
    del target[last]
    return doc


def rejection(doc: dict) -> str:
    """The reason ``doc`` is rejected; also checks it matches ``format_validation_error``."""
    with pytest.raises(SidecarError) as info:
        validate_document(doc, "x.metadata.yaml")
    with pytest.raises(ValidationError) as direct:
        CheckpointMetadataV1.model_validate(doc)
    reason = info.value.reason
    assert reason == format_validation_error(direct.value)
    assert "\n" not in reason and "\r" not in reason, f"reason is not one line: {reason!r}"
    assert reason.strip() == reason and reason
    return reason


def read_text_sidecar(tmp_path: Path, text: str) -> CheckpointMetadataV1:
    path = tmp_path / "run.metadata.yaml"
    path.write_text(text)
    return read_sidecar(path)


def seed_yaml_without(*keys: str) -> str:
    """The seed callback sidecar as YAML text, without the given top-level keys."""
    doc = seed_document()
    for key in keys:
        del doc[key]
    return dump_document(doc)


# --------------------------------------------------------------------------------------------
# The seed sidecars


SEED_EXPECTATIONS = {
    "seed_callback": dict(
        hmean=0.8430,
        encoder="resnet50",
        epoch=10,
        in_channels=[256, 512, 1024, 2048],
        monitor="val/hmean",
    ),
    "seed_converted": dict(
        hmean=0.7730129751685711,
        encoder="mobilenetv3_small_050",
        epoch=0,
        in_channels=[16, 24, 48, 96],
        monitor="val/hmean",
    ),
    "seed_design": dict(
        hmean=0.8430,
        encoder="resnet50",
        epoch=10,
        in_channels=[256, 512, 1024, 2048],
        monitor="val/hmean",
    ),
}


def test_all_three_seeds_are_present() -> None:
    assert sorted(p.name.split(".")[0] for p in SEED_SIDECARS) == sorted(SEED_EXPECTATIONS)


@pytest.mark.parametrize("path", SEED_SIDECARS, ids=lambda p: p.name.split(".")[0])
def test_seed_sidecar_loads_unchanged(path: Path) -> None:
    before = path.read_bytes()
    meta = read_sidecar(path)
    expected = SEED_EXPECTATIONS[path.name.split(".")[0]]

    assert meta.metrics.hmean == expected["hmean"]
    assert meta.model.encoder.model_name == expected["encoder"]
    assert meta.training.epoch == expected["epoch"]
    assert meta.model.decoder is not None
    assert meta.model.decoder.in_channels == expected["in_channels"]
    assert meta.checkpointing is not None
    assert meta.checkpointing.monitor == expected["monitor"]
    assert meta.schema_version == "1.0"
    assert metadata_warnings(meta) == []
    # Every value in the file is kept as written: nothing coerced, dropped or renamed.
    assert meta.model_dump(mode="json", exclude_unset=True) == yaml.safe_load(before)
    assert path.read_bytes() == before


def test_what_the_design_example_leaves_out_is_not_invented() -> None:
    meta = read_sidecar(next(p for p in SEED_SIDECARS if p.name.startswith("seed_design")))
    assert meta.model.encoder.pretrained is True  # stated
    assert meta.model.encoder.frozen is None  # not stated: not assumed False
    assert meta.model.decoder.params == {}
    assert meta.metrics.additional_metrics == {}
    assert meta.hydra_config_path is None and meta.wandb_run_id is None


def test_settings_a_sidecar_does_not_state_read_as_none() -> None:
    doc = without("checkpointing.save_top_k", without("checkpointing.save_last"))
    doc = without("checkpointing.mode", without("model.encoder.pretrained", doc))
    meta = CheckpointMetadataV1.model_validate(doc)
    assert meta.model.encoder.pretrained is None
    assert meta.checkpointing is not None
    assert (meta.checkpointing.mode, meta.checkpointing.save_top_k) == (None, None)
    assert meta.checkpointing.save_last is None
    # ... and are not written back as facts.
    dumped = yaml.safe_load(dump_metadata(meta))
    assert "pretrained" not in dumped["model"]["encoder"]
    assert set(dumped["checkpointing"]) == {"monitor"}


# --------------------------------------------------------------------------------------------
# Constraints: one bad value, one-line reason naming the field


NAN = float("nan")

BAD_VALUES = [
    # (dotted path, bad value, words the message must contain)
    ("training.epoch", -1, "greater than or equal to 0"),
    ("training.global_step", -1, "greater than or equal to 0"),
    ("training.training_phase", "testing", "'training', 'validation' or 'finetuning'"),
    ("training.max_epochs", -2, "greater than or equal to -1"),
    ("metrics.precision", -0.01, "greater than or equal to 0"),
    ("metrics.precision", 1.01, "less than or equal to 1"),
    ("metrics.precision", NAN, "nan"),
    ("metrics.recall", -0.5, "greater than or equal to 0"),
    ("metrics.recall", 1.5, "less than or equal to 1"),
    ("metrics.recall", NAN, "nan"),
    ("metrics.hmean", -1e-9, "greater than or equal to 0"),
    ("metrics.hmean", 1.0000001, "less than or equal to 1"),
    ("metrics.hmean", NAN, "nan"),
    ("metrics.hmean", float("inf"), "less than or equal to 1"),
    ("checkpointing.mode", "median", "'min' or 'max'"),
    ("checkpointing.save_top_k", -2, "greater than or equal to -1"),
    ("checkpointing.save_last", "maybe", "valid boolean"),
    ("created_at", "yesterday", "ISO 8601"),
    ("created_at", "2025-13-01T00:00:00", "ISO 8601"),
    ("schema_version", "2.0", "'2.0'"),
    ("schema_version", "0.9", "'0.9'"),
    ("schema_version", "10.0", "'10.0'"),
    ("training.epoch", "ten", "valid integer"),
    ("training.epoch", 1.5, "valid integer"),
    ("training.global_step", [1], "valid integer"),
    ("metrics.additional_metrics.f1", "high", "valid number"),
    ("metrics.validation_loss", "low", "valid number"),
    ("model.encoder.pretrained", "sometimes", "valid boolean"),
    ("model.architecture", 42, "valid string"),
    ("exp_name", ["a", "b"], "valid string"),
    ("training", "epoch 10", "valid dictionary"),
    # Integers the index cannot hold (issue 8): one aborted every sync of its tree.
    ("training.epoch", 2**64, "less than or equal to 2147483647"),
    ("training.epoch", 2**31, "less than or equal to 2147483647"),  # PostgreSQL's integer column
    ("training.global_step", 2**64, "less than or equal to 9223372036854775807"),
    ("training.global_step", 2**63, "less than or equal to 9223372036854775807"),
    ("training.max_epochs", 2**64, "less than or equal to 2147483647"),
    ("checkpointing.save_top_k", 2**64, "less than or equal to 2147483647"),
    ("checkpointing.monitor", 5, "valid string"),
    ("checkpointing.monitor", ["val/hmean"], "valid string"),
    ("checkpointing.monitor", {"name": "val/hmean"}, "valid string"),
    # Text the index cannot hold: PostgreSQL refuses NUL, no UTF-8 encoder takes a lone surrogate.
    ("exp_name", "ocr\x00v1", "contains a NUL character"),
    ("exp_name", "ocr\udc80", "contains a lone surrogate"),
    ("model.architecture", "db\x00net", "contains a NUL character"),
    ("model.encoder.model_name", "\ud800", "contains a lone surrogate"),
    ("model.decoder.params.note", "b\udcff", "contains a lone surrogate"),
    ("checkpointing.monitor", "val/\x00hmean", "contains a NUL character"),
    ("hydra_config_path", "/a\x00", "contains a NUL character"),
    ("wandb_run_id", "\udc80", "contains a lone surrogate"),
    ("created_at", "2025-10-18\x00", "contains a NUL character"),
    ("training.exp_note", "extra\x00", "contains a NUL character"),  # extra keys too
]


@pytest.mark.parametrize(
    "field, value, message", BAD_VALUES, ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES]
)
def test_bad_value_is_rejected_naming_the_field(field: str, value: Any, message: str) -> None:
    reason = rejection(with_change(field, value))
    assert reason.startswith(f"{field}: "), reason
    assert ";" not in reason, f"only {field} is wrong, yet: {reason}"
    assert message in reason


@pytest.mark.parametrize(
    "where, key",
    [
        ("model.decoder.params", "bad\x00key"),
        ("", "extra\udc80"),
        ("metrics.additional_metrics", "f1\x00"),
    ],
)
def test_a_key_with_bad_text_is_rejected_naming_where(where: str, key: str) -> None:
    doc = seed_document()
    target = doc
    for part in filter(None, where.split(".")):
        target = target[part]
    target[key] = 0.5

    reason = rejection(doc)

    assert reason.startswith(f"{where or '(document)'}: key "), reason
    assert "\n" not in reason and key not in reason  # the key is shown escaped
    assert ascii(key)[1:-1] in reason


@pytest.mark.parametrize(
    "field, value",
    [
        ("training.epoch", 2**31 - 1),
        ("training.global_step", 2**63 - 1),
        ("training.max_epochs", 2**31 - 1),
        ("checkpointing.save_top_k", 2**31 - 1),
        (
            "exp_name",
            "ocr \u00e9\U0001f600",
        ),  # non-ASCII text is fine; only NUL and lone surrogates are not
    ],
)
def test_largest_storable_values_are_accepted(field: str, value: Any) -> None:
    CheckpointMetadataV1.model_validate(with_change(field, value))


def test_the_bounds_are_the_columns_bounds() -> None:
    from ckpt_index import storable

    assert storable.MAX_EPOCH == storable.INT32_MAX == 2**31 - 1
    assert storable.MAX_GLOBAL_STEP == storable.INT64_MAX == 2**63 - 1


def test_an_escaped_nul_in_a_sidecar_file_is_invalid_with_its_field(tmp_path: Path) -> None:
    path = tmp_path / "x.metadata.yaml"
    path.write_text(dump_document(seed_document()).replace("exp_name: ", 'exp_name: "a\\0b" #', 1))

    with pytest.raises(SidecarError) as info:
        read_sidecar(path)

    assert info.value.reason == "exp_name: contains a NUL character"


def test_an_overlong_metric_name_is_a_warning_not_an_error() -> None:
    meta = validate_document(with_change("metrics.additional_metrics", {"x" * 300: 0.5}), "x")
    assert any("longer than 256" in w for w in metadata_warnings(meta))


@pytest.mark.parametrize("version", ["2.0", "3", "0.1"])
def test_unsupported_schema_version_reason_mentions_the_version(version: str) -> None:
    reason = rejection(with_change("schema_version", version))
    assert "schema version" in reason and repr(version) in reason


def test_decoder_channels_union_error_names_the_field() -> None:
    reason = rejection(with_change("model.decoder.in_channels", "abc"))
    assert all(part.startswith("model.decoder.in_channels") for part in reason.split("; "))


@pytest.mark.parametrize(
    "field",
    [
        "exp_name",
        "created_at",
        "training",
        "model",
        "training.epoch",
        "training.global_step",
        "model.architecture",
        "model.encoder",
        "model.encoder.model_name",
        "model.decoder.name",
        "model.head.name",
        "model.loss.name",
    ],
)
def test_missing_required_field(field: str) -> None:
    assert rejection(without(field)) == f"{field}: Field required"


def test_every_missing_field_is_listed_on_one_line() -> None:
    doc = without("model.encoder.model_name", without("training.epoch", without("exp_name")))
    assert rejection(doc) == (
        "exp_name: Field required; training.epoch: Field required; "
        "model.encoder.model_name: Field required"
    )


def test_reason_stays_one_line_when_a_key_contains_a_newline() -> None:
    # Keys come from the file: a metric called "a\nb" must not split the reason in two.
    reason = rejection(with_change("metrics.additional_metrics.a\nb", "high"))
    assert "additional_metrics" in reason


def test_long_bad_value_is_shortened_in_the_reason() -> None:
    reason = rejection(with_change("exp_name", ["x" * 500]))
    assert reason.startswith("exp_name: ") and len(reason) < 200


# --------------------------------------------------------------------------------------------
# What is accepted


@pytest.mark.parametrize("version", ["1.0", "1.3", "1", "1.10"])
def test_minor_versions_of_1_are_accepted(version: str) -> None:
    meta = CheckpointMetadataV1.model_validate(with_change("schema_version", version))
    assert meta.schema_version == version


@pytest.mark.parametrize(
    "line, expected",
    [("schema_version: 1.0", "1.0"), ("schema_version: 1.3", "1.3"), ("schema_version: 1", "1")],
)
def test_unquoted_yaml_schema_version_is_accepted(tmp_path: Path, line: str, expected: str) -> None:
    meta = read_text_sidecar(tmp_path, f"{line}\n{seed_yaml_without('schema_version')}")
    assert meta.schema_version == expected


@pytest.mark.parametrize("line", ["schema_version: 2.0", "schema_version: 2"])
def test_unquoted_yaml_major_2_is_rejected(tmp_path: Path, line: str) -> None:
    with pytest.raises(SidecarError) as info:
        read_text_sidecar(tmp_path, f"{line}\n{seed_yaml_without('schema_version')}")
    assert info.value.reason.startswith("schema_version: unsupported schema version")


@pytest.mark.parametrize(
    "written, expected",
    [
        ("2025-10-18T14:32:15", dt.datetime(2025, 10, 18, 14, 32, 15)),
        ("2025-10-18T14:32:15.123456", dt.datetime(2025, 10, 18, 14, 32, 15, 123456)),
        ("2025-10-18 14:32:15", dt.datetime(2025, 10, 18, 14, 32, 15)),
        ("2025-10-18T14:32:15Z", dt.datetime(2025, 10, 18, 14, 32, 15, tzinfo=dt.timezone.utc)),
        (
            "2025-10-18T14:32:15+02:00",
            dt.datetime(2025, 10, 18, 14, 32, 15, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        ),
        ("2025-10-18", dt.datetime(2025, 10, 18)),
    ],
)
def test_unquoted_yaml_timestamps_are_accepted(tmp_path: Path, written: str, expected) -> None:
    meta = read_text_sidecar(tmp_path, f"created_at: {written}\n{seed_yaml_without('created_at')}")
    assert isinstance(meta.created_at, str)
    assert dt.datetime.fromisoformat(meta.created_at) == expected


@pytest.mark.parametrize(
    "field",
    [
        "metrics",
        "checkpointing",
        "hydra_config_path",
        "wandb_run_id",
        "checkpoint_path",
        "training.max_epochs",
        "training.training_phase",
        "model.decoder",
        "model.head",
        "model.loss",
        "metrics.precision",
        "metrics.recall",
        "metrics.validation_loss",
        "metrics.additional_metrics",
        "model.encoder.pretrained",
        "model.encoder.frozen",
    ],
)
def test_optional_field_may_be_missing(field: str) -> None:
    CheckpointMetadataV1.model_validate(without(field))


@pytest.mark.parametrize(
    "field, value",
    [
        ("metrics.precision", 0.0),
        ("metrics.hmean", 1.0),
        ("training.epoch", 0),
        ("training.max_epochs", -1),
        ("checkpointing.save_top_k", -1),
        ("checkpointing.mode", "min"),
        ("training.training_phase", "finetuning"),
        ("training.training_phase", "validation"),
        ("metrics.validation_loss", 123.0),
        ("model.decoder.in_channels", 64),
    ],
)
def test_boundary_values_are_accepted(field: str, value: Any) -> None:
    CheckpointMetadataV1.model_validate(with_change(field, value))


# --------------------------------------------------------------------------------------------
# Warnings, not errors


@pytest.mark.parametrize(
    "doc",
    [without("metrics.hmean"), with_change("metrics.hmean", None), without("metrics")],
    ids=["absent", "null", "no-metrics"],
)
def test_missing_hmean_is_a_warning_not_an_error(doc: dict) -> None:
    meta = validate_document(doc, "x.metadata.yaml")
    assert meta.metrics.hmean is None
    assert metadata_warnings(meta) == ["metrics.hmean is missing"]


def test_non_finite_additional_metric_is_a_warning() -> None:
    meta = validate_document(with_change("metrics.additional_metrics.f1", NAN), "x")
    assert math.isnan(meta.metrics.additional_metrics["f1"])
    assert metadata_warnings(meta) == ["metrics.additional_metrics.f1 is nan; not indexed"]


# --------------------------------------------------------------------------------------------
# Unknown extra keys


EXTRA_KEYS = [
    ("notes", "trained on the night shift"),
    ("dataset", {"name": "icdar2015", "splits": ["train", "val"]}),
    ("training.accumulate_grad_batches", 4),
    ("model.encoder.drop_path_rate", 0.1),
    ("model.decoder.attention", {"heads": 8}),
    ("metrics.fps", 31.5),
    ("checkpointing.every_n_epochs", 2),
]


@pytest.mark.parametrize("field, value", EXTRA_KEYS, ids=[f for f, _ in EXTRA_KEYS])
def test_unknown_extra_key_is_accepted_and_kept(tmp_path: Path, field: str, value: Any) -> None:
    doc = with_change(field, value)
    meta = validate_document(doc, "x")
    assert metadata_warnings(meta) == []

    save_metadata(meta, tmp_path / "run.ckpt")
    reloaded = load_metadata(tmp_path / "run.ckpt")
    assert reloaded == meta
    dumped = reloaded.model_dump(mode="json")
    target = dumped
    for key in field.split("."):
        target = target[key]
    assert target == value


def test_all_extra_keys_together_round_trip(tmp_path: Path) -> None:
    doc = seed_document()
    for field, value in EXTRA_KEYS:
        doc = with_change(field, value, doc)
    meta = validate_document(doc, "x")
    save_metadata(meta, tmp_path / "run.ckpt")
    on_disk = yaml.safe_load((tmp_path / "run.metadata.yaml").read_text())
    assert on_disk == doc
