"""Hyperparameters in results: the ``params`` object of JSON rows, ``show``, the API and the
catalog; ``--columns params.X`` in every format; ``--varying``.

Every test syncs a small sweep of real sidecars (schema 1.1 ``hyperparameters``) on both backends.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.sweeps import RUNS, expected_params, make_sweep
from sqlalchemy import create_engine

from ckpt_index import api
from ckpt_index.query.params import ParamsWanted, params_of_sets, varying_names
from ckpt_index.query.spec import QuerySpec, run_query
from ckpt_index.tools.catalog import build_catalog


@pytest.fixture
def sweep(outputs: Path, invoke_db: Callable[..., Any]) -> dict[str, Path]:
    paths = make_sweep(outputs)
    result = invoke_db("sync", str(outputs))
    assert result.exit_code == 0, result.output
    return paths


def query_json(invoke_db: Callable[..., Any], *args: str) -> list[dict[str, Any]]:
    result = invoke_db("query", *args, "--format", "json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def by_exp(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["exp_name"]: r["params"] for r in rows}


# --------------------------------------------------------------------------------------------
# The params object


def test_json_rows_carry_params_with_their_types(invoke_db, sweep) -> None:
    rows = query_json(invoke_db, "--sort", "checkpoint_path")
    assert len(rows) == 7
    for row in rows:
        assert list(row)[list(row).index("metrics") + 1] == "params"  # right after metrics
    params = by_exp(rows)
    assert params["plain"] == {}
    for exp, run in RUNS.items():
        assert params[exp] == expected_params(*run)
    a = params["sweep-a"]
    assert type(a["model.layers"]) is int and type(a["model.optimizer.lr"]) is float
    assert a["model.pretrained"] is True and a["model.dropout"] is None
    assert list(a) == sorted(a)  # name order


def test_jsonl_rows_carry_params(invoke_db, sweep) -> None:
    result = invoke_db("query", "--exp", "sweep-c", "--format", "jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2
    assert all(r["params"] == expected_params(*RUNS["sweep-c"]) for r in rows)


def test_show_carries_params(invoke_db, sweep) -> None:
    shown = json.loads(invoke_db("show", str(sweep["sweep-b/2"])).stdout)
    assert shown["params"] == expected_params(*RUNS["sweep-b"])
    assert json.loads(invoke_db("show", str(sweep["plain"])).stdout)["params"] == {}


def test_api_query_returns_params(db_url, sweep) -> None:
    rows = api.query(db_url, best_by="hmean", group_by="exp_name")
    assert {r["exp_name"]: r["params"] for r in rows} == {
        "plain": {},
        **{exp: expected_params(*run) for exp, run in RUNS.items()},
    }
    # Checkpoints of one run share one decoded mapping (decoded once per set).
    both = api.query(db_url, exp="sweep-a")
    assert len(both) == 2 and both[0]["params"] is both[1]["params"]


def test_run_query_fetches_params_only_when_asked(db_url, sweep) -> None:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            bare = run_query(conn, QuerySpec(exp="sweep-*"))
            named = run_query(conn, QuerySpec(exp="sweep-*"), params=["data.batch_size"])
    finally:
        engine.dispose()
    assert bare and all("params" not in r for r in bare)
    assert sorted(r["params"]["data.batch_size"] for r in named) == [8, 8, 8, 8, 16, 16]
    assert all(list(r["params"]) == ["data.batch_size"] for r in named)


def test_catalog_entries_expose_params(db_url, outputs) -> None:
    make_sweep(outputs)
    catalog = build_catalog(outputs, db=db_url)
    entries = {e.exp_name: e.params for e in catalog.entries}
    assert entries["plain"] == {}
    assert entries["sweep-c"] == expected_params(*RUNS["sweep-c"])
    assert entries["sweep-a"]["model.optimizer.lr"] == 0.1


# --------------------------------------------------------------------------------------------
# --columns params.X


def test_columns_params_in_json(invoke_db, sweep) -> None:
    rows = query_json(
        invoke_db, "--exp", "sweep-*", "--columns", "path,params.model.optimizer.lr,hmean"
    )
    assert len(rows) == 6
    for row in rows:
        assert set(row) == {"checkpoint_path", "hmean", "params"}
        assert list(row["params"]) == ["model.optimizer.lr"]
    assert sorted(r["params"]["model.optimizer.lr"] for r in rows) == [0.01] * 4 + [0.1] * 2


def test_columns_params_in_csv(invoke_db, sweep) -> None:
    result = invoke_db(
        "query",
        "--columns",
        "exp,params.data.batch_size,params.model.sizes,params.model.dropout",
        "--sort",
        "exp_name",
        "--format",
        "csv",
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == [
        "exp_name",
        *(f"params.{n}" for n in ("data.batch_size", "model.sizes", "model.dropout")),
    ]
    assert rows[1] == ["plain", "", "", ""]
    assert rows[2] == ["sweep-a", "8", "[1, 2, 3]", ""]
    assert rows[-1] == ["sweep-c", "16", "[1, 2, 3]", ""]


def test_columns_params_in_table(invoke_db, sweep) -> None:
    result = invoke_db(
        "query",
        "--exp",
        "sweep-*",
        "--columns",
        "exp,params.model.optimizer.lr,params.model.pretrained,params.model.warmup",
        "--sort",
        "exp_name",
        "--sort",
        "epoch",
    )
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines()]
    assert lines[0] == ["exp_name", "model.optimizer.lr", "model.pretrained", "model.warmup"]
    assert lines[1] == ["sweep-a", "0.1", "true", "-"]
    assert lines[-1] == ["sweep-c", "0.01", "true", "5"]


def test_csv_and_table_without_params_columns_have_none(invoke_db, sweep) -> None:
    header = invoke_db("query", "--format", "csv").stdout.splitlines()[0].split(",")
    assert not any(name.startswith("params.") for name in header)
    table = invoke_db("query").stdout
    assert "optimizer" not in table


@pytest.mark.parametrize(
    ("name", "hint"),
    [
        ("params.model.optimizer.lrr", "did you mean 'params.model.optimizer.lr'?"),
        ("params.nothing_like_it_at_all", None),
    ],
)
def test_unknown_param_column_is_a_usage_error(invoke_db, sweep, name, hint) -> None:
    result = invoke_db("query", "--columns", f"path,{name}")
    assert result.exit_code == 2
    assert f"unknown column {name!r}" in result.stderr
    if hint:
        assert hint in result.stderr


# --------------------------------------------------------------------------------------------
# --varying


def varying_columns(invoke_db: Callable[..., Any], *args: str) -> list[str]:
    result = invoke_db("query", *args, "--varying", "--format", "csv", "--columns", "exp")
    assert result.exit_code == 0, result.output
    return next(csv.reader(io.StringIO(result.stdout)))[1:]


def test_varying_lists_what_the_sweep_varied(invoke_db, sweep) -> None:
    # warmup is present in sweep-c only: present for some, missing for others differs.
    assert varying_columns(invoke_db, "--exp", "sweep-*") == [
        "params.data.batch_size",
        "params.model.optimizer.lr",
        "params.model.warmup",
    ]
    assert varying_columns(invoke_db, "--exp", "sweep-?", "--where", "exp_name != 'sweep-c'") == [
        "params.model.optimizer.lr"
    ]
    assert varying_columns(invoke_db, "--where", "exp_name != 'sweep-a'") == [
        f"params.{name}" for name in expected_params(*RUNS["sweep-c"])
    ]  # rows without parameters next to rows with: every parameter differs


def test_varying_single_set_or_no_set_adds_nothing(invoke_db, sweep) -> None:
    assert varying_columns(invoke_db, "--exp", "sweep-a") == []  # two checkpoints, one set
    assert varying_columns(invoke_db, "--exp", "plain") == []
    rows = query_json(invoke_db, "--exp", "sweep-a", "--varying")
    assert [r["params"] for r in rows] == [{}, {}]


def test_varying_in_json_and_table(invoke_db, sweep) -> None:
    rows = query_json(
        invoke_db,
        "--exp",
        "sweep-?",
        "--where",
        "exp_name != 'sweep-a'",
        "--varying",
        "--sort",
        "checkpoint_path",
    )
    # A parameter a row's set lacks is absent from its params (null is a value of its own).
    assert [r["params"] for r in rows] == [
        {"data.batch_size": 8},
        {"data.batch_size": 8},
        {"data.batch_size": 16, "model.warmup": 5},
        {"data.batch_size": 16, "model.warmup": 5},
    ]
    assert all("hmean" in r and "metrics" in r for r in rows)  # every field stays
    table = invoke_db(
        "query",
        "--exp",
        "sweep-?",
        "--where",
        "exp_name != 'sweep-a'",
        "--varying",
        "--sort",
        "exp_name",
    )
    header = table.stdout.splitlines()[0].split()
    assert {"data.batch_size", "model.warmup", "hmean", "path"} <= set(header)
    assert "model.optimizer.lr" not in header


def test_varying_after_chosen_columns(invoke_db, sweep) -> None:
    rows = query_json(
        invoke_db, "--exp", "sweep-*", "--columns", "path,params.data.batch_size", "--varying"
    )
    assert all(
        list(r["params"]) == ["data.batch_size", "model.optimizer.lr", "model.warmup"] for r in rows
    )


def test_varying_names_from_sets(db_url, sweep) -> None:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = run_query(conn, QuerySpec(exp="sweep-*"), params=True)
            sets = {r["exp_name"]: r for r in rows}
            assert sets
            ids = [
                conn.exec_driver_sql(
                    "SELECT param_set_id FROM checkpoints WHERE exp_name = ?"
                    if db_url.startswith("sqlite")
                    else "SELECT param_set_id FROM checkpoints WHERE exp_name = %s",
                    (exp,),
                )
                .scalars()
                .all()
                for exp in ("sweep-a", "sweep-b", "plain")
            ]
            a, b, plain = (group[0] for group in ids)
            assert plain is None and a != b
            assert varying_names(conn, [a, a]) == []
            assert varying_names(conn, [a, b]) == ["model.optimizer.lr"]
            assert varying_names(conn, [a, None]) == sorted(expected_params(*RUNS["sweep-a"]))
            assert varying_names(conn, [None, None]) == []
            assert params_of_sets(conn, [a])[a] == expected_params(*RUNS["sweep-a"])
            wanted = ParamsWanted(varying=True)
            varied = run_query(
                conn, QuerySpec(exp="sweep-?", where="exp_name != 'sweep-c'"), params=wanted
            )
            assert wanted.found_varying == ["model.optimizer.lr"]
            assert {r["params"]["model.optimizer.lr"] for r in varied} == {0.1, 0.01}
    finally:
        engine.dispose()


def test_bare_parameter_suffix_is_a_column(invoke_db, sweep) -> None:
    rows = query_json(invoke_db, "--exp", "sweep-a", "--columns", "path,lr,batch_size")
    assert [r["params"] for r in rows] == [{"model.optimizer.lr": 0.1, "data.batch_size": 8}] * 2


def test_table_shows_the_parameter_it_sorts_by(invoke_db, sweep) -> None:
    result = invoke_db("query", "--exp", "sweep-*", "--sort", "params.model.optimizer.lr:desc")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] == "model.optimizer.lr"
    assert [line.split()[0] for line in lines[1:]] == ["0.1", "0.1", "0.01", "0.01", "0.01", "0.01"]


def test_varying_table_shows_a_grouped_parameter_once(invoke_db, sweep) -> None:
    # The parameter grouped by is among the columns the query ranks by; --varying finds it
    # varying too, and the table shows it once (CSV and JSON key it once anyway).
    result = invoke_db(
        "query",
        "--exp",
        "sweep-*",
        "--group-by",
        "params.model.optimizer.lr",
        "--best-by",
        "hmean",
        "--varying",
    )
    assert result.exit_code == 0, result.output
    header = result.output.splitlines()[0].split()
    assert header.count("model.optimizer.lr") == 1, header
    assert "data.batch_size" in header  # the other varying parameters stay


@pytest.mark.parametrize("option", ["--columns", "--where", "--sort"])
def test_param_set_id_is_not_a_field(invoke_db, sweep, option) -> None:
    # The store's link to a parameter set is no fact about a checkpoint: naming it is an
    # unknown name (it once came back as a metric holding null).
    value = "param_set_id = 1" if option == "--where" else "param_set_id"
    result = invoke_db("query", option, value, "--format", "json")
    assert result.exit_code == 2, result.output
    assert "param_set_id" in result.output
