"""``plan_gc`` and the dry run of ``ckpt-index gc``: which checkpoints a policy deletes, every
class that is never deleted, the reasons shown, and that planning writes nothing anywhere.

Trees are real sidecars beside well-formed checkpoint files, synced by the real sync; their
mtimes are moved an hour back (files and folders) so that no run looks active, unless a test
makes one active.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.checkpoints import write_checkpoint
from helpers.gc_trees import HOUR, age_tree, ckpt_name, make_run, synced
from helpers.index_rows import plain_engine, raw_rows, sync
from sqlalchemy import text

from ckpt_index.query.names import UnknownNameError
from ckpt_index.query.table import human_size
from ckpt_index.tools.gc_plan import GcItem, GcPlan, GcPolicy, plan_gc


def by_name(plan: GcPlan) -> dict[str, GcItem]:
    """Items by path relative to the (single) root."""
    return {os.path.relpath(i.checkpoint_path, i.root): i for i in plan.items}


def deleted(plan: GcPlan) -> set[str]:
    return {os.path.relpath(i.checkpoint_path, i.root) for i in plan.deletions}


def rel(exp: str, run: str, epoch: int) -> str:
    return f"{exp}/{run}/checkpoints/{ckpt_name(epoch)}"


def has_reason(item: GcItem, fragment: str) -> bool:
    return any(fragment in reason for reason in item.reasons)


# --------------------------------------------------------------------------------------------
# The keep rules


def test_best_k_per_experiment_the_rest_deleted(outputs: Path, db_url: str) -> None:
    make_run(outputs, "exp_a", "run1", [0.1, 0.5, 0.3, 0.4, 0.2])
    make_run(outputs, "exp_b", "run1", [0.9, 0.7, 0.8, 0.6])
    synced(outputs, db_url)

    plan = plan_gc(outputs, db=db_url, keep_best=2, by="val/hmean")

    assert deleted(plan) == {
        rel("exp_a", "run1", 0),
        rel("exp_a", "run1", 2),
        rel("exp_b", "run1", 1),
    }
    items = by_name(plan)
    best = items[rel("exp_a", "run1", 1)]
    assert best.action == "keep" and best.value == 0.5
    assert "best 2 by val/hmean in its experiment (#1)" in best.reasons
    assert "best 2 by val/hmean in its experiment (#2)" in items[rel("exp_a", "run1", 3)].reasons
    # The newest of a run is kept even when it ranks last: all reasons are listed.
    newest = items[rel("exp_a", "run1", 4)]
    assert newest.action == "keep" and newest.reasons == ("newest of its run",)
    gone = items[rel("exp_a", "run1", 0)]
    assert gone.reasons[0] == "not among the best 2 by val/hmean in its experiment"
    assert gone.size == os.path.getsize(gone.checkpoint_path) + os.path.getsize(gone.sidecar_path)
    assert plan.bytes_freed == sum(i.size for i in plan.deletions)
    assert plan.freed_by_group() == {
        "exp_a": items[rel("exp_a", "run1", 0)].size + items[rel("exp_a", "run1", 2)].size,
        "exp_b": items[rel("exp_b", "run1", 1)].size,
    }
    assert [i.checkpoint_path for i in plan.items] == sorted(i.checkpoint_path for i in plan.items)


def test_per_run_and_per_none(outputs: Path, db_url: str) -> None:
    make_run(outputs, "exp", "run1", [0.9, 0.8, 0.1])
    make_run(outputs, "exp", "run2", [0.2, 0.3, 0.1])
    synced(outputs, db_url)

    per_exp = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean")
    assert deleted(per_exp) == {rel("exp", "run1", 1), rel("exp", "run2", 0), rel("exp", "run2", 1)}

    per_run = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean", per="run")
    assert deleted(per_run) == {rel("exp", "run1", 1), rel("exp", "run2", 0)}
    assert has_reason(by_name(per_run)[rel("exp", "run2", 1)], "best 1 by val/hmean in its run")
    assert by_name(per_run)[rel("exp", "run2", 1)].group == str(outputs / "exp/run2/checkpoints")

    make_run(outputs, "other", "run1", [0.95, 0.1])
    synced(outputs, db_url)
    overall = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean", per="none")
    kept_by_rank = [
        i for i in overall.items if "best 1 by val/hmean under the roots (#1)" in i.reasons
    ]
    assert [os.path.relpath(i.checkpoint_path, outputs) for i in kept_by_rank] == [
        rel("other", "run1", 0)
    ]
    assert rel("exp", "run1", 0) in deleted(overall)


def test_loss_ranks_lowest_first_unless_told(outputs: Path, db_url: str) -> None:
    make_run(outputs, "exp", "run1", [0.5] * 4, losses=[0.3, 0.1, 0.4, 0.2])
    synced(outputs, db_url)

    low = plan_gc(outputs, db=db_url, keep_best=1, by="val/loss")
    assert deleted(low) == {rel("exp", "run1", 0), rel("exp", "run1", 2)}
    high = plan_gc(outputs, db=db_url, keep_best=1, by="val/loss:max")
    assert deleted(high) == {rel("exp", "run1", 0), rel("exp", "run1", 1)}
    # A column (hmean) ranks as the metric of the same name.
    column = plan_gc(outputs, db=db_url, keep_best=1, by="hmean:min", keep_every_epochs=None)
    assert by_name(column)[rel("exp", "run1", 0)].value == 0.5


def test_ties_go_to_the_later_epoch(outputs: Path, db_url: str) -> None:
    make_run(outputs, "exp", "run1", [0.7, 0.7, 0.7, 0.2])
    synced(outputs, db_url)

    plan = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean")

    assert deleted(plan) == {rel("exp", "run1", 0), rel("exp", "run1", 1)}
    assert has_reason(by_name(plan)[rel("exp", "run1", 2)], "(#1)")


def test_unranked_kept_unless_included(outputs: Path, db_url: str) -> None:
    make_run(outputs, "exp", "run1", [None, 0.5, None, 0.6, 0.1])
    synced(outputs, db_url)

    plan = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean")
    assert deleted(plan) == {rel("exp", "run1", 1)}
    unranked = by_name(plan)[rel("exp", "run1", 0)]
    assert unranked.value is None and unranked.reasons == ("unranked (no val/hmean)",)

    included = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean", include_unranked=True)
    assert deleted(included) == {rel("exp", "run1", n) for n in (0, 1, 2)}
    assert by_name(included)[rel("exp", "run1", 0)].reasons == ("unranked (no val/hmean)",)


def test_invalid_sidecar_is_unranked(outputs: Path, db_url: str) -> None:
    make_run(outputs, "exp", "run1", [0.1, 0.2, 0.3])
    bad = outputs / "exp/run1/checkpoints" / ckpt_name(0)
    write_checkpoint(bad, **{"metrics.hmean": 1.7, "exp_name": "exp"})  # out of [0, 1]
    synced(outputs, db_url)

    plan = plan_gc(outputs, db=db_url, keep_best=1, by="hmean")

    item = by_name(plan)[rel("exp", "run1", 0)]
    assert item.action == "keep" and item.value is None
    assert "unranked (sidecar invalid)" in item.reasons


def test_active_run_kept_unless_included(outputs: Path, db_url: str) -> None:
    make_run(outputs, "exp", "busy", [0.1, 0.9, 0.2])
    make_run(outputs, "exp", "done", [0.1, 0.2, 0.3])
    synced(outputs, db_url)
    # Lightning writes its logs beside checkpoints/: a fresh one makes the run active.
    (outputs / "exp/busy/metrics.csv").write_text("epoch,loss\n")

    plan = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean", per="run")
    assert deleted(plan) == {rel("exp", "done", 0), rel("exp", "done", 1)}
    assert has_reason(by_name(plan)[rel("exp", "busy", 0)], "run is active (changed")

    included = plan_gc(
        outputs, db=db_url, keep_best=1, by="val/hmean", per="run", include_active=True
    )
    assert rel("exp", "busy", 0) in deleted(included)

    # A file changed in the run folder itself, with a short window: active only within it.
    age_tree(outputs)
    os.utime(outputs / "exp/done/checkpoints" / ckpt_name(2), ns=(time.time_ns(),) * 2)
    window = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean", per="run", active_window=5)
    assert has_reason(by_name(window)[rel("exp", "done", 0)], "run is active")


def test_a_sidecar_edit_is_no_sign_of_training(outputs: Path, db_url: str) -> None:
    """Pinning rewrites a sidecar (so do convert and editors), training writes checkpoints: a
    fresh sidecar does not make its run active, in the plan or in the apply, so `pin` then `gc`
    deletes the run's other checkpoints at once."""
    from ckpt_index import apply_gc, pin

    paths = make_run(outputs, "exp", "run1", [0.1, 0.9, 0.2, 0.3])
    synced(outputs, db_url)
    pin([paths[0]], db=db_url)  # a sidecar changed a moment ago

    plan = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean")
    assert deleted(plan) == {rel("exp", "run1", 2)}
    assert by_name(plan)[rel("exp", "run1", 0)].reasons == ("pinned",)
    assert not any(has_reason(item, "run is active") for item in plan.items)
    result = apply_gc(plan, db=db_url)
    assert (result.deleted, result.skipped) == ([str(paths[2])], [])

    # A checkpoint written a moment ago still is one.
    write_checkpoint(outputs / "exp/run1/checkpoints" / ckpt_name(4), **{"exp_name": "exp"})
    sync(outputs, db_url)
    busy = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean")
    assert has_reason(by_name(busy)[rel("exp", "run1", 3)], "run is active")


