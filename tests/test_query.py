"""``ckpt-index query``: best-by, ties, group-by, filters, --where, sort, formats.

Every test builds a small tree whose values it controls, syncs it, and parses ``--format json``.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import random
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers.checkpoints import write_checkpoint
from helpers.postgres import pg_url_with_schema
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.pool import NullPool

from ckpt_index.cli import cli
from ckpt_index.query.spec import QuerySpec, build_query
from ckpt_index.sidecar.files import checkpoint_path_for, read_sidecar, sidecar_path_for
from ckpt_index.tools.demo import make_tree

#: The fields every JSON object carries, whatever the row (None when unknown).
RECORD_FIELDS = (
    "checkpoint_path",
    "sidecar_path",
    "exp_name",
    "architecture",
    "encoder",
    "decoder",
    "head",
    "loss",
    "epoch",
    "global_step",
    "training_phase",
    "max_epochs",
    "precision",
    "recall",
    "hmean",
    "validation_loss",
    "metrics",
    "monitor",
    "mode",
    "save_top_k",
    "save_last",
    "created_at",
    "hydra_config_path",
    "wandb_run_id",
    "source",
    "checkpoint_exists",
)

_SHORT = {
    "exp": "exp_name",
    "hmean": "metrics.hmean",
    "epoch": "training.epoch",
    "step": "training.global_step",
    "phase": "training.training_phase",
    "arch": "model.architecture",
    "encoder": "model.encoder.model_name",
    "extra": "metrics.additional_metrics",
}


def ckpt(outputs: Path, rel: str, **values: Any) -> Path:
    """Write ``outputs/rel`` and its sidecar; short keys (hmean, epoch, step, encoder, arch,
    phase, exp, extra) or dotted ones. additional_metrics default to none, so each test knows
    exactly which metrics exist."""
    values.setdefault("extra", {})
    changes = {_SHORT.get(k, k): v for k, v in values.items()}
    return write_checkpoint(outputs / rel, **changes)


def sync(invoke: Callable, outputs: Path) -> None:
    result = invoke("sync", str(outputs))
    assert result.exit_code == 0, result.output


def query_json(invoke: Callable, *args: str) -> list[dict[str, Any]]:
    result = invoke("query", *args, "--format", "json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def query_paths(invoke: Callable, *args: str) -> list[str]:
    """Paths selected (empty when nothing matches; then the exit status must be 1)."""
    result = invoke("query", *args, "--format", "json")
    if result.exit_code == 1:
        assert "no checkpoint matches" in result.stderr
        assert result.stdout == "[]\n"  # still a JSON document
        return []
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return [r["checkpoint_path"] for r in json.loads(result.stdout)]


def best_path(invoke: Callable, *args: str) -> str:
    rows = query_json(invoke, "--best-by", *args)
    assert len(rows) == 1
    return rows[0]["checkpoint_path"]


# --------------------------------------------------------------------------------------------
# Every test runs on both backends. A tree that its tests only read is written and synced once per
# module and backend (``shared_index``); a test that changes its tree has its own (``db_url``).


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared_index(request, tmp_path_factory):
    """Make empty indexes on one backend for read-only trees; dropped at the end of the module."""
    admin = request.getfixturevalue("pg_admin_engine") if request.param == "postgresql" else None
    schemas: list[str] = []

    def make() -> str:
        if admin is None:
            return "sqlite:///" + str(tmp_path_factory.mktemp("index") / "index.db")
        schema = f"ckpt_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        schemas.append(schema)
        return pg_url_with_schema(schema)

    yield make
    for schema in schemas:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def _invoker(url: str) -> Callable[..., Any]:
    runner = CliRunner()

    def run(*args: str):
        argv = list(args)
        if argv and argv[0] not in ("validate", "demo", "convert") and "--db" not in argv:
            argv += ["--db", url]
        return runner.invoke(cli, argv, catch_exceptions=False)

    return run


class Rows(list):
    """What a read-only tree was made of, with ``invoke``: the CLI on its index (and ``url``)."""


class Paths(dict):
    """Like :class:`Rows`, keyed by name."""


def shared_tree(make_index: Callable[[], str], tmp_path_factory, build: Callable[[Path], Any]):
    outputs = tmp_path_factory.mktemp("tree") / "outputs"
    outputs.mkdir()
    made = build(outputs)
    tree = Paths(made) if isinstance(made, dict) else Rows(made)
    tree.url = make_index()
    tree.invoke = _invoker(tree.url)
    sync(tree.invoke, outputs)
    return tree


# --------------------------------------------------------------------------------------------
# --best-by: direction


@pytest.fixture(scope="module")
def three(shared_index, tmp_path_factory):
    """Three checkpoints with hmean, val/loss and a metric only in additional_metrics."""

    def build(outputs: Path) -> dict[str, str]:
        paths = {
            "low": ckpt(
                outputs,
                "e/low.ckpt",
                hmean=0.55,
                epoch=1,
                extra={"val/loss": 0.09, "cleval/custom": 0.3},
            ),
            "mid": ckpt(
                outputs,
                "e/mid.ckpt",
                hmean=0.75,
                epoch=2,
                extra={"val/loss": 0.02, "cleval/custom": 0.9},
            ),
            "high": ckpt(
                outputs,
                "e/high.ckpt",
                hmean=0.95,
                epoch=3,
                extra={"val/loss": 0.05, "cleval/custom": 0.1},
            ),
        }
        return {k: str(v) for k, v in paths.items()}

    return shared_tree(shared_index, tmp_path_factory, build)


@pytest.mark.parametrize(
    "best_by, winner",
    [
        ("hmean", "high"),
        ("hmean:max", "high"),
        ("hmean:min", "low"),
        ("HMEAN:MIN".lower(), "low"),
        ("val/loss", "mid"),  # a name containing "loss" defaults to min
        ("val/loss:min", "mid"),
        ("val/loss:max", "low"),
        ("cleval/custom", "mid"),  # only in additional_metrics; default max
        ("cleval/custom:min", "high"),
        ("epoch", "high"),
        ("epoch:min", "low"),
    ],
)
def test_best_by_direction(three, best_by: str, winner: str) -> None:
    assert best_path(three.invoke, best_by) == three[winner]


def test_best_by_unknown_metric_is_a_usage_error(three) -> None:
    """A metric no checkpoint in the index logged is a usage error (tests/test_unknown_names.py
    has the suggestions); a known metric that no row passing the filters has matches nothing."""
    result = three.invoke("query", "--best-by", "no/such/metric")
    assert result.exit_code == 2
    assert "unknown field or metric 'no/such/metric'" in result.stderr
    result = three.invoke("query", "--best-by", "val/loss", "--encoder", "nope")
    assert result.exit_code == 1
    assert "no checkpoint matches" in result.stderr


def test_best_by_shows_metric_value_of_winner(three) -> None:
    (row,) = query_json(three.invoke, "--best-by", "val/loss")
    assert row["metrics"]["val/loss"] == pytest.approx(0.02)
    assert row["hmean"] == pytest.approx(0.75)


# --------------------------------------------------------------------------------------------
# --best-by: ties broken by higher epoch, then higher global_step, then path


METRICS = [
    # (best-by name, how to set its value)
    ("hmean", lambda v: {"hmean": v}),
    ("cleval/custom", lambda v: {"extra": {"cleval/custom": v}}),
]


@pytest.mark.parametrize("direction", ["max", "min"])
@pytest.mark.parametrize("metric, setter", METRICS, ids=[m for m, _ in METRICS])
def test_tie_broken_by_higher_epoch(outputs, invoke_db, metric, setter, direction) -> None:
    tied = 0.8
    other = 0.7 if direction == "max" else 0.9  # worse in the requested direction
    ckpt(outputs, "a/e3.ckpt", epoch=3, step=900, **setter(tied))
    winner = ckpt(
        outputs, "b/e5.ckpt", epoch=5, step=100, **setter(tied)
    )  # lower step, later epoch
    ckpt(outputs, "c/e9.ckpt", epoch=9, step=5000, **setter(other))  # higher epoch, worse value
    sync(invoke_db, outputs)
    assert best_path(invoke_db, f"{metric}:{direction}") == str(winner)


@pytest.mark.parametrize("direction", ["max", "min"])
@pytest.mark.parametrize("metric, setter", METRICS, ids=[m for m, _ in METRICS])
def test_tie_broken_by_higher_global_step(outputs, invoke_db, metric, setter, direction) -> None:
    ckpt(outputs, "a/s100.ckpt", epoch=5, step=100, **setter(0.8))
    winner = ckpt(outputs, "b/s200.ckpt", epoch=5, step=200, **setter(0.8))
    ckpt(outputs, "c/s050.ckpt", epoch=5, step=50, **setter(0.8))
    sync(invoke_db, outputs)
    assert best_path(invoke_db, f"{metric}:{direction}") == str(winner)


@pytest.mark.parametrize("direction", ["max", "min"])
@pytest.mark.parametrize("metric, setter", METRICS, ids=[m for m, _ in METRICS])
def test_tie_broken_by_path(outputs, invoke_db, metric, setter, direction) -> None:
    # "z" is indexed first, so the winner "a" has the higher row id: the path decides, not the id.
    ckpt(outputs, "z/x.ckpt", epoch=5, step=200, **setter(0.8))
    sync(invoke_db, outputs)
    winner = ckpt(outputs, "a/x.ckpt", epoch=5, step=200, **setter(0.8))
    ckpt(outputs, "m/x.ckpt", epoch=5, step=200, **setter(0.8))
    sync(invoke_db, outputs)
    assert best_path(invoke_db, f"{metric}:{direction}") == str(winner)


@pytest.mark.parametrize("direction", ["max", "min"])
@pytest.mark.parametrize("metric", ["hmean", "cleval/custom"])
def test_null_metric_never_wins(outputs, invoke_db, metric, direction) -> None:
    # The row without the metric has the highest epoch, step and the first path: it would win
    # every tie-break and sorts first ascending in SQLite, so only the NULL rule keeps it out.
    none = {"hmean": None} if metric == "hmean" else {}
    ckpt(outputs, "a/none.ckpt", epoch=99, step=99999, **none)
    lo = ckpt(
        outputs,
        "b/lo.ckpt",
        epoch=1,
        step=10,
        **({"hmean": 0.5} if metric == "hmean" else {"extra": {"cleval/custom": 0.5}}),
    )
    hi = ckpt(
        outputs,
        "c/hi.ckpt",
        epoch=2,
        step=20,
        **({"hmean": 0.7} if metric == "hmean" else {"extra": {"cleval/custom": 0.7}}),
    )
    sync(invoke_db, outputs)
    expected = hi if direction == "max" else lo
    assert best_path(invoke_db, f"{metric}:{direction}") == str(expected)


def test_only_null_metric_matches_nothing(outputs, invoke_db) -> None:
    ckpt(outputs, "a/none.ckpt", hmean=None)
    sync(invoke_db, outputs)
    for best_by in ("hmean", "hmean:min"):
        result = invoke_db("query", "--best-by", best_by)
        assert result.exit_code == 1, result.output
        assert "no checkpoint matches" in result.stderr


# --------------------------------------------------------------------------------------------
# --group-by


def test_group_by_exp_name_best_per_experiment(outputs, invoke_db) -> None:
    expected_max, expected_loss = {}, {}
    rows = [
        # exp, file, hmean, epoch, step, val/loss
        ("exp_a", "a1", 0.60, 1, 10, 0.05),
        ("exp_a", "a2", 0.80, 2, 20, 0.07),  # best hmean in a
        ("exp_a", "a3", 0.70, 3, 30, 0.01),  # best loss in a
        ("exp_b", "b1", 0.90, 1, 10, 0.04),  # best hmean in b (tie with b2, lower epoch)...
        ("exp_b", "b2", 0.90, 4, 40, 0.04),  # ...so b2 wins hmean; b2 wins the loss tie too
        ("exp_c", "c1", 0.40, 7, 70, 0.30),  # single checkpoint
        ("exp_d", "d1", None, 7, 70, None),  # no hmean, no val/loss anywhere in d: no row
    ]
    for exp, name, hmean, epoch, step, loss in rows:
        extra = {} if loss is None else {"val/loss": loss}
        ckpt(
            outputs, f"{exp}/{name}.ckpt", exp=exp, hmean=hmean, epoch=epoch, step=step, extra=extra
        )
    expected_max = {"exp_a": "a2", "exp_b": "b2", "exp_c": "c1"}
    expected_loss = {"exp_a": "a3", "exp_b": "b2", "exp_c": "c1"}
    sync(invoke_db, outputs)

    got = query_json(invoke_db, "--best-by", "hmean", "--group-by", "exp_name")
    assert len(got) == 3
    assert {r["exp_name"]: Path(r["checkpoint_path"]).stem for r in got} == expected_max
    # Ordered by the metric, best first.
    assert [r["exp_name"] for r in got] == ["exp_b", "exp_a", "exp_c"]

    got = query_json(invoke_db, "--best-by", "val/loss", "--group-by", "exp_name")
    assert {r["exp_name"]: Path(r["checkpoint_path"]).stem for r in got} == expected_loss
    assert [r["exp_name"] for r in got] == ["exp_a", "exp_b", "exp_c"]

    got = query_json(invoke_db, "--best-by", "hmean:min", "--group-by", "exp_name")
    assert {r["exp_name"]: Path(r["checkpoint_path"]).stem for r in got} == {
        "exp_a": "a1",
        "exp_b": "b2",
        "exp_c": "c1",
    }

    got = query_json(invoke_db, "--best-by", "hmean", "--group-by", "exp_name", "--limit", "2")
    assert [r["exp_name"] for r in got] == ["exp_b", "exp_a"]


def test_group_by_without_best_by_is_usage_error(outputs, invoke_db) -> None:
    ckpt(outputs, "a/x.ckpt")
    sync(invoke_db, outputs)
    result = invoke_db("query", "--group-by", "exp_name")
    assert result.exit_code == 2
    assert "--best-by" in result.stderr


# --------------------------------------------------------------------------------------------
# Filters


FILTER_ROWS = [
    # rel path, exp, arch, encoder, phase, epoch, hmean
    ("exp_a/c1.ckpt", "exp_a", "dbnet", "resnet50", "training", 1, 0.61),
    ("exp_a/c2.ckpt", "exp_a", "dbnet", "resnet50", "training", 5, 0.82),
    ("expXa/c1.ckpt", "expXa", "dbnet", "resnet18", "finetuning", 3, 0.77),
    ("exp%b/c1.ckpt", "exp%b", "craft", "resnet50", "training", 8, 0.91),
    ("expZZb/c1.ckpt", "expZZb", "craft", "mobilenetv3", "validation", 2, 0.70),
    ("other_run/c1.ckpt", "other_run", "pan", "resnet18", "training", 10, 0.88),
    ("other_run/c2.ckpt", "other_run", "pan", "resnet18", "finetuning", 12, 0.86),
]


@pytest.fixture(scope="module")
def filter_tree(shared_index, tmp_path_factory):
    def build(outputs: Path) -> list[dict[str, Any]]:
        rows = []
        for rel, exp, arch, enc, phase, epoch, hmean in FILTER_ROWS:
            path = ckpt(
                outputs,
                rel,
                exp=exp,
                arch=arch,
                encoder=enc,
                phase=phase,
                epoch=epoch,
                step=epoch * 100,
                hmean=hmean,
            )
            rows.append(
                dict(
                    path=str(path),
                    exp=exp,
                    arch=arch,
                    encoder=enc,
                    phase=phase,
                    epoch=epoch,
                    hmean=hmean,
                )
            )
        return rows

    return shared_tree(shared_index, tmp_path_factory, build)


FILTERS = [
    (["--encoder", "resnet50"], lambda r: r["encoder"] == "resnet50"),
    (["--encoder", "resnet5"], lambda r: False),  # exact, not a prefix
    (["--architecture", "craft"], lambda r: r["arch"] == "craft"),
    (["--phase", "finetuning"], lambda r: r["phase"] == "finetuning"),
    (["--phase", "validation"], lambda r: r["phase"] == "validation"),
    (["--min-epoch", "5"], lambda r: r["epoch"] >= 5),
    (["--max-epoch", "3"], lambda r: r["epoch"] <= 3),
    (["--min-epoch", "3", "--max-epoch", "8"], lambda r: 3 <= r["epoch"] <= 8),
    (["--min-epoch", "9", "--max-epoch", "8"], lambda r: False),
    (
        ["--encoder", "resnet18", "--phase", "training"],
        lambda r: r["encoder"] == "resnet18" and r["phase"] == "training",
    ),
    (
        ["--architecture", "dbnet", "--encoder", "resnet50", "--min-epoch", "2"],
        lambda r: r["arch"] == "dbnet" and r["encoder"] == "resnet50" and r["epoch"] >= 2,
    ),
]


@pytest.mark.parametrize("args, keep", FILTERS, ids=[" ".join(a) for a, _ in FILTERS])
def test_filters(filter_tree, args, keep) -> None:
    expected = sorted(r["path"] for r in filter_tree if keep(r))
    assert sorted(query_paths(filter_tree.invoke, *args)) == expected


@pytest.mark.parametrize("args, keep", FILTERS, ids=[" ".join(a) for a, _ in FILTERS])
@pytest.mark.parametrize("best_by", ["hmean", "hmean:min"])
def test_filters_with_best_by(filter_tree, args, keep, best_by) -> None:
    kept = [r for r in filter_tree if keep(r)]
    sign = -1 if best_by == "hmean" else 1
    expected = (
        [min(kept, key=lambda r: (sign * r["hmean"], -r["epoch"], r["path"]))["path"]]
        if kept
        else []
    )
    assert query_paths(filter_tree.invoke, "--best-by", best_by, *args) == expected


@pytest.mark.parametrize(
    "pattern",
    [
        "exp_a",
        "exp?a",
        "exp%b",
        "exp*b",
        "exp*",
        "*_*",
        "*%*",
        "*",
        "other_run",
        "exp_",
        "exp%",
        "?xp_a",
        "exp[_]a",
        "nomatch*",
        "exp\\_a",
    ],
)
def test_exp_glob(filter_tree, pattern) -> None:
    """``*`` and ``?`` are wildcards; ``_`` and ``%`` (and ``\\``) match only themselves."""
    names = {r["exp"] for r in filter_tree}
    expected_names = {n for n in names if fnmatch.fnmatchcase(n, pattern.replace("[", "[[]"))}
    expected = sorted(r["path"] for r in filter_tree if r["exp"] in expected_names)
    assert sorted(query_paths(filter_tree.invoke, "--exp", pattern)) == expected


def test_exp_glob_literal_underscore_and_percent(filter_tree) -> None:
    # Spelled out, in case the parametrised oracle above ever hid a mistake.
    by_exp = lambda paths: sorted({Path(p).parent.name for p in paths})  # noqa: E731
    assert by_exp(query_paths(filter_tree.invoke, "--exp", "exp_a")) == ["exp_a"]
    assert by_exp(query_paths(filter_tree.invoke, "--exp", "exp%b")) == ["exp%b"]
    assert by_exp(query_paths(filter_tree.invoke, "--exp", "exp?a")) == ["expXa", "exp_a"]
    assert by_exp(query_paths(filter_tree.invoke, "--exp", "exp*b")) == ["exp%b", "expZZb"]


def test_exp_glob_with_best_by(filter_tree) -> None:
    assert Path(best_path(filter_tree.invoke, "hmean", "--exp", "exp*")).parent.name == "exp%b"
    assert Path(best_path(filter_tree.invoke, "hmean", "--exp", "exp?a")).parent.name == "exp_a"
    assert Path(best_path(filter_tree.invoke, "hmean:min", "--exp", "other*")).name == "c2.ckpt"


# --------------------------------------------------------------------------------------------
# --where


@pytest.fixture(scope="module")
def where_tree(shared_index, tmp_path_factory):
    def build(outputs: Path) -> list[dict[str, Any]]:
        specs = [
            # rel, encoder, arch, phase, epoch, hmean, val/loss (None: not logged)
            ("a/1.ckpt", "resnet50", "dbnet", "training", 1, 0.85, 0.025),
            ("a/2.ckpt", "resnet50", "dbnet", "training", 6, 0.75, 0.040),
            ("b/1.ckpt", "resnet18", "craft", "finetuning", 2, 0.90, 0.020),
            ("b/2.ckpt", "mobilenetv3", "pan", "training", 9, 0.65, None),
            ("c/1.ckpt", "resnet50", "pan", "validation", 4, 0.95, 0.031),
        ]
        rows = []
        for rel, enc, arch, phase, epoch, hmean, loss in specs:
            extra = {} if loss is None else {"val/loss": loss}
            path = ckpt(
                outputs,
                rel,
                exp=f"exp-{rel[0]}",
                encoder=enc,
                arch=arch,
                phase=phase,
                epoch=epoch,
                hmean=hmean,
                extra=extra,
            )
            rows.append(
                dict(
                    path=str(path),
                    encoder=enc,
                    arch=arch,
                    phase=phase,
                    epoch=epoch,
                    hmean=hmean,
                    loss=loss,
                )
            )
        return rows

    return shared_tree(shared_index, tmp_path_factory, build)


def _lt(a, b) -> bool:
    return a is not None and a < b


WHERE_CASES = [
    (
        "hmean > 0.8 and encoder = 'resnet50'",
        lambda r: r["hmean"] > 0.8 and r["encoder"] == "resnet50",
    ),
    ("val/loss < 0.03", lambda r: _lt(r["loss"], 0.03)),
    ("val/loss >= 0.03", lambda r: r["loss"] is not None and r["loss"] >= 0.03),
    (
        "not val/loss < 0.03",
        lambda r: r["loss"] is not None and not r["loss"] < 0.03,
    ),  # NULL: neither
    ("val/loss is null", lambda r: r["loss"] is None),
    ("metrics.val/loss < 0.03", lambda r: _lt(r["loss"], 0.03)),
    (
        "encoder in ('resnet18', 'mobilenetv3')",
        lambda r: r["encoder"] in ("resnet18", "mobilenetv3"),
    ),
    ("encoder not in ('resnet50')", lambda r: r["encoder"] != "resnet50"),
    ("epoch in (1, 9)", lambda r: r["epoch"] in (1, 9)),
    ("encoder like 'resnet%'", lambda r: r["encoder"].startswith("resnet")),
    ("encoder like 'resnet_8'", lambda r: r["encoder"] == "resnet18"),
    ("architecture not like 'p%'", lambda r: not r["arch"].startswith("p")),
    ("not encoder = 'resnet50'", lambda r: r["encoder"] != "resnet50"),
    ("not (hmean > 0.8 or epoch >= 6)", lambda r: not (r["hmean"] > 0.8 or r["epoch"] >= 6)),
    (
        "(hmean > 0.88 or epoch >= 6) and training_phase = 'training'",
        lambda r: (r["hmean"] > 0.88 or r["epoch"] >= 6) and r["phase"] == "training",
    ),
    (
        "hmean > 0.88 or epoch >= 6 and training_phase = 'training'",  # and binds tighter
        lambda r: r["hmean"] > 0.88 or (r["epoch"] >= 6 and r["phase"] == "training"),
    ),
    (
        "hmean > 0.8 AND encoder = 'resnet50'",
        lambda r: r["hmean"] > 0.8 and r["encoder"] == "resnet50",
    ),
    (
        "epoch != 1 and epoch <> 2 and epoch <= 6",
        lambda r: r["epoch"] not in (1, 2) and r["epoch"] <= 6,
    ),
    ("encoder = 'RESNET50'", lambda r: False),  # = is exact
    ("val/loss < 0.03 or hmean >= 0.9", lambda r: _lt(r["loss"], 0.03) or r["hmean"] >= 0.9),
]


@pytest.mark.parametrize("expr, keep", WHERE_CASES, ids=[e for e, _ in WHERE_CASES])
def test_where(where_tree, expr, keep) -> None:
    expected = sorted(r["path"] for r in where_tree if keep(r))
    assert sorted(query_paths(where_tree.invoke, "--where", expr)) == expected


def test_where_with_best_by_and_filters(where_tree) -> None:
    # Best val/loss among resnet50 with hmean > 0.8: a/1 (0.025) beats c/1 (0.031).
    got = best_path(
        where_tree.invoke, "val/loss", "--where", "hmean > 0.8", "--encoder", "resnet50"
    )
    assert got.endswith("/a/1.ckpt")
    got = best_path(where_tree.invoke, "hmean", "--where", "val/loss < 0.03")
    assert got.endswith("/b/1.ckpt")


@pytest.mark.parametrize(
    "expr, position",
    [
        ("hmean >> 0.8", 7),
        ("hmean > 0.8 and (encoder = 'resnet50'", 16),
        ("hmean > 0.8 andd epoch > 1", 12),
        ("encoder = resnet50", 10),
        ("hmean > 0.8; DROP TABLE checkpoints", 11),
        ("hmean > ", 8),
        ("encoder = 'resnet50", 10),
        ("(hmean > 0.8))", 13),
        ("epoch in ()", 10),
        ("and hmean > 1", 0),
    ],
)
def test_malformed_where_exits_2_with_caret(where_tree, expr, position) -> None:
    result = where_tree.invoke("query", "--where", expr)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    # The expression is echoed, and the caret below it points at the bad token.
    (i,) = [n for n, line in enumerate(lines) if line.strip() == expr.strip()]
    echoed, caret = lines[i], lines[i + 1]
    assert caret.strip() == "^"
    assert caret.index("^") - echoed.index(expr.strip()[0]) == position
    assert f"position {position}" in result.stderr


def _table_state(db_url: str) -> tuple[int, int, list]:
    """Row counts and the schema's tables and views, read around ckpt-index."""
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            n = conn.execute(text("SELECT count(*) FROM checkpoints")).scalar()
            m = conn.execute(text("SELECT count(*) FROM checkpoint_metrics")).scalar()
            insp = inspect(conn)
            objects = sorted(insp.get_table_names() + insp.get_view_names())
    finally:
        engine.dispose()
    return n, m, objects


