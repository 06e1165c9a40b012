"""Hyperparameters in the index, on SQLite and PostgreSQL: one stored set per distinct content,
swept when no row uses it, the ``checkpoint_params`` views, the racy re-check, ``sync --full`` on
an index upgraded from revision 0006, downgrade and upgrade with data, concurrent writers, and
sidecar configs the index cannot store (dropped with a warning, never a failed sync).

Every test syncs real sidecars (``helpers.checkpoints.write_checkpoint``) beside real checkpoint
files, and reads the index back with plain SQL.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers.checkpoints import write_checkpoint
from helpers.files import age
from helpers.index_rows import plain_engine, raw_rows, sync
from helpers.sidecars import seed_document
from sqlalchemy import inspect, text

import ckpt_index.sync.roots as sync_module
from ckpt_index.index.engine import open_engine, resolve_db_url, write_transaction
from ckpt_index.index.migrate import downgrade, upgrade
from ckpt_index.index.records import record_from_metadata
from ckpt_index.index.store import store_param_sets, upsert_records
from ckpt_index.sidecar.files import (
    dump_document,
    parse_sidecar_bytes,
    parse_yaml_bytes,
    sidecar_path_for,
)
from ckpt_index.sidecar.schema import CheckpointMetadataV1

OLD_REVISIONS = Path(__file__).parent / "data" / "old_revisions"


def config(lr: float, batch_size: int = 16) -> dict[str, Any]:
    return {
        "model": {"encoder": {"name": "resnet50", "pretrained": True}, "dropout": 0.1},
        "optimizer": {"lr": lr, "betas": [0.9, 0.999]},
        "data": {"batch_size": batch_size, "root": "/data/ocr"},
        "seed": 7,
    }


#: How many parameters ``config`` flattens to.
N_PARAMS = 8


def write_run(
    outputs: Path, run: str, hparams: dict[str, Any] | None, epochs: int = 3
) -> list[Path]:
    """``epochs`` checkpoints of one run, their sidecars carrying ``hparams``."""
    ckpts = []
    for epoch in range(epochs):
        doc = seed_document()
        doc["schema_version"] = "1.1"
        doc["exp_name"] = run
        doc["training"]["epoch"] = epoch
        doc["metrics"]["hmean"] = 0.5 + epoch / 100
        if hparams is not None:
            doc["hyperparameters"] = hparams
            if "optimizer" in hparams:
                doc["hydra_overrides"] = [f"optimizer.lr={hparams['optimizer']['lr']}"]
        ckpt = outputs / run / "checkpoints" / f"epoch-{epoch:02d}.ckpt"
        write_checkpoint(ckpt, doc)
        ckpts.append(ckpt)
    return ckpts


def rewrite_params(ckpt: Path, hparams: dict[str, Any]) -> None:
    sidecar = sidecar_path_for(ckpt)
    doc = parse_yaml_bytes(sidecar.read_bytes())
    doc["hyperparameters"] = hparams
    sidecar.write_text(dump_document(doc), encoding="utf-8")


def scalar(db: str | Path, sql: str, **params: Any) -> Any:
    engine = plain_engine(db)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()
    finally:
        engine.dispose()


def rows_of(db: str | Path, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    engine = plain_engine(db)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def set_count(db: str | Path) -> int:
    return scalar(db, "SELECT count(*) FROM param_sets")


def params_by_path(db: str | Path) -> dict[str, dict[str, str | None]]:
    """checkpoint path -> {name: text value}, through the ``checkpoint_params`` view."""
    out: dict[str, dict[str, str | None]] = {}
    for path, name, value in rows_of(
        db,
        "SELECT c.checkpoint_path, p.name, p.text_value FROM checkpoint_params p "
        "JOIN checkpoints c ON c.id = p.checkpoint_id",
    ):
        out.setdefault(path, {})[name] = value
    return out


def assert_no_orphan_values(db: str | Path) -> None:
    orphans = scalar(
        db,
        "SELECT count(*) FROM param_values WHERE param_set_id NOT IN (SELECT id FROM param_sets)",
    )
    assert orphans == 0


# ------------------------------------------------------------------------------ shared sets


def test_checkpoints_of_a_run_share_one_set(outputs: Path, db_url: str) -> None:
    run_a = write_run(outputs, "run_a", config(0.1))
    run_b = write_run(outputs, "run_b", config(0.01))
    age(outputs)
    summary = sync(outputs, db_url)
    assert summary.added == 6
    rows = raw_rows(db_url)
    sets_a = {rows[str(c)]["param_set_id"] for c in run_a}
    sets_b = {rows[str(c)]["param_set_id"] for c in run_b}
    assert len(sets_a) == 1 and len(sets_b) == 1 and sets_a != sets_b and None not in sets_a
    assert set_count(db_url) == 2
    assert scalar(db_url, "SELECT count(*) FROM param_values") == 2 * N_PARAMS
    assert scalar(db_url, "SELECT min(size) FROM param_sets") == N_PARAMS
    params = params_by_path(db_url)
    assert params[str(run_a[0])]["optimizer.lr"] == "0.1"
    assert params[str(run_b[2])]["optimizer.lr"] == "0.01"
    assert params[str(run_a[1])]["optimizer.betas"] == "[0.9,0.999]"
    overridden = rows_of(
        db_url, "SELECT DISTINCT name FROM param_values WHERE overridden = :yes", yes=True
    )
    assert overridden == [("optimizer.lr",)]


def test_changed_sidecar_gets_a_new_set_and_the_old_one_is_swept(
    outputs: Path, db_url: str
) -> None:
    first, second = write_run(outputs, "run", config(0.1), epochs=2)
    age(outputs)
    sync(outputs, db_url)
    (old_set,) = {r["param_set_id"] for r in raw_rows(db_url).values()}

    rewrite_params(first, config(0.1, batch_size=32))
    age(sidecar_path_for(first))
    summary = sync(outputs, db_url)
    assert summary.updated == 1 and summary.unchanged == 1
    rows = raw_rows(db_url)
    assert rows[str(second)]["param_set_id"] == old_set  # still used: kept
    assert rows[str(first)]["param_set_id"] not in (None, old_set)
    assert set_count(db_url) == 2
    assert params_by_path(db_url)[str(first)]["data.batch_size"] == "32"

    rewrite_params(second, config(0.1, batch_size=32))
    age(sidecar_path_for(second))
    sync(outputs, db_url)
    rows = raw_rows(db_url)
    assert rows[str(first)]["param_set_id"] == rows[str(second)]["param_set_id"] != old_set
    assert set_count(db_url) == 1  # the old set, no longer used, was swept
    assert scalar(db_url, "SELECT count(*) FROM param_sets WHERE id = :i", i=old_set) == 0
    assert scalar(db_url, "SELECT count(*) FROM param_values") == N_PARAMS
    assert_no_orphan_values(db_url)


def test_deleting_checkpoints_removes_their_unused_sets(outputs: Path, db_url: str) -> None:
    run_a = write_run(outputs, "run_a", config(0.1))
    run_b = write_run(outputs, "run_b", config(0.01), epochs=2)
    age(outputs)
    sync(outputs, db_url)
    assert set_count(db_url) == 2

    for ckpt in run_a[:2]:  # part of run A: its set is still used by the third checkpoint
        ckpt.unlink()
        sidecar_path_for(ckpt).unlink()
    summary = sync(outputs, db_url)
    assert summary.removed == 2
    assert set_count(db_url) == 2

    shutil.rmtree(outputs / "run_b")
    summary = sync(outputs, db_url)
    assert summary.removed == 2
    assert set_count(db_url) == 1
    assert scalar(db_url, "SELECT count(*) FROM param_values") == N_PARAMS
    assert set(params_by_path(db_url)) == {str(run_a[2])}
    assert_no_orphan_values(db_url)
    assert run_b[0].exists() is False


def test_views_list_every_checkpoint_and_the_flat_one_hides_missing_checkpoints(
    outputs: Path, db_url: str
) -> None:
    kept, gone = write_run(outputs, "run", config(0.1), epochs=2)
    write_run(outputs, "plain", None, epochs=1)  # a sidecar without hyperparameters
    gone.unlink()  # its sidecar stays: the row stays, as a checkpoint that does not exist
    age(outputs)
    sync(outputs, db_url)
    rows = raw_rows(db_url)
    assert rows[str(gone)]["checkpoint_exists"] in (False, 0)
    view = rows_of(
        db_url,
        "SELECT checkpoint_id, name, value_type, numeric_value, text_value, source, overridden "
        "FROM checkpoint_params ORDER BY checkpoint_id, name",
    )
    assert {r[0] for r in view} == {rows[str(kept)]["id"], rows[str(gone)]["id"]}
    assert len(view) == 2 * N_PARAMS
    lr = [r for r in view if r[1] == "optimizer.lr"][0]
    assert lr[2:] == ("float", 0.1, "0.1", "sidecar", True)
    pretrained = [r for r in view if r[1] == "model.encoder.pretrained"][0]
    assert pretrained[2:6] == ("bool", None, "true", "sidecar")
    flat = rows_of(
        db_url,
        "SELECT checkpoint_path, exp_name, param, value_type, numeric_value, text_value "
        "FROM checkpoint_params_flat ORDER BY param",
    )
    assert {r[0] for r in flat} == {str(kept)}  # the missing checkpoint is hidden
    assert len(flat) == N_PARAMS
    assert ("data.batch_size", "int", 16.0, "16") in {r[2:] for r in flat}
    assert {r[1] for r in flat} == {"run"}


def test_racy_recheck_reports_unchanged_rows_with_params(
    outputs: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sync_module, "RACY_WINDOW_NS", 30 * 10**9)
    write_run(outputs, "run", config(0.1))
    sync(outputs, db_url)  # written just now: inside the racy window
    before = raw_rows(db_url)
    summary = sync(outputs, db_url)
    assert summary.parsed == 3  # read again (racy) ...
    assert summary.unchanged == 3 and summary.updated == 0  # ... and found the same
    after = raw_rows(db_url)
    assert {p: r["param_set_id"] for p, r in after.items()} == {
        p: r["param_set_id"] for p, r in before.items()
    }
    assert all(len(v) == N_PARAMS for v in params_by_path(db_url).values())
    assert set_count(db_url) == 1


# ------------------------------------------------------------------------------ revisions


def test_full_sync_fills_params_after_upgrade_and_downgrade_round_trip(
    outputs: Path, db_url: str, tmp_path: Path
) -> None:
    """SQLite starts from the committed revision-0006 index (its rows kept throughout);
    PostgreSQL from an empty one. Then: sync at head, downgrade to 0006 with the rows, upgrade
    again (parameters gone until files are read), a plain sync (nothing changed: still none),
    ``sync --full`` (every row read again: parameters back)."""
    url = resolve_db_url(db_url)
    if url.startswith("sqlite"):
        db = tmp_path / "old.db"
        shutil.copyfile(OLD_REVISIONS / "0006.db", db)
        url = resolve_db_url(db)
    old_rows = len(raw_rows(url)) if url.startswith("sqlite") else 0
    engine = open_engine(url)  # upgrades 0006 -> head
    engine.dispose()
    assert scalar(url, "SELECT count(*) FROM checkpoints WHERE param_set_id IS NOT NULL") == 0
    ckpts = write_run(outputs, "run", config(0.1)) + write_run(outputs, "other", config(0.2))
    age(outputs)
    sync(outputs, url)
    filled = params_by_path(url)
    assert set(filled) == {str(c) for c in ckpts}

    engine = open_engine(url)
    try:
        downgrade(engine, url, "0006")
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            columns = {c["name"] for c in inspect(conn).get_columns("checkpoints")}
        assert "param_sets" not in tables and "param_values" not in tables
        assert "param_set_id" not in columns
        assert len(raw_rows(url)) == old_rows + 6
        upgrade(engine, url, "head")
    finally:
        engine.dispose()
    rows = raw_rows(url)
    assert len(rows) == old_rows + 6 and all(rows[str(c)]["metrics"] for c in ckpts)
    assert set_count(url) == 0 and params_by_path(url) == {}

    summary = sync(outputs, url)
    assert summary.parsed == 0 and summary.unchanged == 6
    assert params_by_path(url) == {}  # old rows get parameters when read again ...

    summary = sync(outputs, url, full=True)
    assert summary.parsed == 6
    assert params_by_path(url) == filled  # ... or with --full
    assert set_count(url) == 2
    assert len(raw_rows(url)) == old_rows + 6


# ------------------------------------------------------------------------------ concurrency


def _records(tmp_path: Path, names: list[str]) -> list[Any]:
    doc = seed_document()
    doc.update(schema_version="1.1", hyperparameters=config(0.003, 64))
    meta = CheckpointMetadataV1.model_validate(doc)
    return [
        record_from_metadata(
            meta,
            checkpoint_path=str(tmp_path / f"{name}.ckpt"),
            sidecar_path=None,
            ckpt=None,
            sidecar=None,
        )
        for name in names
    ]


def test_two_writers_storing_the_same_new_set_share_it(db_url: str, tmp_path: Path) -> None:
    """The first writer inserts the set and holds its transaction open; the second, on its own
    engine, stores the same set meanwhile (blocked by the first on both backends) and commits
    after it: both succeed, and their rows point at one set with one copy of the values."""
    first_engine, second_engine = open_engine(db_url), open_engine(db_url)
    first_records, second_records = _records(tmp_path, ["a"]), _records(tmp_path, ["b"])
    assert first_records[0].params_digest == second_records[0].params_digest
    errors: list[BaseException] = []
    second_ids: dict[str, int] = {}

    def second_writer() -> None:
        try:
            with write_transaction(second_engine) as conn:
                second_ids.update(upsert_records(conn, second_records, location="here"))
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    try:
        with write_transaction(first_engine) as conn:
            ids = store_param_sets(conn, first_records)
            upsert_records(conn, first_records, location="here")
            thread = threading.Thread(target=second_writer)
            thread.start()
            thread.join(0.5)  # it waits for this transaction (the set's unique digest / lock)
        thread.join(60)
        assert not thread.is_alive() and errors == []
    finally:
        first_engine.dispose()
        second_engine.dispose()
    assert set_count(db_url) == 1
    (set_id,) = ids.values()
    linked = rows_of(db_url, "SELECT DISTINCT param_set_id FROM checkpoints")
    assert linked == [(set_id,)]
    assert scalar(db_url, "SELECT count(*) FROM param_values") == N_PARAMS
    assert len(second_ids) == 1


# ------------------------------------------------------------------------------ unstorable values


def test_unstorable_hyperparameters_never_fail_the_sync(outputs: Path, db_url: str) -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for level in range(20):
        deep = {f"l{level}": deep}
    hparams = {
        "ok": {"lr": 0.1},
        "huge": "x" * 5000,
        "k" * 250: 1,
        "deep": deep,
        "nan": float("nan"),
        "big": 10**400,
        "empty": {},
        "many": {f"p{i}": i for i in range(2100)},  # past the bound: the last 100-odd dropped
    }
    (ckpt,) = write_run(outputs, "run", hparams, epochs=1)
    # YAML keys that are not strings, written by hand (a dump would quote them).
    sidecar = sidecar_path_for(ckpt)
    sidecar.write_text(
        sidecar.read_text().replace(
            "hyperparameters:\n", "hyperparameters:\n  3: three\n  null: n\n  2.5: f\n"
        )
    )
    age(outputs)
    summary = sync(outputs, db_url)
    assert summary.added == 1 and summary.valid == 1
    row = raw_rows(db_url)[str(ckpt)]
    assert row["status"] == "valid"
    warnings = row["warnings"]
    assert "more than 2000 parameters" in warnings
    assert "a value longer than 2048 bytes" in warnings
    assert "a name longer than 200 characters" in warnings
    params = params_by_path(db_url)[str(ckpt)]
    assert len(params) == 2000
    assert params["ok.lr"] == "0.1" and params["3"] == "three" and params["null"] == "n"
    assert params["2.5"] == "f" and params["nan"] == "nan" and params["empty"] == "{}"
    assert params["big"].startswith("an integer of")
    assert "huge" not in params
    assert max(len(name) for name in params) <= 200
    # Deeper than 16 levels: the rest is one JSON value at the bound.
    deep_names = [n for n in params if n.startswith("deep.")]
    assert len(deep_names) == 1 and deep_names[0].count(".") == 15


# ------------------------------------------------------------------------------ the block cache


TRICKY = {
    "plain": "a: 1\nhyperparameters:\n  x: 1\n  y: [1, 2]\nb: 2\n",
    "at the start": "hyperparameters:\n  x: 1\nb: 2\n",
    "at the end, no newline": "a: 1\nhyperparameters:\n  x: {p: 1}\n  z: 2",
    "comment at column 0": "hyperparameters:\n  x: 1\n# note\n  y: 2\nb: 3\n",
    "blank lines and a block scalar": "hyperparameters:\n  x: |+\n    text\n\n\nb: 3\n",
    "quoted string across lines": 'hyperparameters:\n  x: "one\ntwo: 2"\nb: 1\n',
    "flow list across lines": "hyperparameters:\n  x: [1,\n2]\nb: 1\n",
    "flow with quoted bracket": "hyperparameters:\n  x: [']',\nb: 2]\nc: 1\n",
    "key inside a string before": 'a: "x\nhyperparameters:\n  y"\nb: 1\n',
    "twice": "hyperparameters:\n  x: 1\nhyperparameters:\n  x: 2\n",
    "quoted twin later": 'hyperparameters:\n  x: 1\n"hyperparameters": 5\n',
    "quoted twin before": '"hyperparameters": 5\nhyperparameters:\n  x: 1\n',
    "a scalar": "hyperparameters:\n  just text\nb: 1\n",
    "a list at column 0": "hyperparameters:\n- 1\n- 2\n",
    "empty": "hyperparameters:\nb: 1\n",
    "alias": "a: &x 1\nhyperparameters:\n  y: *x\n",
    "tag": "hyperparameters:\n  y: !!str 1\n",
    "crlf": "a: 1\r\nhyperparameters:\r\n  x: 1\r\nb: 2\r\n",
    "document end": "hyperparameters:\n  x: 1\n...\n",
    "second document": "hyperparameters:\n  x: 1\n---\nb: 1\n",
    "indented document": "  a: 1\nhyperparameters:\n  x: 1\n",
    "dates and numbers": "hyperparameters:\n  d: 2025-01-02\n  f: 1e3\n  o: 0o17\n  n: ~\nb: 1\n",
    "tab indentation": "hyperparameters:\n\tx: 1\nb: 1\n",
    "deep": "hyperparameters:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(70)),
    "many dashes": "a: " + "-" * 100 + "\nhyperparameters:\n  x: [[[[1]]]]\nb: 1\n",
}


def _outcome(parse: Any, data: bytes) -> Any:
    try:
        return ("ok", parse(data))
    except Exception as exc:  # noqa: BLE001
        return ("error", type(exc).__name__, str(exc))


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_repeated_block_parse_equals_the_full_parse(name: str) -> None:
    """Whatever the text, the sidecar parse (which reuses a repeated hyperparameters block)
    gives the document or the error of the plain parse: twice, so the second meets the cache."""
    data = TRICKY[name].encode("utf-8")
    expected = _outcome(lambda d: parse_yaml_bytes(d, "s.yaml"), data)
    assert _outcome(lambda d: parse_sidecar_bytes(d, "s.yaml"), data) == expected
    assert _outcome(lambda d: parse_sidecar_bytes(d, "s.yaml"), data) == expected


def test_repeated_block_gives_each_caller_its_own_value() -> None:
    text = "a: 1\nhyperparameters:\n  model:\n    lr: 0.1\n    sizes: [1, 2]\nb: 2\n"
    first = parse_sidecar_bytes(text.encode())
    first["hyperparameters"]["model"]["lr"] = 99
    first["hyperparameters"]["model"]["sizes"].append(3)
    again = parse_sidecar_bytes(text.replace("a: 1", "a: 5").encode())
    assert again == {"a": 5, "hyperparameters": {"model": {"lr": 0.1, "sizes": [1, 2]}}, "b": 2}


def test_text_values_compare_bytewise_on_postgresql(pg_url: str) -> None:
    """param_values.text_value has the "C" collation on PostgreSQL (SQLite compares bytes): a
    text filter or sort on a parameter gives the same order on both, whatever the locale."""
    from ckpt_index.index.engine import open_engine

    engine = open_engine(pg_url)
    try:
        with engine.connect() as conn:
            collation = conn.exec_driver_sql(
                "SELECT collation_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = 'param_values' "
                "AND column_name = 'text_value'"
            ).scalar()
        assert collation == "C"
    finally:
        engine.dispose()