def test_an_interrupted_deletion_is_shown(outputs: Path, db_url: str, invoke_db: Any) -> None:
    """A marker an interrupted `gc --apply` left is listed by the dry run (the next apply
    finishes it first), and is no sign of training; one a running apply holds is not listed."""
    from ckpt_index.tools.gc_markers import marker_path_for

    paths = make_run(outputs, "exp", "run1", [0.1, 0.9, 0.2])
    synced(outputs, db_url)
    marker = marker_path_for(paths[0])
    marker.write_text("{}")  # written a moment ago
    live = marker_path_for(paths[1])
    live.write_text("{}")
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)
    try:
        plan = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean")
        assert plan.interrupted == (str(marker),)
        assert deleted(plan) == {rel("exp", "run1", 0)}  # the run is not active
        text_out = invoke_db("gc", str(outputs), "--keep-best", "1", "--by", "val/hmean").output
        expected = f"interrupted: {marker} (a deletion an earlier gc --apply did not finish"
        assert expected in text_out and str(live) not in text_out
        json_out = invoke_db(
            "gc", str(outputs), "--keep-best", "1", "--by", "val/hmean", "--format", "json"
        ).output
        assert json.loads(json_out)["interrupted"] == [str(marker)]
    finally:
        os.close(held)
    assert plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean").interrupted == tuple(
        sorted([str(marker), str(live)])
    )


