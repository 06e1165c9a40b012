"""Property: whatever the tree and the policy, a gc plan keeps every checkpoint of the classes
that are never deleted, and deletes exactly what the policy leaves, both computed here
independently of the planner.

Random trees: experiments with runs of a few epochs, hmean values drawn from a few (ties) or
missing, ``last.ckpt``/``best-*.ckpt`` links, pinned rows, active runs; the same tree indexed by
another location too, and a sibling tree outside the root. Real sidecars, real sync, on both
backends.
"""

from __future__ import annotations

import fnmatch
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.gc_trees import age_tree, ckpt_name, make_run
from helpers.index_rows import plain_engine, sync
from helpers.postgres import schema_url
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from ckpt_index.tools.gc_plan import GcPolicy, plan_gc

VALUES = st.one_of(st.none(), st.sampled_from([0.1, 0.4, 0.4, 0.7, 0.9]))


@dataclass(frozen=True)
class Run:
    exp: str
    name: str
    hmeans: tuple[float | None, ...]
    last_link: int | None  # epoch last.ckpt points at
    best_link: int | None  # epoch a best-*.ckpt points at
    pinned: frozenset[int]
    active: bool


@st.composite
def runs(draw: st.DrawFn) -> list[Run]:
    out = []
    for exp in draw(
        st.lists(st.sampled_from(["exp_a", "exp_b", "exp_c"]), min_size=1, max_size=2, unique=True)
    ):
        for name in draw(
            st.lists(st.sampled_from(["r1", "r2", "r3"]), min_size=1, max_size=2, unique=True)
        ):
            hmeans = tuple(draw(st.lists(VALUES, min_size=1, max_size=5)))
            epochs = st.integers(0, len(hmeans) - 1)
            out.append(
                Run(
                    exp=exp,
                    name=name,
                    hmeans=hmeans,
                    last_link=draw(st.none() | epochs),
                    best_link=draw(st.none() | epochs),
                    pinned=frozenset(draw(st.lists(epochs, max_size=2))),
                    active=draw(st.booleans()),
                )
            )
    return out


policies = st.builds(
    GcPolicy,
    keep_best=st.integers(1, 3),
    by=st.sampled_from(["val/hmean", "val/hmean:min", "hmean"]),
    per=st.sampled_from(["exp_name", "run", "none"]),
    keep_last=st.integers(1, 2),
    keep_every_epochs=st.none() | st.integers(2, 3),
    keep=st.sampled_from([(), ("*epoch-01_*",), ("exp_b/*",)]),
    include_active=st.booleans(),
    include_unranked=st.booleans(),
)


@dataclass
class Ckpt:
    rel: str
    run: Run
    epoch: int
    value: float | None


def build(root: Path, tree: list[Run]) -> list[Ckpt]:
    ckpts = []
    for run in tree:
        paths = make_run(root, run.exp, run.name, list(run.hmeans), pinned=run.pinned)
        folder = paths[0].parent
        if run.last_link is not None:
            (folder / "last.ckpt").symlink_to(ckpt_name(run.last_link))
        if run.best_link is not None:
            (folder / f"best-epoch={run.best_link:02d}.ckpt").symlink_to(ckpt_name(run.best_link))
        for epoch, value in enumerate(run.hmeans):
            rel = os.path.relpath(paths[epoch], root)
            ckpts.append(Ckpt(rel, run, epoch, value))
    return ckpts


def never_deleted(ckpts: list[Ckpt], policy: GcPolicy) -> set[str]:
    """The classes kept whatever the policy: best K per group, link targets, the newest of each
    run, pinned, active runs (unless included), unranked (unless included)."""
    keep: set[str] = set()
    groups: dict[str, list[Ckpt]] = {}
    for c in ckpts:
        if c.value is not None:
            key = {"exp_name": c.run.exp, "run": c.run.exp + "/" + c.run.name, "none": ""}
            groups.setdefault(key[policy.per], []).append(c)
    low_first = policy.by.endswith(":min")
    for members in groups.values():
        # Best first; ties to the higher epoch (every run's epochs share steps), then the path.
        members.sort(key=lambda c: (c.value if low_first else -(c.value or 0), -c.epoch, c.rel))
        keep.update(c.rel for c in members[: policy.keep_best])
    for c in ckpts:
        run = c.run
        if c.epoch in (run.last_link, run.best_link) or c.epoch in run.pinned:
            keep.add(c.rel)
        if c.epoch == len(run.hmeans) - 1:
            keep.add(c.rel)
        if run.active and not policy.include_active:
            keep.add(c.rel)
        if c.value is None and not policy.include_unranked:
            keep.add(c.rel)
    return keep


def policy_keeps(ckpts: list[Ckpt], policy: GcPolicy) -> set[str]:
    keep = set()
    for c in ckpts:
        if c.epoch >= len(c.run.hmeans) - policy.keep_last:
            keep.add(c.rel)
        every = policy.keep_every_epochs
        if every is not None and (c.epoch + 1) % every == 0:
            keep.add(c.rel)
        name = os.path.basename(c.rel)
        if any(fnmatch.fnmatchcase(c.rel, g) or fnmatch.fnmatchcase(name, g) for g in policy.keep):
            keep.add(c.rel)
    return keep


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One index per backend for every example (made once): each example syncs trees of its
    own into it, so rows of earlier examples are rows outside the root."""
    if request.param == "sqlite":
        yield "sqlite:///" + str(tmp_path_factory.mktemp("gc_property") / "index.db")
        return
    with schema_url(request.getfixturevalue("pg_admin_engine")) as url:
        yield url


@settings(
    max_examples=int(os.environ.get("GC_EXAMPLES", 40)),  # more: GC_EXAMPLES=500
    print_blob=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(tree=runs(), policy=policies)
def test_plan_keeps_every_never_deleted_class(db: str, tree: list[Run], policy: GcPolicy) -> None:
    # A metric no row has is a usage error (tested on its own), not a plan.
    assume(any(value is not None for run in tree for value in run.hmeans))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root, outside = base / "outputs", base / "outputs-old"
        ckpts = build(root, tree)
        build(outside, tree)
        for folder in (root, outside):
            age_tree(folder)
            sync(folder, db)
        sync(root, db, location="elsewhere")
        for run in {c.run for c in ckpts if c.run.active}:
            (root / run.exp / run.name / "train.log").write_text("epoch 1\n")

        plan = plan_gc(root, policy, db=db)

        items = {os.path.relpath(i.checkpoint_path, root): i for i in plan.items}
        assert set(items) == {c.rel for c in ckpts}  # nothing outside the root, nothing twice
        assert len(plan.items) == len(ckpts)
        elsewhere = _ids(db, "elsewhere")
        assert not {i.row_id for i in plan.items} & elsewhere
        protected = never_deleted(ckpts, policy)
        kept = {rel for rel, item in items.items() if item.action == "keep"}
        assert protected <= kept, sorted(protected - kept)
        expected = {c.rel for c in ckpts} - protected - policy_keeps(ckpts, policy)
        assert {os.path.relpath(i.checkpoint_path, root) for i in plan.deletions} == expected
        for item in plan.items:
            assert item.reasons, item  # every decision says why
            if item.action == "delete":
                assert item.ckpt_identity is not None and item.size > 0


def _ids(db: str, location: str) -> set[int]:
    engine = plain_engine(db)
    with engine.connect() as conn:
        ids = set(
            conn.scalars(text("SELECT id FROM checkpoints WHERE location = :l"), {"l": location})
        )
    engine.dispose()
    assert ids
    return ids
