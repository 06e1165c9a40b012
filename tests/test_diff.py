"""``ckpt-index diff``: checkpoints side by side (fields, metrics, parameters that differ), by path
(links too) and/or by the query options, in table, JSON and Markdown, on both backends."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers.sweeps import RUNS, expected_params, make_sweep

from ckpt_index.query.diff import MISSING, compare


@pytest.fixture
def sweep(outputs: Path, invoke_db: Callable[..., Any]) -> dict[str, Path]:
    paths = make_sweep(outputs)
    result = invoke_db("sync", str(outputs))
    assert result.exit_code == 0, result.output
    return paths


def diff_json(invoke_db: Callable[..., Any], *args: str) -> dict[str, Any]:
    result = invoke_db("diff", *args, "--format", "json")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def rows_of(document: dict[str, Any]) -> dict[str, list[Any]]:
    return {row["name"]: row["values"] for row in document["rows"]}


def test_two_paths_show_only_what_differs(invoke_db, sweep) -> None:
    a, c = str(sweep["sweep-a/1"]), str(sweep["sweep-c/2"])
    document = diff_json(invoke_db, a, c)
    assert document["checkpoints"] == [a, c]
    rows = rows_of(document)
    assert rows == {
        "sidecar_path": [
            a.replace(".ckpt", ".metadata.yaml"),
            c.replace(".ckpt", ".metadata.yaml"),
        ],
        "exp_name": ["sweep-a", "sweep-c"],
        "epoch": [1, 2],
        "hmean": [0.51, 0.72],
        "metrics.hmean": [0.51, 0.72],
        "params.data.batch_size": [8, 16],
        "params.model.optimizer.lr": [0.1, 0.01],
        "params.model.warmup": [None, 5],
    }
    warmup = next(r for r in document["rows"] if r["name"] == "params.model.warmup")
    assert warmup["missing"] == [0]  # absent in sweep-a, not null


def test_all_shows_every_row(invoke_db, sweep) -> None:
    a1, a2 = str(sweep["sweep-a/1"]), str(sweep["sweep-a/2"])
    rows = rows_of(diff_json(invoke_db, a1, a2, "--all"))
    params = {k[len("params.") :]: v for k, v in rows.items() if k.startswith("params.")}
    assert params == {k: [v, v] for k, v in expected_params(*RUNS["sweep-a"]).items()}
    assert rows["encoder"] == ["resnet50", "resnet50"]
    assert "checkpoint_path" not in rows  # the columns are named by it
    differing = rows_of(diff_json(invoke_db, a1, a2))
    assert not any(k.startswith("params.") for k in differing)  # one run: one parameter set
    assert set(differing) == {"sidecar_path", "epoch", "hmean", "metrics.hmean"}


def test_selectors_compare_the_best_of_each_group(invoke_db, sweep) -> None:
    document = diff_json(
        invoke_db, "--best-by", "hmean", "--group-by", "exp_name", "--exp", "sweep-*"
    )
    assert document["checkpoints"] == [str(sweep[f"sweep-{x}/2"]) for x in "cba"]
    rows = rows_of(document)
    assert rows["params.model.optimizer.lr"] == [0.01, 0.01, 0.1]
    assert rows["params.data.batch_size"] == [16, 8, 8]
    assert "params.model.name" not in rows


def test_group_by_a_parameter(invoke_db, sweep) -> None:
    document = diff_json(invoke_db, "--best-by", "hmean", "--group-by", "params.model.optimizer.lr")
    lrs = rows_of(document)["params.model.optimizer.lr"]
    assert sorted(lr for lr in lrs if lr is not None) == [0.01, 0.1]


def test_paths_and_selectors_together_each_once(invoke_db, sweep) -> None:
    plain = str(sweep["plain"])
    best = str(sweep["sweep-c/2"])
    document = diff_json(invoke_db, plain, best, "--best-by", "hmean")
    assert document["checkpoints"] == [plain, best]  # the best is also named: listed once
    rows = rows_of(document)
    assert rows["params.model.name"] == [None, "resnet"]


def test_a_link_names_its_checkpoint(invoke_db, sweep, outputs) -> None:
    link = outputs / "best.ckpt"
    link.symlink_to(sweep["sweep-b/1"])
    document = diff_json(invoke_db, str(link), str(sweep["sweep-b/2"]))
    assert document["checkpoints"] == [str(sweep["sweep-b/1"]), str(sweep["sweep-b/2"])]


def test_a_hard_link_alias_names_its_checkpoint(invoke_db, sweep, outputs) -> None:
    hard = sweep["sweep-a/1"].parent / "hard.ckpt"
    os.link(sweep["sweep-a/1"], hard)
    assert invoke_db("sync", str(outputs)).exit_code == 0
    document = diff_json(invoke_db, str(hard), str(sweep["sweep-c/1"]))
    assert str(hard) in json.dumps(document)  # its aliases row
    assert document["checkpoints"][1] == str(sweep["sweep-c/1"])
    assert document["checkpoints"][0] in (str(sweep["sweep-a/1"]), str(hard))


def test_table_format(invoke_db, sweep) -> None:
    result = invoke_db("diff", str(sweep["sweep-a/1"]), str(sweep["sweep-c/2"]))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        os.path.relpath(sweep["sweep-a/1"]),
        os.path.relpath(sweep["sweep-c/2"]),
    ]
    table = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert table["params.model.optimizer.lr"] == ["0.1", "0.01"]
    assert table["params.model.warmup"] == ["-", "5"]
    assert table["exp_name"] == ["sweep-a", "sweep-c"]


def test_markdown_format(invoke_db, sweep) -> None:
    result = invoke_db("diff", str(sweep["sweep-a/2"]), str(sweep["plain"]), "--format", "markdown")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1] == "| --- | --- | --- |"
    assert all(line.startswith("| ") and line.endswith(" |") for line in lines)
    cells = {line.split(" | ")[0][2:]: line[2:-2].split(" | ")[1:] for line in lines[2:]}
    assert cells["params.model.dropout"] == ["null", "-"]  # null in one, absent in the other
    assert cells["params.model.sizes"] == ["[1, 2, 3]", "-"]


def test_identical_rows_say_no_difference(invoke_db, sweep) -> None:
    a = str(sweep["sweep-a/1"])
    result = invoke_db("diff", a, "--best-by", "hmean", "--exp", "sweep-a", "--max-epoch", "1")
    assert result.exit_code == 2  # one checkpoint named twice is one checkpoint
    assert "at least two checkpoints" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["{a}"],
        ["--best-by", "hmean"],
        ["--exp", "no-such-exp"],
    ],
)
def test_fewer_than_two_is_a_usage_error(invoke_db, sweep, args) -> None:
    argv = [a.replace("{a}", str(sweep["sweep-a/1"])) for a in args]
    result = invoke_db("diff", *argv)
    assert result.exit_code == 2
    assert "at least two checkpoints" in result.stderr


def test_a_path_not_in_the_index_exits_1(invoke_db, sweep, tmp_path) -> None:
    missing = tmp_path / "elsewhere.ckpt"
    result = invoke_db("diff", str(sweep["sweep-a/1"]), str(missing))
    assert result.exit_code == 1
    assert "not in the index" in result.stderr and "elsewhere.ckpt" in result.stderr


def test_query_errors_are_usage_errors(invoke_db, sweep) -> None:
    result = invoke_db("diff", "--best-by", "hmaen")
    assert result.exit_code == 2
    assert "hmaen" in result.stderr
    result = invoke_db("diff", "--where", "epoch >")
    assert result.exit_code == 2


def test_compare_tells_missing_from_null_and_int_from_float() -> None:
    records = [
        {"metrics": {"a": 1.0}, "params": {"x": None, "n": 1}},
        {"metrics": {}, "params": {"n": 1.0}},
    ]
    diff = compare(records)
    rows = {row.name: row.values for row in diff.rows}
    assert rows["metrics.a"] == [1.0, MISSING]
    assert rows["params.x"] == [None, MISSING]
    assert rows["params.n"] == [1, 1.0]  # an int and a float are different configs
    same = compare([records[0], records[0]])
    assert same.rows == []
    assert {row.name for row in compare([records[0], records[0]], every=True).rows} >= {
        "metrics.a",
        "params.x",
        "params.n",
    }