def test_older_than(outputs: Path, db_url: str) -> None:
    paths = make_run(outputs, "exp", "run1", [0.1, 0.2, 0.3, 0.9, 0.4])
    synced(outputs, db_url)
    week_ago = time.time_ns() - 8 * 86400 * 10**9
    os.utime(paths[0], ns=(week_ago, week_ago))
    sync(outputs, db_url)  # the index follows the new mtime

    plan = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean", older_than=7 * 86400)

    assert deleted(plan) == {rel("exp", "run1", 0)}
    assert "newer than 1w" in by_name(plan)[rel("exp", "run1", 1)].reasons
    assert "older than 1w" in by_name(plan)[rel("exp", "run1", 0)].reasons


def test_keep_globs_every_epochs_and_keep_last(outputs: Path, db_url: str) -> None:
    make_run(outputs, "exp", "run1", [0.9, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    synced(outputs, db_url)

    globbed = plan_gc(
        outputs, db=db_url, keep_best=1, by="val/hmean", keep=("exp/*/epoch-01_*", "*step-000300*")
    )
    assert deleted(globbed) == {rel("exp", "run1", n) for n in (3, 4, 5)}
    assert "matches --keep '*step-000300*'" in by_name(globbed)[rel("exp", "run1", 2)].reasons

    every = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean", keep_every_epochs=3)
    assert deleted(every) == {rel("exp", "run1", n) for n in (1, 3, 4)}
    assert "epoch 2: one of every 3 epochs" in by_name(every)[rel("exp", "run1", 2)].reasons

    last = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean", keep_last=3)
    assert deleted(last) == {rel("exp", "run1", n) for n in (1, 2, 3)}
    assert "among the 3 newest of its run" in by_name(last)[rel("exp", "run1", 4)].reasons


# --------------------------------------------------------------------------------------------
# Never deleted, whatever the policy


def test_link_targets_and_kept_names(outputs: Path, db_url: str) -> None:
    paths = make_run(outputs, "exp", "run1", [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9])
    folder = paths[0].parent
    (folder / "last.ckpt").symlink_to(paths[1].name)  # a symbolic link beside it
    os.link(paths[2], outputs / "exp" / "copy_of_epoch2.bin")  # a hard link elsewhere
    (outputs / "exp" / "best.ckpt").symlink_to(os.path.relpath(paths[3], outputs / "exp"))
    write_checkpoint(folder / "best-epoch=04.ckpt", exp_name="exp", **{"metrics.hmean": 0.05})
    write_checkpoint(folder / "last-v1.ckpt", exp_name="exp", **{"metrics.hmean": 0.05})
    synced(outputs, db_url)

    plan = plan_gc(outputs, db=db_url, keep_best=1, by="hmean")

    items = by_name(plan)
    assert "target of last.ckpt" in items[rel("exp", "run1", 1)].reasons
    assert "has 1 other hard link" in items[rel("exp", "run1", 2)].reasons
    # A link in another folder is known from the index (the row's aliases).
    assert any(
        r.startswith("target of") and "best.ckpt" in r for r in items[rel("exp", "run1", 3)].reasons
    )
    for name in ("best-epoch=04.ckpt", "last-v1.ckpt"):
        assert "a best/last file" in items[f"exp/run1/checkpoints/{name}"].reasons
    assert deleted(plan) == {rel("exp", "run1", n) for n in (0, 4, 5)}

    # A link named like a sidecar is a link all the same: its target is kept.
    alias = folder / "alias.metadata.yaml"
    alias.symlink_to(paths[0].name)
    old = time.time_ns() - HOUR * 10**9  # (a new link is a change: the run would be active)
    os.utime(alias, ns=(old, old), follow_symlinks=False)
    plan = plan_gc(outputs, db=db_url, keep_best=1, by="hmean")
    assert "target of alias.metadata.yaml" in by_name(plan)[rel("exp", "run1", 0)].reasons
    assert deleted(plan) == {rel("exp", "run1", n) for n in (4, 5)}


def test_pinned_never_deleted(outputs: Path, db_url: str) -> None:
    make_run(outputs, "exp", "run1", [0.1, 0.2, 0.9, 0.3], pinned={0})
    synced(outputs, db_url)

    plan = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean")

    assert deleted(plan) == {rel("exp", "run1", 1)}
    assert by_name(plan)[rel("exp", "run1", 0)].reasons == ("pinned",)


def test_other_locations_and_paths_outside_the_roots(
    outputs: Path, tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_run(outputs, "exp", "run1", [0.1, 0.2, 0.9, 0.3])
    # A sibling whose name starts like the root's: outside it all the same.
    sibling = tmp_path / "outputs2"
    make_run(sibling, "exp", "run1", [0.1, 0.2, 0.9, 0.3])
    synced(outputs, db_url)
    synced(sibling, db_url)
    synced(outputs, db_url, location="node-b")  # the same paths, indexed by another machine

    plan = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean")

    assert len(plan.items) == 4 and {i.root for i in plan.items} == {str(outputs)}
    engine = plain_engine(db_url)
    with engine.connect() as conn:
        ours = set(
            conn.scalars(
                text("SELECT id FROM checkpoints WHERE location = :loc"), {"loc": plan.location}
            )
        )
    engine.dispose()
    assert {i.row_id for i in plan.items} <= ours
    # The other machine's rows are that machine's to plan.
    monkeypatch.setenv("CKPT_INDEX_LOCATION", "node-b")
    theirs = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean")
    assert theirs.location == "node-b" and not {i.row_id for i in theirs.items} & ours
    # Two roots: each item under its own.
    monkeypatch.delenv("CKPT_INDEX_LOCATION")
    both = plan_gc([outputs, sibling, outputs], db=db_url, keep_best=1, by="val/hmean")
    assert both.roots == (str(outputs), str(sibling))
    assert [i.root for i in both.items] == [str(outputs)] * 4 + [str(sibling)] * 4
    assert all(i.checkpoint_path.startswith(i.root + "/") for i in both.items)


def test_gone_and_changed_files_are_kept(outputs: Path, db_url: str) -> None:
    paths = make_run(outputs, "exp", "run1", [0.1, 0.2, 0.3, 0.9, 0.4])
    synced(outputs, db_url)
    paths[0].unlink()
    with open(paths[1], "ab") as handle:
        handle.write(b"more")
    hour_ago = time.time_ns() - HOUR * 10**9
    for path in (paths[1], paths[1].parent, paths[1].parents[1]):  # not active: only changed
        os.utime(path, ns=(hour_ago, hour_ago))

    plan = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean")

    items = by_name(plan)
    gone = items[rel("exp", "run1", 0)]
    assert (
        gone.action == "keep" and gone.ckpt_identity is None and "file is gone" in gone.reasons[0]
    )
    assert gone not in plan.deletions
    assert (
        "changed since the last sync (run ckpt-index sync)" in items[rel("exp", "run1", 1)].reasons
    )
    assert deleted(plan) == {rel("exp", "run1", 2)}
    item = items[rel("exp", "run1", 2)]
    st = os.lstat(item.checkpoint_path)
    assert item.ckpt_identity == (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    sst = os.lstat(item.sidecar_path or "")
    assert item.sidecar_identity == (sst.st_size, sst.st_mtime_ns)


def test_a_checkpoint_without_sidecar(outputs: Path, db_url: str) -> None:
    make_run(outputs, "exp", "run1", [0.1, 0.9, 0.3])
    bare = write_checkpoint(outputs / "exp/run1/checkpoints/epoch-05_step-000600.ckpt", None)
    synced(outputs, db_url)

    plan = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean", include_unranked=True)

    item = by_name(plan)["exp/run1/checkpoints/epoch-05_step-000600.ckpt"]
    assert item.sidecar_path is None and item.sidecar_identity is None
    assert item.size == bare.stat().st_size


# --------------------------------------------------------------------------------------------
# Errors and the API


def test_unknown_metric_suggests(outputs: Path, db_url: str) -> None:
    make_run(outputs, "exp", "run1", [0.1, 0.2])
    synced(outputs, db_url)
    with pytest.raises(UnknownNameError, match="did you mean 'val/hmean'"):
        plan_gc(outputs, db=db_url, keep_best=1, by="val/hmaen")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"keep_best": 0, "by": "hmean"}, "keep_best must be >= 1"),
        ({"keep_best": 1, "by": "hmean", "per": "epoch"}, "per must be one of"),
        ({"keep_best": 1, "by": "hmean", "keep_last": 0}, "keep_last must be >= 1"),
        ({"keep_best": 1}, "gc needs --by"),
    ],
)
def test_bad_policies(outputs: Path, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_gc(outputs, db=str(outputs / "no.db"), **fields)


def test_policy_object_and_export(outputs: Path, db_url: str) -> None:
    import ckpt_index

    make_run(outputs, "exp", "run1", [0.1, 0.9, 0.3])
    synced(outputs, db_url)
    policy = ckpt_index.GcPolicy(keep_best=1, by="val/hmean")
    plan = ckpt_index.plan_gc(str(outputs), policy, db=db_url)
    assert isinstance(plan, ckpt_index.GcPlan) and plan.policy == policy
    assert deleted(plan) == {rel("exp", "run1", 0)}
    assert plan_gc(outputs, policy, db=db_url, keep_best=3).policy.keep_best == 3
    assert "password" not in plan.db_url


# --------------------------------------------------------------------------------------------
# The command


def test_cli_table_and_footer(outputs: Path, db_url: str, invoke_db: Any) -> None:
    make_run(outputs, "exp_a", "run1", [0.1, 0.9, 0.3])
    synced(outputs, db_url)

    result = invoke_db("gc", str(outputs), "--keep-best", "1", "--by", "val/hmean")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["ACTION", "SIZE", "VAL/HMEAN", "PATH", "REASONS"]
    delete_line = next(line for line in lines if line.startswith("DELETE"))
    assert rel("exp_a", "run1", 0) in delete_line and str(outputs) not in delete_line
    assert "not among the best 1 by val/hmean in its experiment" in delete_line
    plan = plan_gc(outputs, db=db_url, keep_best=1, by="val/hmean")
    size = plan.deletions[0].size
    assert any(
        line.split() == ["exp_a", "delete", "1", "of", "3", human_size(size)] for line in lines
    )
    assert f"total: delete 1 of 3 checkpoints, free {human_size(size)} ({size} bytes)" in lines
    assert lines[-1] == (
        f"dry run: nothing deleted; run with --apply to delete 1 checkpoint ({human_size(size)})"
    )


def test_cli_json(outputs: Path, db_url: str, invoke_db: Any) -> None:
    make_run(outputs, "exp_a", "run1", [0.1, 0.9, 0.3])
    synced(outputs, db_url)

    result = invoke_db(
        "gc", str(outputs), "--keep-best", "1", "--by", "val/hmean", "--format", "json"
    )

    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data) == {
        "policy",
        "roots",
        "location",
        "created_at",
        "items",
        "interrupted",
        "totals",
    }
    assert data["interrupted"] == []
    assert data["roots"] == [str(outputs)]
    assert data["policy"]["keep_best"] == 1 and data["policy"]["by"] == "val/hmean"
    actions = {os.path.relpath(i["checkpoint_path"], outputs): i["action"] for i in data["items"]}
    assert actions == {
        rel("exp_a", "run1", 0): "delete",
        rel("exp_a", "run1", 1): "keep",
        rel("exp_a", "run1", 2): "keep",
    }
    item = data["items"][0]
    assert isinstance(item["reasons"], list) and item["size"] > 0 and item["value"] == 0.1
    totals = data["totals"]
    assert totals["delete"] == 1 and totals["keep"] == 2 and totals["checkpoints"] == 3
    assert totals["bytes_freed"] == item["size"] and totals["by_exp_name"] == {
        "exp_a": item["size"]
    }


