"""Values are checked at the boundary: the same storable row on SQLite and PostgreSQL (issue 8).

Hostile values (integers past 64 bits or past a 32-bit column, NaN, text with NUL or lone
surrogates, names that are not text) once aborted a whole sync batch, or a sync on one backend
only. Here they meet ``boundary.check_record`` directly, the real store on both backends, and a
real sync of crafted checkpoints and sidecars beside ordinary ones.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import pytest
from helpers.sidecars import seed_document
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import BigInteger, Boolean, Float, Integer, String, select

from ckpt_index import api
from ckpt_index.index import tables
from ckpt_index.index.boundary import COLUMN_KINDS, UnstorableRecord, check_record
from ckpt_index.index.engine import open_engine, write_transaction
from ckpt_index.index.records import (
    METADATA_COLUMNS,
    FileState,
    Record,
    record_from_inferred,
    record_from_metadata,
)
from ckpt_index.index.store import upsert_records
from ckpt_index.sidecar.files import dump_document, sidecar_path_for
from ckpt_index.sidecar.schema import CheckpointMetadataV1, metadata_warnings
from ckpt_index.sources.merge import Inferred
from ckpt_index.storable import INT32_MAX, INT64_MAX, MAX_METRIC_NAME
from ckpt_index.vocabulary import canonical_metrics, match_canonical

NAN, INF = float("nan"), float("inf")
HOUR_NS = 3600 * 10**9

#: (column, hostile value, the value an inferred row keeps, a word of the warning)
HOSTILE_COLUMNS = [
    ("epoch", 2**64, None, "out of range"),
    ("epoch", 2**31, None, "out of range"),  # fits SQLite's INTEGER, not PostgreSQL's integer
    ("epoch", -1, None, "out of range"),
    ("epoch", True, None, "expected an integer"),
    ("epoch", "3", None, "expected an integer"),
    ("epoch", 3.0, None, "expected an integer"),
    ("global_step", 2**63, None, "out of range"),
    ("global_step", -(2**70), None, "out of range"),
    ("max_epochs", -2, None, "out of range"),
    ("save_top_k", 2**40, None, "out of range"),
    ("precision", NAN, None, "not a finite number"),
    ("hmean", INF, None, "not a finite number"),
    ("validation_loss", -INF, None, "not a finite number"),
    ("recall", "0.5", None, "not a finite number"),
    ("recall", 10**400, None, "not a finite number"),
    ("exp_name", "a\x00b", "ab", "NUL"),
    ("architecture", "x\udc80y", "x\ufffdy", "surrogate"),
    ("encoder", 5, None, "expected text"),
    ("decoder", ["a", "b"], None, "expected text"),
    ("monitor", {"a": 1}, None, "expected text"),
    ("monitor", "val/hmean\x00", "val/hmean", "NUL"),
    ("mode", "sideways", None, "not one of"),
    ("mode", 5, None, "not one of"),
    ("training_phase", "x", None, "not one of"),
    ("save_last", "yes", None, "true or false"),
    ("encoder_pretrained", 1, None, "true or false"),
    ("created_at", "2024-01-01\udcff", "2024-01-01\ufffd", "surrogate"),
    ("hydra_config_path", "/a/\x00/config.yaml", "/a//config.yaml", "NUL"),
    ("wandb_run_id", "\ud800\udc00", "\ufffd\ufffd", "surrogate"),  # a pair, but as two code points
    ("metadata_json", '{"a": "\x00"}', '{"a": ""}', "NUL"),
]
HOSTILE_IDS = [f"{c}={v!r}"[:40] for c, v, *_ in HOSTILE_COLUMNS]

#: (metric name, hostile value, what is kept as {name: value}, a word of the warning or None)
HOSTILE_METRICS = [
    ("m", NAN, {}, "not a finite number"),
    ("m", -INF, {}, "not a finite number"),
    ("m", 10**400, {}, "not a finite number"),
    ("m", True, {}, "not a finite number"),
    ("m", "0.5", {}, "not a finite number"),
    ("m", None, {}, "not a finite number"),
    ("m", 3, {"m": 3.0}, None),  # an int is a number
    ("x" * (MAX_METRIC_NAME + 1), 0.5, {}, "longer than"),
    ("x" * MAX_METRIC_NAME, 0.5, {"x" * MAX_METRIC_NAME: 0.5}, None),
    ("custom/\x00score", 0.5, {"custom/score": 0.5}, "NUL"),
    ("a\udc80", 0.5, {"a\ufffd": 0.5}, "surrogate"),
    (5, 0.5, {}, "not text"),
    (("tuple",), 0.5, {}, "not text"),
]


def inferred_record(path: str = "/runs/r/checkpoints/epoch=3-step=30.ckpt") -> Record:
    """A row as the fallbacks make it (status ``inferred``)."""
    found = Inferred(path)
    for name, value in {
        "epoch": 3,
        "global_step": 30,
        "exp_name": "exp",
        "architecture": "dbnet",
        "encoder": "resnet18",
        "monitor": "val/hmean",
        "mode": "max",
    }.items():
        found.set(name, value, "checkpoint")
    found.add_metrics({"val/hmean": 0.5, "val/loss": 0.25}, "checkpoint")
    return record_from_inferred(found, ckpt=FileState(1234, 1_700_000_000 * 10**9))


def sidecar_record(path: str = "/runs/r/checkpoints/epoch=10.ckpt") -> Record:
    """A row as a sync makes it from a valid sidecar (status ``valid``)."""
    meta = CheckpointMetadataV1.model_validate(seed_document())
    return record_from_metadata(
        meta,
        checkpoint_path=path,
        sidecar_path=path[:-5] + ".metadata.yaml",
        ckpt=FileState(1234, 1_700_000_000 * 10**9),
        sidecar=FileState(99, 1_700_000_000 * 10**9),
        warnings=metadata_warnings(meta),
    )


def with_column(record: Record, name: str, value: Any) -> Record:
    return Record({**record.columns, name: value}, dict(record.metrics))


def assert_storable(record: Record) -> None:
    """Checking again changes nothing: every value is within the boundary."""
    assert check_record(record) is record


# ------------------------------------------------------------------------------- check_record
def test_a_clean_record_is_returned_unchanged() -> None:
    for record in (inferred_record(), sidecar_record()):
        assert check_record(record) is record


@pytest.mark.parametrize("column, value, kept, word", HOSTILE_COLUMNS, ids=HOSTILE_IDS)
def test_an_inferred_row_is_repaired_with_a_warning(
    column: str, value: Any, kept: Any, word: str
) -> None:
    record = with_column(inferred_record(), column, value)

    checked = check_record(record)

    assert checked.columns[column] == kept
    assert checked.columns["status"] == "inferred"
    assert f"{column}: " in checked.columns["warnings"] and word in checked.columns["warnings"]
    # The rest of the row is untouched.
    others = {k: v for k, v in record.columns.items() if k not in (column, "warnings")}
    assert {k: checked.columns[k] for k in others} == others
    assert checked.metrics == record.metrics
    assert_storable(checked)


@pytest.mark.parametrize("column, value, kept, word", HOSTILE_COLUMNS, ids=HOSTILE_IDS)
def test_a_sidecar_row_with_a_bad_value_becomes_invalid(
    column: str, value: Any, kept: Any, word: str
) -> None:
    record = with_column(sidecar_record(), column, value)

    checked = check_record(record)

    assert checked.columns["status"] == "invalid"
    assert checked.columns["error"].startswith(f"{column}: ") and word in checked.columns["error"]
    assert "\n" not in checked.columns["error"]
    assert all(checked.columns[name] is None for name in METADATA_COLUMNS if name != "error")
    assert checked.metrics == {}
    for name in (
        "checkpoint_path",
        "sidecar_path",
        "ckpt_size",
        "ckpt_mtime_ns",
        "sidecar_size",
        "sidecar_mtime_ns",
        "checkpoint_exists",
    ):
        assert checked.columns[name] == record.columns[name]
    assert_storable(checked)


@pytest.mark.parametrize(
    "name, value, kept, word",
    HOSTILE_METRICS,
    ids=[f"{n!r}={v!r}"[:40] for n, v, *_ in HOSTILE_METRICS],
)
@pytest.mark.parametrize("make", [inferred_record, sidecar_record], ids=["inferred", "sidecar"])
def test_bad_metrics_are_dropped_or_cleaned_in_any_row(
    make, name: Any, value: Any, kept: dict, word: str | None
) -> None:
    record = make()
    record.metrics[name] = value

    checked = check_record(record)

    assert checked.columns["status"] == record.columns["status"]
    assert checked.metrics == {**{k: v for k, v in record.metrics.items() if k != name}, **kept}
    if word is None:
        assert checked.columns["warnings"] == record.columns["warnings"]
    else:
        assert word in checked.columns["warnings"]
    assert_storable(checked)


def test_error_and_warnings_text_are_cleaned_not_invalidating() -> None:
    record = with_column(sidecar_record(), "warnings", "metrics.hmean is \udc80\x00")
    checked = check_record(record)
    assert checked.columns["status"] == "valid"
    assert checked.columns["warnings"] == "metrics.hmean is \ufffd"
    invalid = Record({**inferred_record().columns, "status": "invalid", "error": "bad \x00 \udcff"})
    assert check_record(invalid).columns["error"] == "bad  \ufffd"


@pytest.mark.parametrize("path", ["/runs/\udcff.ckpt", "/runs/a\x00.ckpt", None, 5])
def test_a_checkpoint_path_that_cannot_be_stored_is_refused(path: Any) -> None:
    with pytest.raises(UnstorableRecord, match="not storable"):
        check_record(with_column(inferred_record(), "checkpoint_path", path))


def test_every_column_of_the_table_has_a_kind_matching_its_type() -> None:
    expected = {
        Integer: ("int", INT32_MAX),
        BigInteger: ("int", INT64_MAX),
        Float: ("float", None),
        Boolean: ("bool", None),
    }
    from ckpt_index.storable import INT_RANGES

    for column in tables.checkpoints.columns:
        if column.name in ("id", "param_set_id"):  # assigned by the store, never by a record
            continue
        kind = COLUMN_KINDS.get(column.name)
        assert kind is not None, f"{column.name} has no kind in records.COLUMN_KINDS"
        want = next((v for t, v in expected.items() if type(column.type) is t), None)
        if want is None:
            assert isinstance(column.type, String) and kind in ("text", "choice"), column.name
        else:
            assert kind == want[0], column.name
            if want[1] is not None:
                assert INT_RANGES[column.name][1] <= want[1], column.name


_HOSTILE_ANY = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.sampled_from(
        ["\x00", "\udc80", "a\ud800b", "min", "max", "training", 10**400, -(2**63) - 1]
    ),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    status=st.sampled_from(["valid", "inferred", "unreadable", "invalid", "missing"]),
    values=st.dictionaries(
        st.sampled_from(
            sorted(set(COLUMN_KINDS) - {"checkpoint_path", "location"}) + ["some_new_column"]
        ),
        _HOSTILE_ANY,
        max_size=12,
    ),
    metrics=st.dictionaries(
        st.one_of(st.text(max_size=300), st.integers()), _HOSTILE_ANY, max_size=5
    ),
)
def test_any_values_become_a_storable_row(status: str, values: dict, metrics: dict) -> None:
    record = Record({**inferred_record().columns, **values, "status": status}, dict(metrics))

    checked = check_record(record)

    assert_storable(checked)
    assert checked.columns["checkpoint_path"] == record.columns["checkpoint_path"]


# ------------------------------------------------------------------------- into both backends
def _stored(db_url: str, records: list[Record]) -> tuple[dict[str, dict], dict[str, dict]]:
    engine = open_engine(db_url)
    try:
        with write_transaction(engine) as conn:
            upsert_records(conn, records)
        with engine.connect() as conn:
            rows = {
                r.checkpoint_path: dict(r._mapping)
                for r in conn.execute(select(tables.checkpoints))
            }
            metrics: dict[str, dict] = {path: {} for path in rows}
            by_id = {row["id"]: path for path, row in rows.items()}
            for row_id, name, value in conn.execute(select(tables.checkpoint_metrics)):
                metrics[by_id[row_id]][name] = value
    finally:
        engine.dispose()
    return rows, metrics


def test_checked_rows_are_stored_as_they_are_on_both_backends(db_url: str) -> None:
    records = []
    for i, (column, value, _, _) in enumerate(HOSTILE_COLUMNS):
        records.append(
            check_record(with_column(inferred_record(f"/runs/inferred/{i}.ckpt"), column, value))
        )
        records.append(
            check_record(with_column(sidecar_record(f"/runs/sidecar/{i}.ckpt"), column, value))
        )
    hostile_metrics = inferred_record("/runs/metrics.ckpt")
    for name, value, _, _ in HOSTILE_METRICS:
        hostile_metrics.metrics[name] = value
    records.append(check_record(hostile_metrics))

    rows, metrics = _stored(db_url, records)

    for record in records:
        row = rows[record.checkpoint_path]
        for name, value in record.columns.items():
            assert row[name] == value, (record.checkpoint_path, name)
        assert metrics[record.checkpoint_path] == record.metrics


def test_unchecked_hostile_rows_are_what_broke_the_batch(db_url: str) -> None:
    """The premise: without the check, these rows fail to insert on one backend or both."""
    from sqlalchemy.exc import SQLAlchemyError

    hostile = [
        ("epoch", 2**31),
        ("global_step", 2**64),
        ("exp_name", "a\x00b"),
        ("architecture", "x\udc80"),
    ]
    failures = 0
    for column, value in hostile:
        try:
            _stored(db_url, [with_column(inferred_record(f"/runs/{column}.ckpt"), column, value)])
        except (SQLAlchemyError, OverflowError, UnicodeEncodeError, ValueError):
            failures += 1
    assert failures >= 2  # epoch 2**31 and the NUL pass on SQLite; everything fails on PostgreSQL


# --------------------------------------------------------------------------------- metric names
@pytest.mark.parametrize(
    "metrics",
    [
        {"val/hmean": 10**400, "hmean": 0.5},
        {"val/hmean": NAN, "hmean": 0.5},
        {5: 0.9, ("val", "hmean"): 0.9, "hmean": 0.5},
        {"val/hmean": "0.9", "hmean": 0.5},
        {"val/hmean": True, "hmean": 0.5},
    ],
)
def test_canonical_matching_never_raises_on_odd_metrics(metrics: dict) -> None:
    assert match_canonical(metrics) == {"hmean": "hmean"}
    assert canonical_metrics(metrics) == {"hmean": 0.5}


def test_a_huge_validation_loss_is_a_loss_not_an_error() -> None:
    assert canonical_metrics({"val/loss": 10**300}) == {"validation_loss": 1e300}


# ------------------------------------------------------------------ a real sync, both backends
def _torch_checkpoint(path: Path, contents: dict[str, Any]) -> Path:
    torch = pytest.importorskip("torch")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"layer.weight": torch.zeros(1, 2)}, **contents}, path)
    return path


def _model_checkpoint_state(monitor: Any, mode: Any = "max") -> dict[str, Any]:
    key = f"ModelCheckpoint{{'monitor': {monitor!r}, 'mode': {mode!r}}}"
    return {key: {"monitor": monitor, "mode": mode, "current_score": 0.5, "best_model_path": ""}}


def _sidecar(ckpt: Path, document: dict[str, Any] | str) -> None:
    _torch_checkpoint(ckpt, {"epoch": 1, "global_step": 2})
    text = document if isinstance(document, str) else dump_document(document)
    sidecar_path_for(ckpt).write_text(text)


def _seed_with(dotted: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(seed_document())
    *parents, last = dotted.split(".")
    target = document
    for key in parents:
        target = target[key]
    target[last] = value
    return document


def test_hostile_values_never_stop_a_sync_and_rows_agree_on_both_backends(
    db_url: str, outputs: Path
) -> None:
    pytest.importorskip("torch")
    tree = _hostile_tree(outputs)
    for path in outputs.rglob("*"):  # out of the racy window: a second sync reads nothing again
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - HOUR_NS))

    summary = api.sync_index(outputs, db=db_url, infer=True)

    rows, metrics = _stored(db_url, [])
    assert summary.checkpoints == len(rows) == 14
    _check_hostile_sidecar_rows(rows, tree, outputs)
    _check_hostile_pickle_rows(rows, metrics, tree)
    # Nothing is left to retry: every row was written, and a re-sync reads nothing again.
    again = api.sync_index(outputs, db=db_url, infer=True)
    assert again.parsed == 0 and again.unchanged == 14
    assert math.isfinite(summary.elapsed_s)


_HOSTILE_SIDECAR_FIELDS = (
    "training.global_step",
    "training.max_epochs",
    "checkpointing.save_top_k",
)


def _hostile_tree(outputs: Path) -> dict[str, Path]:
    """Sidecars and checkpoints holding values out of every range, by what each one tests."""
    tree = {
        "ok": _torch_checkpoint(
            outputs / "good" / "epoch=1-step=10.ckpt", {"epoch": 1, "global_step": 10}
        ),
        "big_epoch": outputs / "sidecar" / "big_epoch.ckpt",
        "nul": outputs / "sidecar" / "nul.ckpt",
        "surrogate": outputs / "sidecar" / "surrogate.ckpt",
    }
    _sidecar(tree["big_epoch"], _seed_with("training.epoch", 2**64))
    for field in _HOSTILE_SIDECAR_FIELDS:
        _sidecar(outputs / "sidecar" / f"{field}.ckpt", _seed_with(field, 2**64))
    seed = dump_document(seed_document())
    _sidecar(tree["nul"], seed.replace("exp_name: ", 'exp_name: "a\\0b" #', 1))
    _sidecar(tree["surrogate"], seed.replace("exp_name: ", 'exp_name: "a\\udc80" #', 1))
    tree["pickled"] = _torch_checkpoint(
        outputs / "pickle" / "big.ckpt", {"epoch": 2**64, "global_step": 2**64}
    )
    tree["texts"] = _torch_checkpoint(
        outputs / "pickle" / "texts.ckpt",
        {
            "epoch": 1,
            "global_step": 2,
            "hyper_parameters": {
                "exp_name": "a\udc80b",
                "architecture": "x\x00y",
                "encoder": {"model_name": 5},
            },
            "cleval_metrics": {"hmean": 0.5, "big": 10**400, "nan": NAN, "x" * 300: 0.1},
        },
    )
    for kind, value, mode in (
        ("int", 5, "max"),
        ("list", ["a"], "min"),
        ("dict", {"a": 1}, "max"),
        ("mode", "val/hmean", "sideways"),
    ):
        tree[f"monitor_{kind}"] = _torch_checkpoint(
            outputs / "monitor" / f"{kind}.ckpt",
            {"epoch": 1, "global_step": 2, "callbacks": _model_checkpoint_state(value, mode)},
        )
    empty = tree["empty"] = outputs / "names" / "epoch=99999999999999999999-step=1.ckpt"
    empty.parent.mkdir(parents=True)
    empty.write_bytes(b"")
    return tree


def _check_hostile_sidecar_rows(rows: dict, tree: dict[str, Path], outputs: Path) -> None:
    assert rows[str(tree["ok"])]["status"] == "inferred" and rows[str(tree["ok"])]["epoch"] == 1
    big_epoch, nul = rows[str(tree["big_epoch"])], rows[str(tree["nul"])]
    assert big_epoch["status"] == "invalid"
    assert big_epoch["error"].startswith("training.epoch:")
    for field in _HOSTILE_SIDECAR_FIELDS:
        row = rows[str(outputs / "sidecar" / f"{field}.ckpt")]
        assert row["status"] == "invalid" and row["error"].startswith(f"{field}:"), row["error"]
    assert nul["status"] == "invalid" and "exp_name" in nul["error"]
    assert rows[str(tree["surrogate"])]["status"] == "invalid"


def _check_hostile_pickle_rows(rows: dict, metrics: dict, tree: dict[str, Path]) -> None:
    big = rows[str(tree["pickled"])]
    assert big["status"] == "inferred" and (big["epoch"], big["global_step"]) == (None, None)
    for field in (
        "epoch",
        "global_step",
    ):  # dropped by the reader or by the fallback, said either way
        assert (
            f"{field} from checkpoint: " in big["warnings"]
            or f"checkpoint: {field}: " in big["warnings"]
        )
    row = rows[str(tree["texts"])]
    # Cleaned with a warning, or refused as no name by the config reader: never stored raw.
    assert row["status"] == "inferred" and row["encoder"] is None
    # (refused, the experiment is named after its run folder, "pickle")
    assert row["exp_name"] in ("a\ufffdb", "pickle") and row["architecture"] in ("xy", None)
    if row["exp_name"] != "pickle":
        assert "exp_name from checkpoint: contains a lone surrogate; cleaned" in row["warnings"]
    assert metrics[str(tree["texts"])] == {"hmean": 0.5}
    for kind in ("int", "list", "dict"):
        row = rows[str(tree[f"monitor_{kind}"])]
        assert (row["status"], row["monitor"], row["mode"]) == ("inferred", None, None), kind
        assert "ModelCheckpoint monitor" in row["warnings"], kind
    row = rows[str(tree["monitor_mode"])]
    assert (row["monitor"], row["mode"]) == ("val/hmean", None)
    assert "mode 'sideways'" in row["warnings"]
    empty = rows[str(tree["empty"])]
    assert empty["status"] == "unreadable" and empty["epoch"] is None


def test_a_cleaned_metric_name_never_overwrites_a_real_one() -> None:
    record = inferred_record()
    record.metrics["val/\x00hmean"] = 0.9

    checked = check_record(record)

    assert checked.metrics == {"val/hmean": 0.5, "val/loss": 0.25}
    assert "name contains a NUL character; not indexed" in checked.columns["warnings"]
