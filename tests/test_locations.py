"""Several machines, one index (issue 4): rows record the location that indexed them, a checkpoint
is identified by (location, path), a sync prunes only its own location's rows under the roots it
walked, queries filter by location and show it, and migration 0002 keeps older rows working.

Each machine is played by ``CKPT_INDEX_LOCATION`` (or the host name when it is unset), on both
backends (``db_url``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.checkpoints import write_checkpoint
from helpers.sidecars import seed_document
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.pool import NullPool

from ckpt_index import api
from ckpt_index.index.engine import create_index_engine, open_engine, run_write
from ckpt_index.index.migrate import HEAD_REVISION, current_revision, downgrade
from ckpt_index.index.records import FileState, record_without_metadata
from ckpt_index.index.store import upsert_records
from ckpt_index.sidecar.files import sidecar_path_for


# ------------------------------------------------------------------------------------ helpers
def rows(db_url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every ``checkpoints`` row keyed by (location, path), with its metrics; duplicates fail."""
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            found: dict[tuple[str, str], dict[str, Any]] = {}
            for row in conn.execute(text("SELECT * FROM checkpoints")).mappings():
                key = (row["location"], row["checkpoint_path"])
                assert key not in found, f"two rows for {key}"
                found[key] = {**row, "metrics": {}}
            by_id = {row["id"]: row for row in found.values()}
            for checkpoint_id, name, value in conn.execute(
                text("SELECT checkpoint_id, name, value FROM checkpoint_metrics")
            ):
                by_id[checkpoint_id]["metrics"][name] = value
    finally:
        engine.dispose()
    return found


def at(monkeypatch: pytest.MonkeyPatch, location: str | None) -> None:
    """Play the machine ``location`` (None: no override, the host name)."""
    if location is None:
        monkeypatch.delenv("CKPT_INDEX_LOCATION", raising=False)
    else:
        monkeypatch.setenv("CKPT_INDEX_LOCATION", location)


def age(root: Path) -> None:
    """Date every file an hour back, out of the racy window: an unchanged tree is not re-read."""
    stamp = time.time() - 3600
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, (stamp, stamp))


def tree(outputs: Path, n: int = 3, hmean: float = 0.5) -> list[Path]:
    return [
        write_checkpoint(
            outputs / f"exp{i}" / "checkpoints" / f"epoch-{i:02d}_step-{i * 10:06d}.ckpt",
            seed_document(),
            **{
                "exp_name": f"exp{i}",
                "metrics.hmean": round(hmean + i / 100, 3),
                "training.epoch": i,
                "metrics.additional_metrics": {"val/loss": 0.1},
            },
        )
        for i in range(n)
    ]


def set_hmean(ckpt: Path, hmean: float) -> None:
    write_checkpoint(
        ckpt,
        seed_document(),
        **{
            "exp_name": ckpt.parent.parent.name,
            "metrics.hmean": hmean,
            "training.epoch": int(ckpt.name[6:8]),
            "metrics.additional_metrics": {"val/loss": 0.1},
        },
    )