def test_cli_usage_errors(outputs: Path, db_url: str, invoke_db: Any) -> None:
    make_run(outputs, "exp", "run1", [0.1, 0.2])
    synced(outputs, db_url)
    unknown = invoke_db("gc", str(outputs), "--keep-best", "1", "--by", "val/hmaen")
    assert unknown.exit_code == 2 and "did you mean 'val/hmean'" in unknown.output
    zero = invoke_db("gc", str(outputs), "--keep-best", "0", "--by", "val/hmean")
    assert zero.exit_code == 2 and "keep_best must be >= 1" in zero.output
    duration = invoke_db(
        "gc", str(outputs), "--keep-best", "1", "--by", "hmean", "--older-than", "7x"
    )
    assert duration.exit_code == 2 and "is no duration" in duration.output
    text_field = invoke_db("gc", str(outputs), "--keep-best", "1", "--by", "exp_name")
    assert text_field.exit_code == 2 and "is no number" in text_field.output
    missing = invoke_db("gc", str(outputs), "--by", "hmean")
    assert missing.exit_code == 2 and "gc needs --keep-best" in missing.output
    assert "ckpt-index.toml" in missing.output and "pyproject.toml" in missing.output


def test_cli_missing_index_is_not_created(outputs: Path, tmp_path: Path, invoke: Any) -> None:
    make_run(outputs, "exp", "run1", [0.1, 0.2])
    db = tmp_path / "absent.db"
    result = invoke("gc", str(outputs), "--keep-best", "1", "--by", "hmean", "--db", str(db))
    assert result.exit_code == 2
    assert not db.exists() and not list(tmp_path.glob("absent.db*"))