@pytest.mark.parametrize(
    "expr",
    [
        "encoder = 'x'' or ''1''=''1'",
        "encoder = 'x'' or 1=1 --'",
        "encoder = 'resnet50''; DROP TABLE checkpoints; --'",
        "encoder like '%'' or ''%'' = ''%'",
        "encoder in ('x'') or (''1''=''1')",
    ],
)
def test_where_injection_selects_nothing(where_tree, expr) -> None:
    before = _table_state(where_tree.url)
    result = where_tree.invoke("query", "--where", expr)
    assert result.exit_code == 1, result.output
    assert "no checkpoint matches" in result.stderr
    assert _table_state(where_tree.url) == before
    assert before[0] == len(where_tree)


@pytest.mark.parametrize(
    "expr",
    ['"hmean; DROP TABLE checkpoints" > 0', '"hmean) or (1=1" > 0', '"1=1 or hmean" > 0'],
)
def test_where_injection_in_a_name_is_an_unknown_name(where_tree, expr) -> None:
    """SQL in a quoted name is a name no index holds: refused before any query, nothing run."""
    before = _table_state(where_tree.url)
    result = where_tree.invoke("query", "--where", expr)
    assert result.exit_code == 2, result.output
    name = expr[1 : expr.rindex('"')]
    assert f"unknown field or metric {name!r}" in result.stderr
    assert _table_state(where_tree.url) == before


