"""Property (hypothesis): over random trees (runs of checkpoints with random or missing metrics,
pinned epochs, ``last.ckpt`` links, hard links, ``best*``/``last*`` copies) and random policies,
`gc --apply` deletes only what its plan deletes, every never-delete class remains, and a second
apply with the same policy deletes nothing. Both backends; a small example budget.

The never-delete classes are computed here from the tree as written, independently of the
planner: the best K by hmean in each experiment (values are distinct: no ties to break), every
target of a link, ``best*``/``last*`` names, the newest epoch file of each run, pinned
checkpoints, and those without hmean unless ``include_unranked``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from helpers.gc_trees import age_tree, make_run
from helpers.index_rows import sync, wipe
from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st

from ckpt_index import apply_gc, plan_gc
from ckpt_index.tools.pin import pin

run_shape = st.fixed_dictionaries(
    {
        "exp": st.sampled_from(["e0", "e1"]),
        "epochs": st.integers(2, 6),
        "unranked": st.sets(st.integers(0, 5), max_size=1),
        "pinned": st.sets(st.integers(0, 5), max_size=1),
        "last_link": st.none() | st.integers(0, 5),
        "hard_link": st.none() | st.integers(0, 5),
        "best_copy": st.none() | st.integers(0, 5),
    }
)
policies = st.fixed_dictionaries(
    {
        "keep_best": st.integers(1, 3),
        "per": st.sampled_from(["exp_name", "run", "none"]),
        "keep_last": st.integers(1, 2),
        "keep_every_epochs": st.none() | st.integers(2, 3),
        "include_unranked": st.booleans(),
    }
)


def build(root: Path, runs: list[dict[str, Any]], values: list[float]) -> dict[str, Any]:
    """Write the runs; return the paths each never-delete class must keep."""
    must_keep: set[str] = set()
    ranked: dict[str, list[tuple[float, str]]] = {}  # by experiment
    by_run: dict[str, list[tuple[float, str]]] = {}
    values = list(values)
    for index, shape in enumerate(runs):
        n = shape["epochs"]
        hmeans: list[float | None] = [
            None if e in shape["unranked"] else values.pop() for e in range(n)
        ]
        paths = make_run(root, shape["exp"], f"run{index}", hmeans)
        must_keep.add(str(paths[-1]))  # the newest epoch file of the run
        for epoch, (path, value) in enumerate(zip(paths, hmeans, strict=True)):
            if value is not None:
                ranked.setdefault(shape["exp"], []).append((value, str(path)))
                by_run.setdefault(str(path.parent), []).append((value, str(path)))
            if epoch in shape["pinned"]:
                assert pin([path], db=False)[0].ok
                must_keep.add(str(path))
        folder = paths[0].parent
        if shape["last_link"] is not None and shape["last_link"] < n:
            target = paths[shape["last_link"]]
            (folder / "last.ckpt").symlink_to(target.name)
            must_keep.update({str(target), str(folder / "last.ckpt")})
        if shape["hard_link"] is not None and shape["hard_link"] < n:
            target = paths[shape["hard_link"]]
            os.link(target, folder / "alias.bin")
            must_keep.add(str(target))
        if shape["best_copy"] is not None and shape["best_copy"] < n:
            copy = folder / "best-copy.ckpt"
            shutil.copyfile(paths[shape["best_copy"]], copy)
            must_keep.add(str(copy))
    return {"must_keep": must_keep, "exp_name": ranked, "run": by_run}


def unranked_paths(root: Path, runs: list[dict[str, Any]]) -> set[str]:
    return {
        str(root / s["exp"] / f"run{i}" / "checkpoints" / name)
        for i, s in enumerate(runs)
        for name in sorted(os.listdir(root / s["exp"] / f"run{i}" / "checkpoints"))
        if name.endswith(".ckpt")
        and name.startswith("epoch-")
        and int(name[6:8]) in s["unranked"]
        and int(name[6:8]) < s["epochs"]
    }


def checkpoints(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*.ckpt")}


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    runs=st.lists(run_shape, min_size=1, max_size=4),
    values=st.lists(
        st.floats(0.0, 1.0, allow_nan=False).map(lambda v: round(v, 6)),
        min_size=24,
        max_size=24,
        unique=True,
    ),
    policy=policies,
)
def test_apply_deletes_a_subset_keeps_the_never_delete_classes_and_is_idempotent(
    tmp_path_factory, db_url, runs, values, policy
):
    root = tmp_path_factory.mktemp("tree") / "outputs"
    try:
        written = build(root, runs, values)
        age_tree(root)
        sync(root, db_url)
        before = checkpoints(root)

        plan = plan_gc(root, db=db_url, by="val/hmean", **policy)
        result = apply_gc(plan)

        after = checkpoints(root)
        gone = before - after
        assert gone <= {item.checkpoint_path for item in plan.deletions}
        assert gone == set(result.deleted) and not result.skipped
        target(len(gone))  # lead hypothesis to trees where much is deleted
        must_keep = set(written["must_keep"])
        groups = (
            [[m for ms in written["run"].values() for m in ms]]
            if policy["per"] == "none"
            else written[policy["per"]].values()
        )
        for members in groups:  # the best K by hmean of each group
            must_keep |= {path for _, path in sorted(members)[-policy["keep_best"] :]}
        if not policy["include_unranked"]:
            must_keep |= unranked_paths(root, runs)
        assert must_keep <= after, sorted(must_keep - after)
        for path in gone:  # the sidecar went with its checkpoint
            assert not os.path.exists(path.removesuffix(".ckpt") + ".metadata.yaml")

        again = apply_gc(plan_gc(root, db=db_url, by="val/hmean", **policy))
        assert again.deleted == [] and again.skipped == [] and checkpoints(root) == after
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)
        if db_url.startswith("sqlite"):
            for suffix in ("", "-wal", "-shm"):
                Path(db_url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
        else:
            wipe(db_url)