def _tree_state(root: Path) -> dict[str, tuple[int, int, int]]:
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            st = os.lstat(os.path.join(folder, name))
            state[os.path.join(folder, name)] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return state


def test_dry_run_writes_nothing(outputs: Path, tmp_path: Path, db_url: str, invoke_db: Any) -> None:
    make_run(outputs, "exp", "run1", [0.1, 0.9, 0.3, 0.2])
    (outputs / "exp/run1/checkpoints/last.ckpt").symlink_to(ckpt_name(3))
    synced(outputs, db_url)
    rows = raw_rows(db_url)
    tree = _tree_state(tmp_path)
    db_file = tmp_path / "index.db"
    db_bytes = db_file.read_bytes() if db_url.startswith("sqlite") else None

    for fmt in ("table", "json"):
        result = invoke_db(
            "gc", str(outputs), "--keep-best", "1", "--by", "val/hmean", "--format", fmt
        )
        assert result.exit_code == 0, result.output
        assert "DELETE" in result.output or '"delete"' in result.output

    assert _tree_state(tmp_path) == tree  # no file made, changed or removed (no -wal, no -shm)
    assert raw_rows(db_url) == rows
    if db_bytes is not None:
        assert db_file.read_bytes() == db_bytes


def _item(root: str, rel_path: str, action: str, reasons: tuple[str, ...], size: int) -> GcItem:
    path = f"{root}/{rel_path}"
    exp = rel_path.split("/")[0]
    return GcItem(
        checkpoint_path=path,
        sidecar_path=None,
        root=root,
        group=exp,
        exp_name=exp,
        run=os.path.dirname(path),
        epoch=1,
        global_step=100,
        value=0.5,
        size=size,
        action=action,
        reasons=reasons,
        row_id=1,
        ckpt_dev=1,
        ckpt_ino=2,
        ckpt_size=size,
        ckpt_mtime_ns=3,
        sidecar_size=None,
        sidecar_mtime_ns=None,
    )