def test_where_injection_text_is_matched_literally(outputs, invoke_db, db_url) -> None:
    """Values and names that look like SQL select exactly the row that literally has them."""
    odd = ckpt(
        outputs, "odd/x.ckpt", encoder="x' or '1'='1", extra={"hmean; DROP TABLE checkpoints": 1.5}
    )
    ckpt(outputs, "plain/x.ckpt", encoder="resnet50", extra={"val/loss": 0.1})
    sync(invoke_db, outputs)
    before = _table_state(db_url)
    assert query_paths(invoke_db, "--where", "encoder = 'x'' or ''1''=''1'") == [str(odd)]
    assert query_paths(invoke_db, "--where", '"hmean; DROP TABLE checkpoints" > 0') == [str(odd)]
    assert query_paths(invoke_db, "--encoder", "x' or '1'='1") == [str(odd)]
    assert best_path(invoke_db, "hmean; DROP TABLE checkpoints") == str(odd)
    assert _table_state(db_url) == before == (2, before[1], before[2])


# --------------------------------------------------------------------------------------------
# --sort, --limit


@pytest.fixture(scope="module")
def sort_tree(shared_index, tmp_path_factory):
    def build(outputs: Path) -> list[dict[str, Any]]:
        rng = random.Random(7)
        rows = []
        for i in range(25):
            enc = ("resnet50", "resnet18", "mobilenetv3")[i % 3]
            hmean = round(rng.choice([0.5, 0.6, 0.7, 0.8]) + rng.choice([0, 0.01]), 4)  # many ties
            loss = None if i % 5 == 0 else round(rng.uniform(0.01, 0.1), 4)
            extra = {} if loss is None else {"val/loss": loss}
            path = ckpt(
                outputs,
                f"exp{i % 4}/c{i:02d}.ckpt",
                exp=f"exp{i % 4}",
                encoder=enc,
                epoch=i % 7,
                step=i * 10,
                hmean=hmean,
                extra=extra,
            )
            rows.append(dict(path=str(path), encoder=enc, epoch=i % 7, hmean=hmean, loss=loss))
        return rows

    return shared_tree(shared_index, tmp_path_factory, build)


