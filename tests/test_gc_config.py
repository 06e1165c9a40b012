"""The policy of ``ckpt-index gc`` from files and flags: where the file is found, which one wins,
how flags override it, durations, and the usage errors (exit 2) for what no policy may say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers.gc_trees import make_run, synced

from ckpt_index.tools.gc_config import (
    GcConfigError,
    find_gc_config,
    load_gc_config,
    make_policy,
    parse_duration,
)
from ckpt_index.tools.gc_plan import GcPolicy


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("12h", 43200),
        ("7d", 604800),
        ("2w", 1209600),
        ("90s", 90),
        ("3600", 3600),
        ("1.5h", 5400),
        (" 7D ", 604800),
        (600, 600),
        (0.5, 0.5),
    ],
)
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["7x", "", "d", "-1d", "1e3", "seven days", "nan", True])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(GcConfigError):
        parse_duration(text)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_found_in_the_root_then_its_parents(tmp_path: Path) -> None:
    root = tmp_path / "project" / "outputs"
    root.mkdir(parents=True)
    assert find_gc_config([root]) is None
    assert load_gc_config([root]).values == {}

    # A pyproject.toml without the table does not stop the search upward.
    write(tmp_path / "project" / "pyproject.toml", "[project]\nname = 'x'\n")
    assert find_gc_config([root]) is None
    write(tmp_path / "pyproject.toml", "[tool.ckpt-index.gc]\nkeep_best = 2\nby = 'hmean'\n")
    assert find_gc_config([root]) == tmp_path / "pyproject.toml"

    # A nearer directory wins; in one directory ckpt-index.toml comes before pyproject.toml.
    write(tmp_path / "project" / "pyproject.toml", "[tool.ckpt-index.gc]\nkeep_best = 3\n")
    assert find_gc_config([root]) == tmp_path / "project" / "pyproject.toml"
    write(tmp_path / "project" / "ckpt-index.toml", "[gc]\nkeep-best = 4\nby = 'val/loss'\n")
    config = load_gc_config([root])
    assert config.source == str(tmp_path / "project" / "ckpt-index.toml")
    assert config.values == {"keep_best": 4, "by": "val/loss"}
    write(root / "ckpt-index.toml", "[gc]\nkeep_best = 5\n")
    assert load_gc_config([root]).values == {"keep_best": 5}


def test_every_key_and_its_values(tmp_path: Path) -> None:
    path = write(
        tmp_path / "ckpt-index.toml",
        """