def test_table_fits_the_width_and_escapes_names() -> None:
    from ckpt_index.tools.gc_render import render_plan

    root = "/data/outputs"
    long_name = "a_very_long_experiment_name_" * 4 + "\x1b[31mred"
    items = (
        _item(
            root, f"{long_name}/run/checkpoints/epoch-01.ckpt", "delete", ("not among " * 9,), 2048
        ),
        _item(root, "exp/run/checkpoints/epoch-02.ckpt", "keep", ("newest of its run",), 4096),
        _item(root, "loose/epoch-03.ckpt", "keep", ("unranked (no val/hmean)",), 1024)._replace(
            exp_name=None
        ),
    )
    plan = GcPlan(
        policy=GcPolicy(keep_best=1, by="val/hmean"),
        roots=(root,),
        db_url="sqlite:///x.db",
        location="here",
        created_at="2026-01-01T00:00:00+00:00",
        items=items,
    )
    for width in (60, 80, 120):
        text_out = render_plan(plan, width=width)
        table = text_out.split("\n\n")[0].splitlines()
        assert all(len(line) <= width for line in text_out.splitlines()[:-2]), (width, text_out)
        assert "\x1b" not in text_out and "\\x1b[31mred" not in table[1]  # elided in the middle
        assert table[1].startswith("DELETE") and table[1].split()[1] == "2.0K"
        assert "epoch-01.ckpt" in table[1]  # the file name survives the elision
    whole = render_plan(plan)  # piped: every value whole, escaped
    assert "\\x1b[31mred/run/checkpoints/epoch-01.ckpt" in whole
    # A checkpoint of no experiment is counted under "-", as du shows it.
    assert any(line.split() == ["-", "delete", "0", "of", "1", "0B"] for line in whole.splitlines())
    assert whole.splitlines()[-1] == (
        "dry run: nothing deleted; run with --apply to delete 1 checkpoint (2.0K)"
    )