def _nulls_last(value, descending=False):
    if value is None:
        return (1, 0)
    return (0, -value if descending else value)


SORTS = [
    (["--sort", "hmean:desc"], lambda r: (_nulls_last(r["hmean"], True), r["path"])),
    (["--sort", "hmean"], lambda r: (_nulls_last(r["hmean"]), r["path"])),
    (["--sort", "hmean:asc"], lambda r: (_nulls_last(r["hmean"]), r["path"])),
    (
        ["--sort", "epoch:desc", "--sort", "hmean:asc"],
        lambda r: (-r["epoch"], r["hmean"], r["path"]),
    ),
    (
        ["--sort", "encoder", "--sort", "hmean:desc"],
        lambda r: (r["encoder"], -r["hmean"], r["path"]),
    ),
    (["--sort", "val/loss"], lambda r: (_nulls_last(r["loss"]), r["path"])),
    (["--sort", "val/loss:desc"], lambda r: (_nulls_last(r["loss"], True), r["path"])),
    ([], lambda r: r["path"]),
]


@pytest.mark.parametrize("args, key", SORTS, ids=[" ".join(a) or "default" for a, _ in SORTS])
def test_sort(sort_tree, args, key) -> None:
    expected = [r["path"] for r in sorted(sort_tree, key=key)]
    assert query_paths(sort_tree.invoke, *args) == expected
    assert query_paths(sort_tree.invoke, *args, "--limit", "4") == expected[:4]


