"""``params.NAME`` in ``--where``, ``--sort``, ``--group-by`` (+ ``--best-by``), bare parameter
names (``batch_size``, ``optimizer.lr``), their errors, and the SQL shape of a parameter filter.

The index is a small Hydra-like sweep written as real sidecars (schema 1.1 ``hyperparameters``
and ``hydra_overrides``) and synced; every test runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers.checkpoints import write_checkpoint
from helpers.postgres import pg_url_with_schema
from helpers.sidecars import seed_document
from sqlalchemy import create_engine, text
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.pool import NullPool

import ckpt_index
from ckpt_index.cli import cli
from ckpt_index.query.names import AmbiguousNameError, UnknownNameError
from ckpt_index.query.spec import QueryError, QuerySpec, build_query
from ckpt_index.query.where import WhereError

LRS = (0.1, 0.01, 0.001)
BATCHES = (8, 16)
EPOCHS = (1, 2)


def _hmean(lr: float, batch: int, epoch: int) -> float:
    """Distinct scores: lr 0.01 is best, then 0.1; batch 16 beats 8; later epochs are better."""
    rank = {0.01: 0.8, 0.1: 0.7, 0.001: 0.6}[lr]
    return round(rank + (0.05 if batch == 16 else 0.0) + 0.01 * epoch, 4)


def _write_sweep(outputs: Path) -> dict[str, dict[str, Any]]:
    """Six runs (lr x batch), two checkpoints each, plus one run whose sidecar (schema 1.0) has
    no hyperparameters. Returns {path: what it was written with}."""
    written: dict[str, dict[str, Any]] = {}
    for lr in LRS:
        for batch in BATCHES:
            run = f"sweep_lr{lr}_bs{batch}"
            for epoch in EPOCHS:
                doc = seed_document()
                doc["schema_version"] = "1.1"
                doc["exp_name"] = run
                doc["hyperparameters"] = {
                    "model": {
                        "optimizer": {"lr": lr, "name": "adam" if lr < 0.1 else "sgd"},
                        "encoder": "resnet50" if batch == 8 else "resnet18",
                        "dropout": None,
                    },
                    "scheduler": {"lr": 0.5, "warmup": batch == 16},
                    "data": {"batch_size": batch, "layers": [64, batch], "weird name": "x y"},
                }
                doc["hydra_overrides"] = [f"model.optimizer.lr={lr}", f"data.batch_size={batch}"]
                hmean = _hmean(lr, batch, epoch)
                path = outputs / run / "checkpoints" / f"epoch-{epoch:02d}.ckpt"
                write_checkpoint(
                    path,
                    doc,
                    **{
                        "training.epoch": epoch,
                        "training.global_step": 100 * epoch,
                        "metrics.hmean": hmean,
                        "metrics.additional_metrics": {},
                    },
                )
                written[str(path)] = {"lr": lr, "batch": batch, "epoch": epoch, "hmean": hmean}
    plain = outputs / "plain" / "checkpoints" / "epoch-03.ckpt"
    write_checkpoint(
        plain,
        **{
            "exp_name": "plain",
            "training.epoch": 3,
            "metrics.hmean": 0.99,
            "metrics.additional_metrics": {},
        },
    )
    written[str(plain)] = {"lr": None, "batch": None, "epoch": 3, "hmean": 0.99}
    return written


class Sweep:
    """The synced sweep: ``url`` of its index, ``written`` (path -> values), ``invoke``."""

    def __init__(self, url: str, written: dict[str, dict[str, Any]]) -> None:
        self.url, self.written = url, written
        self.runner = CliRunner()

    def invoke(self, *args: str) -> Any:
        return self.runner.invoke(cli, [*args, "--db", self.url], catch_exceptions=False)

    def paths(self, *args: str) -> list[str]:
        """Paths a query selects, in order (empty: nothing matched, exit 1)."""
        result = self.invoke("query", *args, "--format", "json")
        if result.exit_code == 1:
            assert "no checkpoint matches" in result.stderr
            return []
        assert result.exit_code == 0, (result.stdout, result.stderr)
        return [row["checkpoint_path"] for row in json.loads(result.stdout)]

    def where(self, expr: str) -> set[str]:
        return set(self.paths("--where", expr))

    def having(self, test: Callable[[dict[str, Any]], bool]) -> set[str]:
        return {path for path, values in self.written.items() if test(values)}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def sweep(request, tmp_path_factory) -> Iterator[Sweep]:
    outputs = tmp_path_factory.mktemp("sweep") / "outputs"
    written = _write_sweep(outputs)
    schema = None
    if request.param == "sqlite":
        url = "sqlite:///" + str(tmp_path_factory.mktemp("index") / "index.db")
    else:
        admin = request.getfixturevalue("pg_admin_engine")
        schema = f"ckpt_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = pg_url_with_schema(schema)
    summary = ckpt_index.sync_index(outputs, db=url)
    assert summary is not None
    yield Sweep(url, written)
    if schema is not None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def test_the_sweep_is_indexed_with_its_parameters(sweep: Sweep) -> None:
    engine = create_engine(sweep.url, poolclass=NullPool)
    with engine.connect() as conn:
        sets = conn.execute(text("SELECT COUNT(*) FROM param_sets")).scalar_one()
        overridden = conn.execute(
            text("SELECT DISTINCT name FROM param_values WHERE overridden ORDER BY name")
        ).scalars()
        assert sets == len(LRS) * len(BATCHES)  # the checkpoints of a run share one set
        assert list(overridden) == ["data.batch_size", "model.optimizer.lr"]
    engine.dispose()


# --------------------------------------------------------------------------------------------
# --where: every operator on numbers, strings, booleans, JSON text and null


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("params.model.optimizer.lr < 1e-2", lambda v: v["lr"] is not None and v["lr"] < 0.01),
        ("params.model.optimizer.lr <= 0.01", lambda v: v["lr"] in (0.01, 0.001)),
        ("params.model.optimizer.lr > 0.01", lambda v: v["lr"] == 0.1),
        ("params.model.optimizer.lr >= 0.010", lambda v: v["lr"] in (0.1, 0.01)),
        ("params.model.optimizer.lr = 0.01", lambda v: v["lr"] == 0.01),
        ("params.model.optimizer.lr == 1e-2", lambda v: v["lr"] == 0.01),
        # A checkpoint without the parameter matches no comparison, negated or not.
        ("params.model.optimizer.lr != 0.01", lambda v: v["lr"] in (0.1, 0.001)),
        ("not params.model.optimizer.lr = 0.01", lambda v: v["lr"] in (0.1, 0.001)),
        ("not params.model.optimizer.lr < 0.05", lambda v: v["lr"] == 0.1),
        # An int compares with a float of equal value.
        ("params.data.batch_size = 16.0", lambda v: v["batch"] == 16),
        ("params.data.batch_size in (8, 9)", lambda v: v["batch"] == 8),
        ("params.data.batch_size not in (8)", lambda v: v["batch"] == 16),
        # Strings compare as strings (a number's text too).
        ("params.model.optimizer.name = 'adam'", lambda v: v["lr"] in (0.01, 0.001)),
        ("params.model.optimizer.name != 'adam'", lambda v: v["lr"] == 0.1),
        ("params.model.encoder like 'resnet5%'", lambda v: v["batch"] == 8),
        ("params.model.encoder not like 'resnet5%'", lambda v: v["batch"] == 16),
        ("params.model.optimizer.lr = '0.001'", lambda v: v["lr"] == 0.001),
        # Mixed lists: numbers by value, strings by text.
        ("params.model.optimizer.lr in (0.1, '0.001')", lambda v: v["lr"] in (0.1, 0.001)),
        ("params.model.optimizer.name in ('sgd', 3)", lambda v: v["lr"] == 0.1),
        ("params.model.optimizer.name not in ('sgd', 3)", lambda v: v["lr"] in (0.01, 0.001)),
        # A value of another type is not equal: 'adam' != 1 is true, 'adam' = 1 is false.
        ("params.model.optimizer.name = 1", lambda v: False),
        ("params.model.optimizer.name != 1", lambda v: v["lr"] is not None),
        # Booleans.
        ("params.scheduler.warmup = true", lambda v: v["batch"] == 16),
        ("params.scheduler.warmup = false", lambda v: v["batch"] == 8),
        ("params.scheduler.warmup != true", lambda v: v["batch"] == 8),
        ("params.scheduler.warmup in (true)", lambda v: v["batch"] == 16),
        # JSON values are their compact text.
        ("params.data.layers = '[64,16]'", lambda v: v["batch"] == 16),
        ("params.data.layers like '[64,%'", lambda v: v["lr"] is not None),
        # Null: a null value and a missing parameter are both null.
        ("params.model.dropout is null", lambda v: True),
        ("params.model.dropout is not null", lambda v: False),
        ("params.model.optimizer.lr is null", lambda v: v["lr"] is None),
        ("params.model.optimizer.lr is not null", lambda v: v["lr"] is not None),
        ("not params.model.optimizer.lr is null", lambda v: v["lr"] is not None),
        # Quoted names, and parameters with fields and metrics.
        ("params.\"data.weird name\" = 'x y'", lambda v: v["lr"] is not None),
        ("\"params.data.weird name\" = 'x y'", lambda v: v["lr"] is not None),
        (
            "params.model.optimizer.lr < 1e-1 and hmean > 0.8 and epoch = 2",
            lambda v: (
                v["lr"] is not None and v["lr"] < 0.1 and v["hmean"] > 0.8 and v["epoch"] == 2
            ),
        ),
        (
            "not (params.data.batch_size = 8 or params.model.optimizer.lr = 0.1)",
            lambda v: v["batch"] == 16 and v["lr"] != 0.1,
        ),
    ],
)
def test_where_on_parameters(sweep: Sweep, expr: str, expected: Callable) -> None:
    assert sweep.where(expr) == sweep.having(expected), expr


def test_where_bare_names_resolve_to_the_unique_parameter(sweep: Sweep) -> None:
    """``batch_size`` and ``optimizer.lr`` are no field and no metric: each is the dotted
    suffix of exactly one parameter."""
    assert sweep.where("batch_size = 16") == sweep.having(lambda v: v["batch"] == 16)
    assert sweep.where("optimizer.lr = 0.1 and batch_size = 8") == sweep.having(
        lambda v: v["lr"] == 0.1 and v["batch"] == 8
    )
    # The exact name wins over a suffix: "model.encoder" is a parameter itself.
    assert sweep.where("model.encoder = 'resnet18'") == sweep.having(lambda v: v["batch"] == 16)
    # A field keeps its meaning: the parameter "exp_name" would be params.exp_name.
    assert sweep.where("epoch = 3") == {p for p in sweep.written if "plain" in p}


def test_api_filters_and_resolves_alike(sweep: Sweep) -> None:
    rows = ckpt_index.query_index(db=sweep.url, where="batch_size = 8", best_by="hmean")
    assert len(rows) == 1
    assert sweep.written[rows[0]["checkpoint_path"]] == {
        "lr": 0.01,
        "batch": 8,
        "epoch": 2,
        "hmean": _hmean(0.01, 8, 2),
    }


# --------------------------------------------------------------------------------------------
# --sort and --group-by


def test_sort_by_a_parameter(sweep: Sweep) -> None:
    got = sweep.paths("--sort", "params.model.optimizer.lr:asc", "--sort", "hmean:desc")
    values = [sweep.written[p] for p in got]
    # Numbers by value (not by text: '0.001' < '0.01' < '0.1' happens to agree, batch sizes
    # would not), rows without the parameter last.
    assert [v["lr"] for v in values] == [0.001] * 4 + [0.01] * 4 + [0.1] * 4 + [None]
    assert [v["hmean"] for v in values[:4]] == sorted(
        (v["hmean"] for v in values[:4]), reverse=True
    )
    desc = sweep.paths("--sort", "batch_size:desc", "--sort", "checkpoint_path", "--limit", "3")
    assert [sweep.written[p]["batch"] for p in desc] == [16, 16, 16]


def test_sort_by_text_parameter(sweep: Sweep) -> None:
    got = sweep.paths("--sort", "params.model.optimizer.name", "--where", "epoch = 1")
    names = ["adam" if sweep.written[p]["lr"] < 0.1 else "sgd" for p in got]
    assert names == sorted(names)


def test_group_by_parameter_best_by_hmean(sweep: Sweep) -> None:
    got = sweep.paths("--best-by", "hmean", "--group-by", "params.model.optimizer.lr")
    best = {}
    for path, v in sweep.written.items():
        if v["lr"] is None or v["hmean"] > best.get(v["lr"], ("", -1))[1]:
            best[v["lr"]] = (path, v["hmean"])
    # One row per value, plus one for the checkpoints without it; by hmean, best first.
    expected = sorted(best.values(), key=lambda item: -item[1])
    assert got == [path for path, _ in expected]


def test_group_by_bare_name_with_sort_and_limit(sweep: Sweep) -> None:
    got = sweep.paths("--best-by", "hmean", "--group-by", "batch_size", "--sort", "batch_size:desc")
    assert [sweep.written[p]["batch"] for p in got] == [16, 8, None]
    assert all(sweep.written[p]["lr"] in (0.01, None) for p in got)
    # The worst per batch size among lr < 0.05, the worst group first, one row.
    got = sweep.paths(
        *("--best-by", "hmean:min", "--group-by", "params.data.batch_size", "--limit", "1"),
        *("--where", "params.model.optimizer.lr < 0.05"),
    )
    assert [sweep.written[p] for p in got] == [
        {"lr": 0.001, "batch": 8, "epoch": 1, "hmean": _hmean(0.001, 8, 1)}
    ]


def test_group_keys_join_equal_numbers(tmp_path: Path, db_url: str) -> None:
    """0.1 and 0.10 (and 1 and 1.0) are one group; a text value is a group of its own."""
    outputs = tmp_path / "outputs"
    values = [(0.1, 0.5), (0.10, 0.7), (1, 0.2), (1.0, 0.3), ("auto", 0.4)]
    for i, (lr, hmean) in enumerate(values):
        doc = seed_document()
        doc["schema_version"] = "1.1"
        doc["hyperparameters"] = {"lr": lr, "run": i}
        write_checkpoint(
            outputs / f"run{i}" / "e.ckpt",
            doc,
            **{"metrics.hmean": hmean, "metrics.additional_metrics": {}},
        )
    ckpt_index.sync_index(outputs, db=db_url)
    rows = ckpt_index.query_index(db=db_url, best_by="hmean", group_by="params.lr")
    assert [row["checkpoint_path"].split("/")[-2] for row in rows] == ["run1", "run4", "run3"]


# --------------------------------------------------------------------------------------------
# Unknown and ambiguous names: usage errors (exit 2) with suggestions or candidates


def test_ambiguous_bare_name_lists_the_candidates(sweep: Sweep) -> None:
    result = sweep.invoke("query", "--where", "hmean > 0.5 and lr < 0.1")
    assert result.exit_code == 2
    assert (
        "ambiguous name 'lr': it could be 'params.model.optimizer.lr' or 'params.scheduler.lr' "
        "(write the full name) at position 16"
    ) in result.stderr
    lines = result.stderr.splitlines()
    assert lines[-1] == "  " + " " * 16 + "^"
    for args in (["--sort", "lr"], ["--best-by", "hmean", "--group-by", "lr"]):
        result = sweep.invoke("query", *args)
        assert result.exit_code == 2 and "ambiguous name 'lr'" in result.stderr, args
    with pytest.raises(AmbiguousNameError) as info:
        ckpt_index.query_index(db=sweep.url, sort=["lr"])
    assert info.value.candidates == ("params.model.optimizer.lr", "params.scheduler.lr")
    assert isinstance(info.value, QueryError)


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--where", "params.model.optimizer.lrr < 1"],
            "unknown parameter 'params.model.optimizer.lrr' "
            "(did you mean 'params.model.optimizer.lr', ",
        ),
        (
            ["--sort", "params.data.batchsize"],
            "unknown parameter 'params.data.batchsize' (did you mean 'params.data.batch_size', ",
        ),
        (
            ["--best-by", "hmean", "--group-by", "params.nope"],
            "unknown parameter 'params.nope'",
        ),
        # A bare name close to a parameter's last part suggests that parameter.
        (
            ["--where", "batch_sise = 8"],
            "unknown field, metric or parameter 'batch_sise' "
            "(did you mean 'params.data.batch_size'?)",
        ),
        (["--best-by", "hmean", "--group-by", "epoch"], "--group-by takes one of"),
    ],
)
def test_unknown_parameter_is_a_usage_error(sweep: Sweep, args: list[str], message: str) -> None:
    result = sweep.invoke("query", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stdout == ""


def test_api_raises_unknown_parameter(sweep: Sweep) -> None:
    with pytest.raises(UnknownNameError) as info:
        ckpt_index.query_index(db=sweep.url, where="hmean > 0 and params.data.batch = 8")
    assert info.value.suggestions[0] == "params.data.batch_size"
    assert info.value.position == 14
    with pytest.raises(WhereError, match="true and false compare only with = or !="):
        ckpt_index.query_index(db=sweep.url, where="params.scheduler.warmup < true")


# --------------------------------------------------------------------------------------------
# The SQL: a list subquery on the (name, value) index, never a scan of param_values


def _plan(
    engine: Any, spec: QuerySpec, names: dict[str, str], selective: frozenset[str]
) -> list[str]:
    stmt = build_query(spec, names, selective)
    compiled = stmt.compile(dialect=sqlite_dialect.dialect())
    params = tuple(compiled.params[name] for name in compiled.positiontup)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, params).all()
    return [row[3] for row in rows]


def _fill(engine: Any, n: int, per_run: int, params: int) -> None:
    """``n`` checkpoint rows in runs of ``per_run`` sharing a set of ``params`` parameters (as
    the sync stores them), written directly: the plan depends on the shape, not on files."""
    from sqlalchemy import insert

    from ckpt_index.index.engine import write_transaction
    from ckpt_index.index.tables import checkpoints, param_sets, param_values

    runs = n // per_run
    with write_transaction(engine) as conn:
        conn.execute(
            insert(param_sets),
            [{"id": r + 1, "digest": f"d{r}", "size": params} for r in range(runs)],
        )
        values = []
        for r in range(runs):
            lr = LRS[r % len(LRS)] / (1 + r % 7)
            named = [("model.optimizer.lr", lr), ("data.batch_size", 8 << (r % 4))]
            named += [(f"cfg.option{k}", k) for k in range(params - len(named))]
            values += [
                {
                    "param_set_id": r + 1,
                    "name": name,
                    "value_type": "float",
                    "numeric_value": float(value),
                    "text_value": repr(float(value)),
                    "source": "sidecar",
                    "overridden": False,
                }
                for name, value in named
            ]
        conn.execute(insert(param_values), values)
        conn.execute(
            insert(checkpoints),
            [
                {
                    "location": "",
                    "checkpoint_path": f"/runs/r{i // per_run}/e{i % per_run}.ckpt",
                    "epoch": i % per_run,
                    "hmean": (i * 7919 % 1000) / 1000,
                    "source": "sidecar",
                    "status": "valid",
                    "checkpoint_exists": True,
                    "indexed_at": "2026-01-01T00:00:00",
                    "param_set_id": i // per_run + 1,
                }
                for i in range(n)
            ],
        )
        conn.exec_driver_sql("ANALYZE")


@pytest.mark.parametrize(
    "where, driver",
    [
        # Many sets match: walk the hmean index, probing each row against the list.
        ("params.model.optimizer.lr < 0.005", "ix_checkpoints_hmean"),
        (
            "params.data.batch_size in (16, 32) and params.model.optimizer.lr >= 0.01",
            "ix_checkpoints_hmean",
        ),
        ("batch_size = 64", "ix_checkpoints_hmean"),
        # Few sets (about 15 of 300) match: their rows are fetched by set and sorted.
        ("params.model.optimizer.lr = 0.1", "ix_checkpoints_param_set_id"),
    ],
)
def test_filter_plan_uses_the_parameter_index(tmp_path: Path, where: str, driver: str) -> None:
    """A few thousand checkpoints with 40 parameters per set: each parameter condition reads
    ix_param_values_name_numeric_value once (a LIST SUBQUERY, from the index alone), and
    param_values is never scanned nor searched once per checkpoint (a correlated subquery)."""
    from ckpt_index.index.engine import open_engine
    from ckpt_index.query.spec import check_names, selective_params

    engine = open_engine("sqlite:///" + str(tmp_path / "plan.db"))
    _fill(engine, 3000, 10, 40)
    spec = QuerySpec(where=where, best_by="hmean")
    with engine.connect() as conn:
        names = check_names(conn, spec)
        selective = selective_params(conn, spec, names)
        rows = ckpt_index.query_index(db=str(tmp_path / "plan.db"), where=where, best_by="hmean")
    plan = _plan(engine, spec, names, selective)
    assert any(driver in line for line in plan), plan
    assert "USING COVERING INDEX ix_param_values_name_numeric_value" in "\n".join(plan)
    shown = "\n".join(plan)
    assert shown.count("LIST SUBQUERY") == where.count("params.") or "LIST SUBQUERY" in shown
    assert "ix_param_values_name_numeric_value" in shown, shown
    assert not any(line.startswith("SCAN param_values") for line in plan), shown
    assert "CORRELATED" not in shown, shown
    assert len(rows) == 1
    engine.dispose()


def test_postgresql_plans_a_selective_parameter_filter_from_its_list(pg_url: str) -> None:
    """On PostgreSQL a filter that selects few sets is an init plan (``= ANY(ARRAY(...))``)
    read once; as a plain ``IN`` the planner made it a semi-join probing param_values per row of
    the hmean index (85 ms at 100,000 checkpoints). The migration gives param_values multivariate
    statistics, without which one name's values are estimated 100x too rare."""
    from sqlalchemy.dialects import postgresql as pg_dialect

    from ckpt_index.index.engine import open_engine
    from ckpt_index.query.spec import check_names, selective_params

    engine = open_engine(pg_url)
    try:
        with engine.connect() as conn:
            stats = set(
                conn.exec_driver_sql(
                    "SELECT stxname FROM pg_statistic_ext WHERE stxrelid = 'param_values'::regclass"
                ).scalars()
            )
        assert stats == {
            "st_param_values_name_numeric_value",
            "st_param_values_name_text_value",
        }
        _fill(
            engine, 10000, 10, 20
        )  # 47 of 1,000 sets match; big enough that walking the hmean index costs more
        spec = QuerySpec(where="params.model.optimizer.lr = 0.1", best_by="hmean")
        with engine.connect() as conn:
            names = check_names(conn, spec)
            selective = selective_params(conn, spec, names)
            assert selective == {"model.optimizer.lr"}
            stmt = build_query(spec, names, selective)
            sql = str(
                stmt.compile(dialect=pg_dialect.dialect(), compile_kwargs={"literal_binds": True})
            )
            plan = "\n".join(conn.exec_driver_sql("EXPLAIN " + sql).scalars())
            best = conn.execute(stmt).mappings().first()
        # The list is read once (an init plan), never looked up per checkpoint row; which index
        # then finds the rows is the planner's choice by size (at 100,000 checkpoints it is
        # ix_checkpoints_param_set_id: scripts/bench_params_query.py prints the plan).
        assert "InitPlan" in plan and "= ANY ($0)" in plan, plan
        assert "pk_param_values" not in plan and "Memoize" not in plan, plan
        # The answer is the best among the matching runs, computed from the rows.
        rows = ckpt_index.query_index(db=pg_url, where="params.model.optimizer.lr = 0.1")
        assert best is not None and best["hmean"] == max(r["hmean"] for r in rows)
    finally:
        engine.dispose()