def sync_ok(invoke_db: Callable, *roots: Path) -> dict[str, Any]:
    result = invoke_db("sync", *map(str, roots), "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def query(invoke_db: Callable, *args: str) -> list[dict[str, Any]]:
    result = invoke_db("query", *args, "--format", "json")
    if result.exit_code == 1:
        assert "no checkpoint matches" in result.stderr
        return []
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --------------------------------------------------------------------------------------------
# Which location a row records


def test_rows_record_the_host_name_by_default(
    db_url: str, invoke_db, outputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at(monkeypatch, None)
    ckpts = tree(outputs)
    summary = sync_ok(invoke_db, outputs)
    assert summary["location"] == socket.gethostname()
    assert set(rows(db_url)) == {(socket.gethostname(), str(c)) for c in ckpts}
    records = query(invoke_db)
    assert [r["location"] for r in records] == [socket.gethostname()] * 3


def test_environment_variable_names_the_location_for_sync_and_upserts(
    db_url: str, invoke_db, outputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at(monkeypatch, "shared-nfs")
    ckpts = tree(outputs)
    assert sync_ok(invoke_db, outputs)["location"] == "shared-nfs"
    # The callback's writes (store.upsert_records) resolve the location the same way.
    engine = open_engine(db_url)
    try:
        record = record_without_metadata(
            checkpoint_path="/elsewhere/x.ckpt",
            sidecar_path=None,
            ckpt=FileState(1, 1),
            sidecar=None,
            error=None,
        )
        run_write(engine, lambda conn: upsert_records(conn, [record]))
        explicit = record_without_metadata(
            checkpoint_path="/elsewhere/x.ckpt",
            sidecar_path=None,
            ckpt=FileState(2, 2),
            sidecar=None,
            error=None,
        )
        run_write(engine, lambda conn: upsert_records(conn, [explicit], location="node-7"))
    finally:
        engine.dispose()
    assert set(rows(db_url)) == {("shared-nfs", str(c)) for c in ckpts} | {
        ("shared-nfs", "/elsewhere/x.ckpt"),
        ("node-7", "/elsewhere/x.ckpt"),
    }


# --------------------------------------------------------------------------------------------
# Identity (location, path) and pruning


def test_two_locations_syncing_the_same_path_keep_two_rows(
    db_url: str, invoke_db, outputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpts = tree(outputs)
    at(monkeypatch, "node-a")
    sync_ok(invoke_db, outputs)
    set_hmean(ckpts[0], 0.99)  # node-b's file of the same path says something else
    at(monkeypatch, "node-b")
    summary = sync_ok(invoke_db, outputs)
    assert (summary["added"], summary["updated"], summary["removed"]) == (3, 0, 0)

    found = rows(db_url)
    assert set(found) == {(loc, str(c)) for loc in ("node-a", "node-b") for c in ckpts}
    assert len({row["id"] for row in found.values()}) == 6
    assert found[("node-a", str(ckpts[0]))]["hmean"] == 0.5
    assert found[("node-b", str(ckpts[0]))]["hmean"] == 0.99
    assert found[("node-a", str(ckpts[0]))]["metrics"]["hmean"] == 0.5
    assert found[("node-b", str(ckpts[0]))]["metrics"]["hmean"] == 0.99

    # A re-sync from either side updates its own row only.
    set_hmean(ckpts[1], 0.42)
    at(monkeypatch, "node-a")
    sync_ok(invoke_db, outputs)
    again = rows(db_url)
    assert len(again) == 6
    assert again[("node-a", str(ckpts[1]))]["hmean"] == 0.42
    assert again[("node-b", str(ckpts[1]))]["hmean"] == found[("node-b", str(ckpts[1]))]["hmean"]
    assert {k: v["id"] for k, v in again.items()} == {k: v["id"] for k, v in found.items()}


def test_a_sync_prunes_only_its_own_locations_rows(
    db_url: str, invoke_db, outputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpts = tree(outputs)
    for location in ("node-a", "node-b"):
        at(monkeypatch, location)
        sync_ok(invoke_db, outputs)
    gone = ckpts[0]
    gone.unlink()
    sidecar_path_for(gone).unlink()

    at(monkeypatch, "node-a")
    assert sync_ok(invoke_db, outputs)["removed"] == 1
    found = rows(db_url)
    assert ("node-a", str(gone)) not in found
    assert ("node-b", str(gone)) in found  # node-b has not looked at its disk yet
    assert found[("node-b", str(gone))]["metrics"], "node-b's metrics went with node-a's row"
    assert len(found) == 5

    at(monkeypatch, "node-b")
    assert sync_ok(invoke_db, outputs)["removed"] == 1
    assert set(rows(db_url)) == {(loc, str(c)) for loc in ("node-a", "node-b") for c in ckpts[1:]}


def test_a_sync_prunes_only_under_the_roots_it_walked(
    db_url: str, invoke_db, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tree(tmp_path / "r1", 2), tree(tmp_path / "r2", 2)
    for location in ("node-a", "node-b"):
        at(monkeypatch, location)
        sync_ok(invoke_db, tmp_path / "r1", tmp_path / "r2")
    for ckpt in (first[0], second[0]):
        ckpt.unlink()
        sidecar_path_for(ckpt).unlink()

    at(monkeypatch, "node-a")
    assert sync_ok(invoke_db, tmp_path / "r2")["removed"] == 1
    found = rows(db_url)
    assert ("node-a", str(first[0])) in found  # r1 was not walked
    assert ("node-a", str(second[0])) not in found
    assert all(("node-b", str(c)) in found for c in first + second)
    assert len(found) == 7


# --------------------------------------------------------------------------------------------
# Queries filter by location and show it


@pytest.fixture
def two_machines(outputs: Path, invoke_db, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """node-a and node-b index the same paths; on node-b every hmean is 0.3 higher."""
    ckpts = tree(outputs, 3, hmean=0.5)
    at(monkeypatch, "node-a")
    sync_ok(invoke_db, outputs)
    for i, ckpt in enumerate(ckpts):
        set_hmean(ckpt, round(0.8 + i / 100, 3))
    at(monkeypatch, "node-b")
    sync_ok(invoke_db, outputs)
    at(monkeypatch, "node-c")  # the querying machine has no rows of its own
    return ckpts


def test_query_filters_by_location_and_shows_it(invoke_db, two_machines: list[Path]) -> None:
    everything = query(invoke_db)
    assert sorted((r["location"], r["checkpoint_path"]) for r in everything) == sorted(
        (loc, str(c)) for loc in ("node-a", "node-b") for c in two_machines
    )

    on_a = query(invoke_db, "--location", "node-a")
    assert {r["location"] for r in on_a} == {"node-a"} and len(on_a) == 3
    assert sorted(r["hmean"] for r in on_a) == [0.5, 0.51, 0.52]
    assert query(invoke_db, "--location", "node-c") == []
    assert query(invoke_db, "--location", "NODE-A") == []  # exact, like the other filters

    (best,) = query(invoke_db, "--best-by", "hmean")
    assert (best["location"], best["hmean"]) == ("node-b", 0.82)
    (best_a,) = query(invoke_db, "--best-by", "hmean", "--location", "node-a")
    assert (best_a["location"], best_a["checkpoint_path"]) == ("node-a", str(two_machines[2]))
    grouped = query(
        invoke_db, "--best-by", "hmean", "--group-by", "exp_name", "--location", "node-a"
    )
    assert {r["location"] for r in grouped} == {"node-a"} and len(grouped) == 3
    by_where = query(invoke_db, "--where", "location = 'node-b' and hmean > 0.805")
    assert sorted(r["checkpoint_path"] for r in by_where) == sorted(map(str, two_machines[1:]))

    csv_out = invoke_db("query", "--location", "node-b", "--format", "csv")
    assert csv_out.exit_code == 0 and "node-b" in csv_out.stdout and "node-a" not in csv_out.stdout


def test_api_query_filters_by_location(db_url: str, two_machines: list[Path]) -> None:
    records = api.query(db=db_url, location="node-b", sort=["hmean:desc"])
    assert [(r["location"], r["hmean"]) for r in records] == [
        ("node-b", 0.82),
        ("node-b", 0.81),
        ("node-b", 0.8),
    ]


def test_show_prefers_its_own_locations_row(
    invoke_db, two_machines: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = str(two_machines[0])
    for location, hmean in (("node-a", 0.5), ("node-b", 0.8)):
        at(monkeypatch, location)
        result = invoke_db("show", ckpt)
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        assert (record["location"], record["hmean"]) == (location, hmean)
        assert record["metadata"]["metrics"]["hmean"] == hmean
    at(monkeypatch, "node-c")  # no row of its own: another location's row rather than nothing
    record = json.loads(invoke_db("show", ckpt).stdout)
    assert record["location"] in ("node-a", "node-b") and record["checkpoint_path"] == ckpt


# --------------------------------------------------------------------------------------------
# Migration 0002: rows from before locations keep working


def _to_revision_0001(db_url: str) -> None:
    engine = create_index_engine(db_url)
    try:
        downgrade(engine, db_url, "0001")
        with engine.connect() as conn:
            assert current_revision(conn) == "0001"
            assert "location" not in {c["name"] for c in inspect(conn).get_columns("checkpoints")}
    finally:
        engine.dispose()


def test_rows_from_before_locations_are_updated_and_pruned_not_duplicated(
    db_url: str, invoke_db, outputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpts = tree(outputs, 4)
    age(outputs)
    at(monkeypatch, "before")
    sync_ok(invoke_db, outputs)
    ids = {path: row["id"] for (_, path), row in rows(db_url).items()}
    _to_revision_0001(db_url)  # an index as the release before locations left it

    # The machine that upgrades it (here by its next sync) takes the old rows as its own.
    at(monkeypatch, "gpu-node-1")
    set_hmean(ckpts[1], 0.77)
    gone = ckpts[3]
    gone.unlink()
    sidecar_path_for(gone).unlink()
    summary = sync_ok(invoke_db, outputs)
    engine = create_index_engine(db_url)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == HEAD_REVISION
    finally:
        engine.dispose()
    assert (summary["added"], summary["updated"], summary["removed"], summary["unchanged"]) == (
        0,
        1,
        1,
        2,
    )
    found = rows(db_url)
    assert set(found) == {("gpu-node-1", str(c)) for c in ckpts[:3]}
    assert {path: row["id"] for (_, path), row in found.items()} == {
        str(c): ids[str(c)] for c in ckpts[:3]
    }
    assert found[("gpu-node-1", str(ckpts[1]))]["hmean"] == 0.77
    assert found[("gpu-node-1", str(ckpts[1]))]["metrics"]["hmean"] == 0.77

    # Another machine adds its own rows beside them and leaves them alone.
    at(monkeypatch, "gpu-node-2")
    assert sync_ok(invoke_db, outputs)["added"] == 3
    assert len(rows(db_url)) == 6
    assert {r["location"] for r in query(invoke_db, "--location", "gpu-node-1")} == {"gpu-node-1"}


def test_upgrade_by_opening_gives_old_rows_the_openers_location(
    db_url: str, outputs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpts = tree(outputs, 2)
    at(monkeypatch, "before")
    api.sync(outputs, db=db_url)
    _to_revision_0001(db_url)
    at(monkeypatch, "notebook-host")
    from ckpt_index.index.engine import open_engine

    open_engine(db_url).dispose()  # opening for writing upgrades; reading never does (issue 8)
    assert [r["location"] for r in api.query(db=db_url)] == ["notebook-host"] * 2
    assert set(rows(db_url)) == {("notebook-host", str(c)) for c in ckpts}