def test_without_limit_every_match_is_printed(sort_tree, monkeypatch) -> None:
    # pytest-xdist workers run with LINES=24 and COLUMNS=80 set, which the table honours.
    monkeypatch.delenv("LINES", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    assert len(query_json(sort_tree.invoke)) == 25
    assert len(query_json(sort_tree.invoke, "--limit", "100")) == 25
    # The table too, when stdout is not a terminal.
    result = sort_tree.invoke("query")
    assert result.exit_code == 0
    assert len(result.stdout.strip().splitlines()) == 1 + 25
    assert "more" not in result.stdout


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["--best-by", "hmean"],
        ["--sort", "hmean:desc"],
        ["--best-by", "hmean", "--group-by", "exp_name"],
    ],
)
def test_limit_zero_prints_no_record(sort_tree, extra) -> None:
    """--limit N is 'at most N results': --limit 0 prints none, whatever else is asked."""
    result = sort_tree.invoke("query", *extra, "--limit", "0", "--format", "paths")
    assert result.exit_code in (0, 1), result.output
    assert result.stdout.strip() == ""


# --------------------------------------------------------------------------------------------
# Formats


@pytest.fixture(scope="module")
def format_tree(shared_index, tmp_path_factory):
    def build(outputs: Path) -> list[Path]:
        paths = [
            ckpt(
                outputs,
                "exp-one/checkpoints/epoch-03_step-000300.ckpt",
                exp="exp-one",
                epoch=3,
                step=300,
                hmean=0.81,
                extra={"val/loss": 0.021, "train/loss": 0.5},
            ),
            ckpt(
                outputs,
                "exp-two/checkpoints/epoch-07_step-000700.ckpt",
                exp="exp-two",
                epoch=7,
                step=700,
                hmean=0.92,
                encoder="resnet18",
                extra={"val/loss": 0.011, "cleval/x": 0.3},
            ),
            ckpt(
                outputs,
                "exp,three/checkpoints/last.ckpt",
                exp='exp,"three"',
                epoch=9,
                step=900,
                hmean=None,
                extra={},
            ),
        ]
        return paths

    return shared_tree(shared_index, tmp_path_factory, build)