[gc]
keep_best = 2
by = "val/loss:min"
per = "run"
keep-last = 3
keep_every_epochs = 10
keep = ["*final*", "exp_a/*"]
older_than = "7d"
include_active = true
include-unranked = true
trash = "/scratch/trash"
""",
    )
    config = load_gc_config(config=path)
    assert config.values == {
        "keep_best": 2,
        "by": "val/loss:min",
        "per": "run",
        "keep_last": 3,
        "keep_every_epochs": 10,
        "keep": ("*final*", "exp_a/*"),
        "older_than": 604800.0,
        "include_active": True,
        "include_unranked": True,
        "trash": "/scratch/trash",
    }
    assert make_policy(config) == GcPolicy(
        keep_best=2,
        by="val/loss:min",
        per="run",
        keep_last=3,
        keep_every_epochs=10,
        keep=("*final*", "exp_a/*"),
        older_than=604800.0,
        include_active=True,
        include_unranked=True,
    )
    # A single glob and a number of seconds are fine too.
    single = write(tmp_path / "one.toml", "[gc]\nkeep = '*best*'\nolder_than = 3600\n")
    assert load_gc_config(config=single).values == {"keep": ("*best*",), "older_than": 3600.0}


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "ckpt-index.toml", "[gc]\nkeep_best = 2\nby = 'hmean'\nkeep = ['a*']\n")
    config = load_gc_config(config=path)
    policy = make_policy(
        config, keep_best=5, by=None, per=None, keep=("b*",), older_than="12h", include_active=None
    )
    assert policy == GcPolicy(keep_best=5, by="hmean", keep=("b*",), older_than=43200.0)
    # Flags not given (None, an empty --keep) leave the file's values.
    assert make_policy(config, keep=(), include_unranked=None).keep == ("a*",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[gc]\nkeep_bets = 2\n", "unknown key 'keep_bets' (did you mean 'keep_best'?)"),
        ("[gc]\nolder-then = '7d'\n", "unknown key 'older-then' (did you mean 'older_than'?)"),
        ("[gc]\nzzz = 1\n", "unknown key 'zzz' (valid keys: keep_best, by"),
        ("[gc]\nkeep_best = '2'\n", "keep_best: expected an integer"),
        ("[gc]\nkeep_best = true\n", "keep_best: expected an integer"),
        ("[gc]\ninclude_active = 'yes'\n", "include_active: expected true or false"),
        ("[gc]\nkeep = [1, 2]\n", "keep: expected a glob or a list of globs"),
        ("[gc]\nolder_than = '7 days'\n", "is no duration"),
        ("[gc]\nkeep_best = 1\nkeep-best = 2\n", "'keep_best' is given twice"),
        ("gc = 3\n", "[gc] must be a table"),
        ("[gc\n", "cannot read it as TOML"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path / "ckpt-index.toml", text)
    with pytest.raises(GcConfigError) as caught:
        load_gc_config(config=path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_out_of_range_values(tmp_path: Path) -> None:
    for text, message in [
        ("[gc]\nkeep_best = 0\nby = 'hmean'\n", "keep_best must be >= 1"),
        ("[gc]\nkeep_best = 1\nby = 'hmean'\nper = 'epoch'\n", "per must be one of"),
        ("[gc]\nkeep_best = 1\nby = 'hmean'\nkeep_every_epochs = 0\n", "keep_every_epochs"),
    ]:
        path = write(tmp_path / "ckpt-index.toml", text)
        with pytest.raises(GcConfigError, match=message) as caught:
            make_policy(load_gc_config(config=path))
        assert str(path) in str(caught.value)


def test_roots_with_different_files_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "a" / "ckpt-index.toml", "[gc]\nkeep_best = 1\n")
    write(tmp_path / "b" / "ckpt-index.toml", "[gc]\nkeep_best = 2\n")
    with pytest.raises(GcConfigError, match="different gc config files"):
        load_gc_config([tmp_path / "a", tmp_path / "b"])
    write(tmp_path / "ckpt-index.toml", "[gc]\nkeep_best = 3\n")
    (tmp_path / "c").mkdir()
    (tmp_path / "d").mkdir()
    assert load_gc_config([tmp_path / "c", tmp_path / "d"]).values == {"keep_best": 3}


def test_config_names_a_pyproject(tmp_path: Path) -> None:
    path = write(tmp_path / "pyproject.toml", "[tool.ckpt-index.gc]\nkeep_best = 2\n")
    assert load_gc_config(config=path).values == {"keep_best": 2}
    other = write(tmp_path / "other.toml", "[tool.ckpt-index.gc]\nkeep_best = 2\n")
    with pytest.raises(GcConfigError, match=r"no \[gc\] table"):
        load_gc_config(config=other)
    with pytest.raises(GcConfigError, match="no such file"):
        load_gc_config(config=tmp_path / "absent.toml")


# --------------------------------------------------------------------------------------------
# Through the command


@pytest.fixture
def tree(outputs: Path, db_url: str) -> Path:
    make_run(outputs, "exp", "run1", [0.1, 0.9, 0.2, 0.8, 0.3])
    synced(outputs, db_url)
    return outputs


def _deleted(result: Any) -> list[str]:
    data = json.loads(result.output)
    return sorted(Path(i["checkpoint_path"]).name for i in data["items"] if i["action"] == "delete")


def test_cli_reads_the_policy_from_the_tree(tree: Path, invoke_db: Any) -> None:
    write(tree / "ckpt-index.toml", "[gc]\nkeep_best = 2\nby = 'val/hmean'\n")

    from_file = invoke_db("gc", str(tree), "--format", "json")
    assert from_file.exit_code == 0, from_file.output
    assert _deleted(from_file) == ["epoch-00_step-000100.ckpt", "epoch-02_step-000300.ckpt"]
    assert json.loads(from_file.output)["policy"]["keep_best"] == 2

    # A flag overrides the file's value; the others stay.
    flagged = invoke_db("gc", str(tree), "--keep-best", "1", "--format", "json")
    assert _deleted(flagged) == [
        "epoch-00_step-000100.ckpt",
        "epoch-02_step-000300.ckpt",
        "epoch-03_step-000400.ckpt",
    ]


def test_cli_config_flag_and_pyproject_upward(tree: Path, tmp_path: Path, invoke_db: Any) -> None:
    write(tmp_path / "pyproject.toml", "[tool.ckpt-index.gc]\nkeep_best = 3\nby = 'hmean'\n")
    upward = invoke_db("gc", str(tree), "--format", "json")
    assert _deleted(upward) == ["epoch-00_step-000100.ckpt", "epoch-02_step-000300.ckpt"]
    assert json.loads(upward.output)["policy"]["keep_best"] == 3

    named = write(tmp_path / "policies" / "strict.toml", "[gc]\nkeep_best = 1\nby = 'hmean'\n")
    strict = invoke_db("gc", str(tree), "--config", str(named), "--format", "json")
    assert len(_deleted(strict)) == 3


def test_cli_bad_file_exits_2(tree: Path, invoke_db: Any) -> None:
    write(tree / "ckpt-index.toml", "[gc]\nkeep_best = 2\nby = 'hmean'\nkeep_bets = 1\n")
    result = invoke_db("gc", str(tree))
    assert result.exit_code == 2
    assert "unknown key 'keep_bets' (did you mean 'keep_best'?)" in result.output
    # Even when every flag is given: a typo in the policy file is not ignored.
    flags = invoke_db("gc", str(tree), "--keep-best", "1", "--by", "hmean")
    assert flags.exit_code == 2


def test_cli_trash_from_the_file_shows_in_the_footer(
    tree: Path, tmp_path: Path, invoke_db: Any
) -> None:
    trash = tmp_path / "trash"
    write(tree / "ckpt-index.toml", f"[gc]\nkeep_best = 2\nby = 'hmean'\ntrash = '{trash}'\n")
    result = invoke_db("gc", str(tree))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].endswith(f"(moved to {trash})")
    assert not trash.exists()
