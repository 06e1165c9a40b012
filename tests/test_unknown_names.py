"""Unknown names are usage errors with a suggestion (issue 10, item 2), through the real CLI on
the demo tree (both backends) and through the Python API.

``--best-by val/hmaen``, ``--where "hmaen > 0.8"``, ``--sort nosuch:desc`` used to answer "no
checkpoint matches" (exit 1) or rows in path order (exit 0); ``--sort hmean:descending`` and
``--best-by hmean:maximum`` were read as metric names. Now: exit 2, the name, and the closest
fields or metric names present in the index; a bad direction names the accepted ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ckpt_index
from ckpt_index.query.names import NAME_SOURCES, NameSource, QueryError, UnknownNameError
from ckpt_index.query.spec import QuerySpec, WhereError


@pytest.fixture
def demo(tmp_path: Path, invoke_db):
    """The demo tree synced into the index (metrics hmean, val/hmean, cleval/hmean, ...)."""
    root = tmp_path / "demo"
    assert invoke_db("demo", str(root)).exit_code == 0
    assert invoke_db("sync", str(root)).exit_code == 0
    return invoke_db


def usage_error(result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    assert "no checkpoint matches" not in result.stderr
    return result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--best-by", "val/hmaen"],
            "unknown field, metric or parameter 'val/hmaen' "
            "(did you mean 'val/hmean' or 'cleval/hmean'?)",
        ),
        (
            ["--where", "hmaen > 0.8"],
            "unknown field, metric or parameter 'hmaen' (did you mean 'hmean'?)",
        ),
        (["--sort", "nosuch:desc"], "unknown field, metric or parameter 'nosuch'\n"),
        (["--sort", "hmaen"], "unknown field, metric or parameter 'hmaen' (did you mean 'hmean'?)"),
        (
            ["--best-by", "HMEAN"],
            "unknown field, metric or parameter 'HMEAN' (did you mean 'hmean'?)",
        ),
        (
            ["--best-by", "metrics.hmaen"],
            "unknown metric 'metrics.hmaen' (did you mean 'metrics.hmean', 'metrics.val/hmean' "
            "or 'metrics.cleval/hmean'?)",
        ),
        # A word after ':' that is no direction, on a name that is not known either: the name
        # is reported first.
        (
            ["--sort", "hmaen:descending"],
            "unknown field, metric or parameter 'hmaen' (did you mean 'hmean'?)",
        ),
        (
            ["--best-by", "hmean", "--group-by", "exp_name", "--sort", "epoc"],
            "unknown field, metric or parameter 'epoc' (did you mean 'epoch'?)",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_unknown_name_is_a_usage_error_with_a_suggestion(demo, args, message) -> None:
    assert message in usage_error(demo("query", *args))


@pytest.mark.parametrize(
    "option, item", [("--sort", "hmean:descending"), ("--best-by", "hmean:maximum")]
)
def test_a_bad_direction_names_the_accepted_ones(demo, option, item) -> None:
    word = item.partition(":")[2]
    stderr = usage_error(demo("query", option, item))
    assert f"{option} {item!r}: unknown direction {word!r}" in stderr
    assert "use one of max, min, asc, desc" in stderr


def test_where_points_at_the_unknown_name(demo) -> None:
    expr = 'hmean > 0.5 and (epoch > 2 or "val/hmaen" < 1)'
    stderr = usage_error(demo("query", "--where", expr))
    lines = stderr.splitlines()
    at = next(i for i, line in enumerate(lines) if "unknown field, metric or parameter" in line)
    assert lines[at].endswith("(did you mean 'val/hmean' or 'cleval/hmean'?) at position 30")
    assert lines[at + 1] == f"  {expr}"
    assert lines[at + 2] == "  " + " " * expr.index('"val/hmaen"') + "^"


def test_known_names_still_answer(demo) -> None:
    """Fields, metrics and metrics.X, with and without directions, in every option."""
    for args in (
        ["--best-by", "val/hmean"],
        ["--best-by", "metrics.hmean:max"],
        ["--best-by", "val/loss:min", "--sort", "epoch:desc"],
        ["--sort", "val/hmean:desc", "--limit", "2"],
        ["--where", "cleval/hmean > 0.5 and epoch >= 1", "--limit", "1"],
        ["--best-by", "hmean", "--group-by", "exp_name", "--sort", "epoch:asc"],
    ):
        result = demo("query", *args, "--format", "json")
        assert result.exit_code == 0, (args, result.output)
        assert json.loads(result.stdout), args
    # A known metric that no row passing the filters has: "no checkpoint matches" as before.
    result = demo("query", "--best-by", "val/loss", "--encoder", "nope")
    assert result.exit_code == 1 and "no checkpoint matches" in result.stderr


def test_candidates_are_the_metric_names_in_this_index(tmp_path: Path, invoke_db) -> None:
    """An index that holds no metrics knows only the fields: val/hmean is unknown there, and
    nothing is suggested for it but fields."""
    (tmp_path / "empty").mkdir()
    assert invoke_db("sync", str(tmp_path / "empty")).exit_code == 0
    stderr = usage_error(invoke_db("query", "--best-by", "val/hmean"))
    assert "unknown field or metric 'val/hmean' (did you mean 'hmean'?)" in stderr
    result = invoke_db("query", "--best-by", "hmean")  # a field is always known
    assert result.exit_code == 1 and "no checkpoint matches" in result.stderr


# --------------------------------------------------------------------------------------------
# The Python API raises the same errors


def test_api_raises_unknown_name_error(demo, db_url: str) -> None:
    with pytest.raises(UnknownNameError) as info:
        ckpt_index.query_index(db=db_url, best_by="val/hmaen")
    assert (info.value.name, info.value.suggestions) == ("val/hmaen", ("val/hmean", "cleval/hmean"))
    assert isinstance(info.value, QueryError) and isinstance(info.value, ValueError)
    assert str(info.value) == (
        "unknown field, metric or parameter 'val/hmaen' "
        "(did you mean 'val/hmean' or 'cleval/hmean'?)"
    )

    with pytest.raises(UnknownNameError) as info:
        ckpt_index.query_index(db=db_url, where="hmean > 0.1 and hmaen > 0.8")
    error = info.value
    assert (error.name, error.suggestions, error.position) == ("hmaen", ("hmean",), 16)
    assert str(info.value).splitlines()[-1] == "  " + " " * 16 + "^"

    with pytest.raises(UnknownNameError, match="'nosuch'$"):
        ckpt_index.query_index(db=db_url, sort=["nosuch:desc"])
    with pytest.raises(QueryError, match="unknown direction 'descending'") as bad_direction:
        ckpt_index.query_index(db=db_url, sort=["hmean:descending"])
    assert not isinstance(bad_direction.value, UnknownNameError)
    with pytest.raises(QueryError, match="unknown direction 'maximum'"):
        ckpt_index.query_index(db=db_url, best_by="hmean:maximum")
    # A malformed expression is still a WhereError, reported before any name is looked up.
    with pytest.raises(WhereError):
        ckpt_index.query_index(db=db_url, where="hmaen >")
    assert ckpt_index.query_index(db=db_url, best_by="val/hmean")


def test_a_name_source_hook_adds_names(demo, db_url: str, monkeypatch) -> None:
    """A kind of names joins the candidates by adding a source (as parameters did)."""
    from sqlalchemy import text

    def has(conn, name: str) -> bool:
        return name == "lr"

    def names(conn):
        return [conn.execute(text("SELECT 'lr'")).scalar_one()]

    monkeypatch.setattr("ckpt_index.query.names.NAME_SOURCES", [*NAME_SOURCES])
    import ckpt_index.query.names as names_module

    names_module.NAME_SOURCES.append(NameSource("hp.", "setting", has, names))
    with pytest.raises(UnknownNameError) as info:
        ckpt_index.query_index(db=db_url, sort=["lrr"])
    assert info.value.suggestions == ("lr",)
    assert str(info.value).startswith("unknown field, metric, setting or parameter 'lrr'")
    with pytest.raises(UnknownNameError, match="unknown setting 'hp.lrr'"):
        ckpt_index.query_index(db=db_url, sort=["hp.lrr"])


def test_query_spec_builds_without_an_index() -> None:
    """build_query needs no connection (names are checked when the query runs)."""
    from ckpt_index.query.spec import build_query

    assert build_query(QuerySpec(best_by="nosuch")) is not None


def test_the_errors_are_on_the_package() -> None:
    assert ckpt_index.UnknownNameError is UnknownNameError
    assert ckpt_index.QueryError is QueryError
    assert issubclass(ckpt_index.UnknownNameError, ckpt_index.QueryError)