def test_json_fields(format_tree) -> None:
    rows = query_json(format_tree.invoke)
    assert [r["checkpoint_path"] for r in rows] == sorted(str(p) for p in format_tree)
    for row in rows:
        missing = [f for f in RECORD_FIELDS if f not in row]
        assert not missing, missing
        assert Path(row["checkpoint_path"]).is_absolute()
        assert row["sidecar_path"] == str(sidecar_path_for(row["checkpoint_path"]))
        assert row["source"] == "sidecar"
        assert row["checkpoint_exists"] is True
    one = next(r for r in rows if r["exp_name"] == "exp-one")
    # Values from the seed document, untouched by the test.
    assert one["architecture"] == "dbnet"
    assert one["encoder"] == "resnet50"
    assert (one["decoder"], one["head"], one["loss"]) == ("pan_decoder", "db_head", "db_loss")
    assert (one["epoch"], one["global_step"]) == (3, 300)
    assert isinstance(one["epoch"], int) and isinstance(one["global_step"], int)
    assert one["training_phase"] == "training"
    assert one["max_epochs"] == 50
    assert (one["precision"], one["recall"], one["hmean"]) == (0.8542, 0.8321, 0.81)
    assert one["validation_loss"] == 0.0234
    assert (one["monitor"], one["mode"], one["save_top_k"], one["save_last"]) == (
        "val/hmean",
        "max",
        3,
        True,
    )
    assert one["created_at"].startswith("2025-10-18T14:32:15")
    assert one["hydra_config_path"] == "outputs/dbnet-resnet50-pan/.hydra/config.yaml"
    assert one["wandb_run_id"] == "abc123def456"
    # All metrics by name: the canonical ones and every additional metric.
    assert one["metrics"] == {
        "precision": 0.8542,
        "recall": 0.8321,
        "hmean": 0.81,
        "validation_loss": 0.0234,
        "val/loss": 0.021,
        "train/loss": 0.5,
    }
    three = next(r for r in rows if r["exp_name"] == 'exp,"three"')
    assert three["hmean"] is None
    assert "hmean" not in three["metrics"]


@pytest.mark.parametrize("args", [[], ["--best-by", "hmean"], ["--sort", "epoch:desc"]])
def test_jsonl_equals_json(format_tree, args) -> None:
    rows = query_json(format_tree.invoke, *args)
    result = format_tree.invoke("query", *args, "--format", "jsonl")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == len(rows)
    assert [json.loads(line) for line in lines] == rows


@pytest.mark.parametrize("args", [[], ["--best-by", "hmean"], ["--sort", "epoch:desc"]])
def test_paths_format(format_tree, args) -> None:
    rows = query_json(format_tree.invoke, *args)
    result = format_tree.invoke("query", *args, "--format", "paths")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines == [r["checkpoint_path"] for r in rows]
    assert all(Path(line).is_absolute() and Path(line).exists() for line in lines)


@pytest.mark.parametrize("args", [[], ["--best-by", "hmean"]])
def test_csv_format(format_tree, args) -> None:
    rows = query_json(format_tree.invoke, *args)
    result = format_tree.invoke("query", *args, "--format", "csv")
    assert result.exit_code == 0
    reader = csv.DictReader(io.StringIO(result.stdout))
    header = reader.fieldnames
    records = list(reader)
    assert len(records) == len(rows)
    fields = [f for f in RECORD_FIELDS if f != "metrics"]
    assert set(fields) <= set(header)
    metric_names = sorted({n for r in rows for n in r["metrics"]} - set(fields))
    assert set(metric_names) <= set(header)
    if not args:
        assert {"val/loss", "train/loss", "cleval/x"} <= set(header)
    for rec, row in zip(records, rows, strict=True):
        assert rec["checkpoint_path"] == row["checkpoint_path"]
        assert rec["exp_name"] == row["exp_name"]  # commas and quotes survive
        assert int(rec["epoch"]) == row["epoch"]
        assert (float(rec["hmean"]) if rec["hmean"] else None) == row["hmean"]
        for name in metric_names:
            value = row["metrics"].get(name)
            assert (float(rec[name]) if rec[name] else None) == value


def test_table_format(format_tree) -> None:
    rows = query_json(format_tree.invoke)
    result = format_tree.invoke("query")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1 + len(rows)
    header = lines[0].split()
    assert {"hmean", "epoch", "exp_name", "encoder", "path"} <= set(header)
    for line, row in zip(lines[1:], rows, strict=True):
        assert row["exp_name"] in line
        assert Path(row["checkpoint_path"]).name in line
    # --best-by a metric: the table shows that metric.
    result = format_tree.invoke("query", "--best-by", "val/loss")
    assert result.exit_code == 0
    header, line = result.stdout.splitlines()
    assert "val/loss" in header.split()
    assert "0.0110" in line


# --------------------------------------------------------------------------------------------
# Exit statuses


def test_nothing_matches_exits_1_with_message_on_stderr(format_tree) -> None:
    for args in (
        ["--encoder", "nope"],
        ["--best-by", "hmean", "--min-epoch", "100"],
        ["--where", "hmean > 2"],
        ["--exp", "zzz*"],
    ):
        for fmt in ("table", "json", "jsonl", "csv", "paths"):
            result = format_tree.invoke("query", *args, "--format", fmt)
            assert result.exit_code == 1, (args, fmt, result.output)
            # JSON is still a document ([]), CSV still has its header; the rest print nothing.
            if fmt == "json":
                assert result.stdout == "[]\n"
            elif fmt == "csv":
                assert result.stdout.startswith("location,checkpoint_path,")
                assert result.stdout.count("\n") == 1
            else:
                assert result.stdout == ""
            assert result.stderr.strip()


def test_empty_index_exits_1(outputs, invoke_db) -> None:
    sync(invoke_db, outputs)
    result = invoke_db("query", "--best-by", "hmean")
    assert result.exit_code == 1
    assert result.stderr.strip()


@pytest.mark.parametrize(
    "args",
    [
        ["--format", "xml"],
        ["--where", "hmean >"],
        ["--where", "hmean > 0.5 or"],
        ["--limit", "-1"],
        ["--limit", "many"],
        ["--group-by", "foo", "--best-by", "hmean"],
        ["--group-by", "exp_name"],
        ["--phase", "pretraining"],
        ["--min-epoch", "x"],
        ["--best-by", "hmean", "--group-by", "exp_name", "--sort", "val/loss"],
        ["--no-such-option"],
    ],
)
def test_usage_errors_exit_2(format_tree, args) -> None:
    result = format_tree.invoke("query", *args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "Error" in result.stderr


# --------------------------------------------------------------------------------------------
# The seeds' way (read every sidecar, sort) equals ours


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_seed_way_equals_best_by(tmp_path, invoke, seed) -> None:
    root = tmp_path / f"tree{seed}"
    make_tree(root, 300, seed=seed)
    sync(invoke, root)
    entries = []
    for sidecar in root.rglob("*.metadata.yaml"):
        meta = read_sidecar(sidecar)
        entries.append(
            (
                meta.metrics.hmean,
                meta.training.epoch,
                meta.training.global_step,
                str(checkpoint_path_for(sidecar)),
                meta.exp_name,
            )
        )
    assert len(entries) == 300
    entries.sort(key=lambda e: (e[0], e[1], e[2]), reverse=True)
    assert best_path(invoke, "hmean") == entries[0][3]

    best_per_exp: dict[str, str] = {}
    for *_, path, exp in entries:  # already best first
        best_per_exp.setdefault(exp, path)
    grouped = query_json(invoke, "--best-by", "hmean", "--group-by", "exp_name")
    assert {r["exp_name"]: r["checkpoint_path"] for r in grouped} == best_per_exp


# --------------------------------------------------------------------------------------------
# Query plans at 100k rows


@pytest.fixture(scope="module")
def big_engine(tmp_path_factory):
    from ckpt_index.index.engine import open_engine, write_transaction
    from ckpt_index.index.records import METADATA_COLUMNS, Record
    from ckpt_index.index.store import upsert_records

    engine = open_engine(tmp_path_factory.mktemp("big") / "big.db")
    rng = random.Random(0)
    n, batch = 100_000, 5_000

    def record(i: int) -> Record:
        hmean = round(rng.random(), 6)
        columns = dict.fromkeys(METADATA_COLUMNS)
        columns.update(
            checkpoint_path=(
                f"/outputs/exp{i // 50:05d}/checkpoints/epoch-{i % 50:02d}_step-{i:07d}.ckpt"
            ),
            sidecar_path=None,
            exp_name=f"exp{i // 50:05d}",
            architecture="dbnet",
            encoder=("resnet50", "resnet18")[i % 2],
            epoch=i % 50,
            global_step=i,
            training_phase="training",
            hmean=hmean,
            source="sidecar",
            status="valid",
            checkpoint_exists=i % 97 != 0,
            ckpt_size=1,
            ckpt_mtime_ns=1,
            sidecar_size=1,
            sidecar_mtime_ns=1,
            indexed_at="2025-01-01T00:00:00+00:00",
        )
        return Record(
            columns,
            {
                "hmean": hmean,
                "val/loss": round(rng.random(), 6),
                "train/loss": round(rng.random(), 6),
            },
        )

    started = time.perf_counter()
    for start in range(0, n, batch):
        with write_transaction(engine) as conn:
            upsert_records(conn, [record(i) for i in range(start, min(n, start + batch))])
    print(f"\nbuilt {n} rows in {time.perf_counter() - started:.1f}s")
    yield engine
    engine.dispose()


def _plan(engine, spec: QuerySpec) -> list[str]:
    stmt = build_query(spec)
    compiled = stmt.compile(dialect=sqlite_dialect.dialect())
    params = tuple(compiled.params[name] for name in compiled.positiontup)
    with engine.connect() as conn:
        plan = [
            row[3] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + compiled.string, params)
        ]
        started = time.perf_counter()
        rows = conn.execute(stmt).all()
        elapsed = time.perf_counter() - started
    print(f"\n{spec}: {len(rows)} row(s) in {elapsed * 1000:.1f} ms")
    print("\n".join("  " + line for line in plan))
    assert rows
    assert elapsed < 1.0
    return plan


def _full_scans(plan: list[str], table: str) -> list[str]:
    return [line for line in plan if re.fullmatch(rf"SCAN {table}( AS \w+)?", line.strip())]


@pytest.mark.slow
def test_plan_best_by_hmean_uses_index(big_engine) -> None:
    plan = _plan(big_engine, QuerySpec(best_by="hmean"))
    assert any("ix_checkpoints_hmean" in line for line in plan), plan
    assert not _full_scans(plan, "checkpoints"), plan


@pytest.mark.slow
def test_plan_best_by_metric_uses_name_value_index(big_engine) -> None:
    plan = _plan(big_engine, QuerySpec(best_by="val/loss"))
    assert any("ix_checkpoint_metrics_name_value" in line for line in plan), plan
    assert not _full_scans(plan, "checkpoints"), plan
    assert not _full_scans(plan, "best"), plan
    assert not _full_scans(plan, "checkpoint_metrics"), plan


@pytest.mark.slow
def test_plan_best_by_answers_match_python(big_engine) -> None:
    from sqlalchemy import text

    with big_engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT c.checkpoint_path, c.hmean, c.epoch, c.global_step, m.value "
                "FROM checkpoints c "
                "JOIN checkpoint_metrics m ON m.checkpoint_id = c.id AND m.name = 'val/loss' "
                "WHERE c.checkpoint_exists"
            )
        ).all()
        best_h = conn.execute(build_query(QuerySpec(best_by="hmean"))).first()
        best_l = conn.execute(build_query(QuerySpec(best_by="val/loss"))).first()
    expected_h = min(rows, key=lambda r: (-r[1], -r[2], -r[3], r[0]))[0]
    expected_l = min(rows, key=lambda r: (r[4], -r[2], -r[3], r[0]))[0]
    assert best_h.checkpoint_path == expected_h
    assert best_l.checkpoint_path == expected_l
    # The group-by plan is printed for reference (a window over every row is expected).
    _plan(big_engine, QuerySpec(best_by="hmean", group_by="exp_name", limit=5))


# --------------------------------------------------------------------------------------------
# Unreadable checkpoints are never an answer unless asked for (issue 8, item 6; Lightning #688)


def _truncated_checkpoint(path: Path) -> Path:
    """A real torch.save file cut in half, as a job killed mid-save leaves it."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(64, 64)}, "epoch": 5}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _mark_unreadable(db_url: str, path: Path) -> None:
    """What the sync's integrity check records for a truncated checkpoint under a valid sidecar
    (done here only if this sync does not check yet)."""
    engine = create_engine(db_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE checkpoints SET status = 'unreadable', "
                    "error = 'truncated zip: no end of central directory' "
                    "WHERE checkpoint_path = :p AND status <> 'unreadable'"
                ),
                {"p": str(path)},
            )
    finally:
        engine.dispose()


def test_unreadable_checkpoints_are_skipped_unless_asked(outputs: Path, invoke_db, db_url) -> None:
    good = ckpt(outputs, "exp/checkpoints/epoch-01_step-000100.ckpt", hmean=0.8, epoch=1)
    truncated = _truncated_checkpoint(outputs / "exp/checkpoints/epoch-05_step-000500.ckpt")
    write_checkpoint(
        truncated, **{"metrics.hmean": 0.95, "training.epoch": 5, "metrics.additional_metrics": {}}
    )
    bare = outputs / "exp/checkpoints/epoch-06_step-000600.ckpt"
    bare.write_bytes(b"not a checkpoint\n")  # no sidecar: the sync reads it and fails
    sync(invoke_db, outputs)
    _mark_unreadable(db_url, truncated)

    assert query_paths(invoke_db) == [str(good)]
    assert query_paths(invoke_db, "--best-by", "hmean") == [str(good)]  # not the 0.95 one
    assert query_paths(invoke_db, "--best-by", "hmean", "--group-by", "exp_name") == [str(good)]
    assert query_paths(invoke_db, "--where", "hmean > 0.9") == []
    assert sorted(query_paths(invoke_db, "--include-unreadable")) == sorted(
        [str(good), str(truncated), str(bare)]
    )
    assert query_paths(invoke_db, "--best-by", "hmean", "--include-unreadable") == [str(truncated)]
    # show still shows such a row, with its reason.
    for path in (truncated, bare):
        result = invoke_db("show", str(path))
        assert result.exit_code == 0, result.output
        record = json.loads(result.stdout)
        assert record["status"] == "unreadable" and record["error"], record
    stats = json.loads(invoke_db("stats", "--format", "json").stdout)
    assert stats["unreadable"] == 2 and stats["best_hmean"] == 0.8


def test_include_unreadable_is_documented(invoke) -> None:
    help_text = invoke("query", "--help", db=False).output
    assert "--include-unreadable" in help_text and "-0, --null" in help_text


@pytest.mark.parametrize("total, max_rows", [(30, 20), (1000, 10), (5, 10)])
def test_table_stops_at_max_rows_and_counts_the_rest(total, max_rows) -> None:
    """The table shown on a terminal stops at a screenful and says how many rows it left out."""
    from ckpt_index.query.render import render_table
    from ckpt_index.query.table import Screen

    records = [
        {
            "checkpoint_path": f"/elsewhere/exp/checkpoints/epoch-{i:02d}_step-{i:06d}.ckpt",
            "hmean": 0.5,
            "epoch": i,
            "global_step": i,
            "exp_name": "exp",
            "architecture": "dbnet",
            "encoder": "resnet18",
            "training_phase": "training",
            "metrics": {},
        }
        for i in range(total)
    ]
    # A screen of max_rows + 3 lines: the header, the rows, the "more" line and the prompt.
    lines = render_table(records, screen=Screen(height=max_rows + 3)).splitlines()
    shown = min(total, max_rows)
    assert len([line for line in lines if "/elsewhere/" in line]) == shown
    if total > max_rows:
        assert lines[-1] == f"\u2026 {total - shown} more (use --limit/--format)"
    else:
        assert "more" not in lines[-1]
