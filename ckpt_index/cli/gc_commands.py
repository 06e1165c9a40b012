"""``ckpt-index gc``: free disk by deleting the checkpoints a retention policy does not keep.

A dry run by default: the plan is printed and nothing is written anywhere (not the index, not
the tree). ``--apply`` carries the plan out (:func:`ckpt_index.tools.gc_apply.apply_gc`).
"""

from __future__ import annotations

import json
import shutil
import sys
from typing import TYPE_CHECKING, Any

import click

from ckpt_index.cli import completion
from ckpt_index.cli.common import db_option, friendly_errors, table_format_option, write_data

if TYPE_CHECKING:
    from ckpt_index.tools.gc_plan import GcPlan


@click.command()
@click.argument("roots", nargs=-1, required=True, type=click.Path(file_okay=False, exists=True))
@click.option(
    "--keep-best",
    type=int,
    metavar="K",
    help="Keep the K best checkpoints by --by in each group (K >= 1).",
)
@click.option(
    "--by",
    metavar="METRIC[:max|min]",
    shell_complete=completion.complete_metric,
    help="The metric that ranks checkpoints (a field like hmean or any logged metric). "
    "Direction defaults to max, or min for names containing 'loss'.",
)
@click.option(
    "--per",
    type=click.Choice(("exp_name", "run", "none")),
    default=None,
    help="Rank within each experiment (default), each run folder, or all together.",
)
@click.option(
    "--keep-last",
    type=int,
    metavar="N",
    help="Also keep the N newest checkpoints of each run (default 1; the newest always stays).",
)
@click.option(
    "--keep-every-epochs",
    type=int,
    metavar="N",
    help="Also keep every Nth epoch ((epoch + 1) % N == 0, as every_n_epochs saves them).",
)
@click.option(
    "--keep",
    "keep",
    multiple=True,
    metavar="GLOB",
    help="Also keep checkpoints whose path relative to its root, or file name, matches GLOB "
    "(repeatable).",
)
@click.option(
    "--older-than",
    metavar="DURATION",
    help="Only delete files older than this: 30m, 12h, 7d, 2w, or seconds.",
)
@click.option(
    "--include-active",
    is_flag=True,
    default=None,
    help="Also delete from runs still being written (a file changed in the last 10 minutes).",
)
@click.option(
    "--include-unranked",
    is_flag=True,
    default=None,
    help="Also delete checkpoints without a value for the metric.",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Read the policy from FILE ([gc] table; [tool.ckpt-index.gc] in a pyproject.toml) "
    "instead of looking for ckpt-index.toml or pyproject.toml in the roots and their parents.",
)
@click.option("--apply", is_flag=True, help="Delete the checkpoints the plan deletes.")
@click.option(
    "--trash",
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="With --apply: move the files into DIR (outside the roots) instead of deleting them.",
)
@table_format_option
@db_option
@friendly_errors
def gc(
    roots: tuple[str, ...],
    config: str | None,
    apply: bool,
    trash: str | None,
    fmt: str,
    db: str | None,
    **flags: Any,
) -> None:
    """Delete the checkpoints under ROOT... that a retention policy does not keep (a dry run
    unless --apply).

    Kept whatever the flags: the best K by the metric in each group, every target of a link
    (last.ckpt, best-*.ckpt, an alias or another hard link), best*/last* names, the newest
    checkpoint of each run, pinned checkpoints, checkpoints of a run still being written and
    those without a value for the metric (unless --include-active / --include-unranked), and
    everything not in the index or indexed at another location. The plan lists every indexed
    checkpoint under the roots with KEEP or DELETE and the reasons. Without --keep-best and --by
    the policy comes from ckpt-index.toml ([gc]) or pyproject.toml ([tool.ckpt-index.gc]) in a
    root or its parents; flags override the file. Sync first: the plan is made from the index.

    --apply deletes one checkpoint at a time (the file, then its sidecar, then its row), after
    checking it again: one changed, linked, pinned or written to since the plan is skipped and
    reported with the reason. Killed, the next gc --apply finishes what it started. --trash DIR
    moves the files to DIR/<root's name>/<path under the root> instead (never overwriting: a
    taken name gets ~1, ~2; DIR/.ckpt-index-trash.jsonl lists where each came from); DIR must
    lie outside every root. Exit status 0 whenever it ran (skips included), 2 on usage errors.

    Example:

    \b
        ckpt-index gc outputs/ --keep-best 3 --by val/hmean
        ckpt-index gc outputs/ --keep-best 1 --by val/loss --per run --older-than 7d
        ckpt-index sync outputs/ && ckpt-index gc outputs/ --apply --trash /scratch/trash
    """
    from ckpt_index.query.names import QueryError
    from ckpt_index.tools.gc_config import GcConfigError, load_gc_config, make_policy
    from ckpt_index.tools.gc_plan import plan_gc

    try:
        settings = load_gc_config(roots, config)
        policy = make_policy(settings, **flags)
        plan = plan_gc(roots, policy, db=db)
    except (GcConfigError, QueryError) as exc:
        raise click.UsageError(str(exc)) from None
    if trash is None and settings.values.get("trash") is not None:
        trash = _trash_from_file(str(settings.values["trash"]), settings.source)
    if apply:
        _apply(plan, trash, fmt, db)
        return
    _print_plan(plan, fmt, trash)


def _trash_from_file(trash: str, source: str | None) -> str:
    """A ``trash`` of a policy file is relative to that file's folder (a cron job's working
    directory is anywhere); ``~`` is the user's home."""
    import os

    trash = os.path.expanduser(trash)
    return os.path.join(os.path.dirname(os.path.abspath(source)), trash) if source else trash


def _print_plan(plan: GcPlan, fmt: str, trash: str | None) -> None:
    from ckpt_index.tools.gc_plan import collector_paused
    from ckpt_index.tools.gc_render import render_plan

    with collector_paused():  # a line or a dict per item, all kept until written
        if fmt == "json":
            text = json.dumps(plan.to_dict(), indent=2)
        else:
            text = render_plan(plan, width=_width(), trash=trash)
    write_data(text + "\n")


def _width() -> int | None:
    """The terminal's width ($COLUMNS overrides it); None for a pipe (every value whole)."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size().columns


# ---- The --apply branch (H-apply fills this in: apply_gc, --trash checks, the report) ----------
def _apply(plan: GcPlan, trash: str | None, fmt: str, db: str | None) -> None:
    """Carry ``plan`` out with :func:`ckpt_index.tools.gc_apply.apply_gc`, one line per deletion
    as it happens (table) or the result at the end (json).

    Exit status 0 whenever the apply ran: a deletion skipped by a re-check (or one whose file
    could not be removed) is reported with its reason, not an error; a trash inside or holding a
    root is a usage error (2).
    """
    import os

    from ckpt_index.cli.common import echo_escaped
    from ckpt_index.query.table import human_size
    from ckpt_index.tools.gc_apply import TrashError, apply_gc, check_trash

    if trash is not None:
        try:
            check_trash(trash, plan.roots)
        except TrashError as exc:
            raise click.UsageError(str(exc)) from None

    def shown(item: Any) -> str:
        return os.path.relpath(item.checkpoint_path, item.root)

    def progress(item: Any, outcome: str) -> None:
        if fmt != "table":
            return
        if outcome.startswith("skipped: "):
            echo_escaped(f"skipped  {shown(item)}: {outcome.removeprefix('skipped: ')}")
        elif outcome.startswith("trashed to "):
            echo_escaped(f"trashed  {shown(item)} -> {outcome.removeprefix('trashed to ')}")
        else:
            echo_escaped(f"deleted  {shown(item)}{outcome.removeprefix('deleted')}")

    result = apply_gc(plan, trash=trash, progress=progress, db=db)
    if fmt == "json":
        write_data(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    for path in result.finished:
        echo_escaped(f"finished {path}: an interrupted deletion (its sidecar and row)")
    planned = {item.checkpoint_path for item in plan.deletions}
    for path, reason in result.skipped:
        if path not in planned:
            echo_escaped(f"skipped  {path}: {reason}")
    verb = "moved to the trash" if trash else "deleted"
    freed = result.bytes_freed
    click.echo(
        f"{verb} {len(result.deleted)} checkpoint(s) ({human_size(freed)}, {freed} bytes freed), "
        f"skipped {len(result.skipped)}"
        + (f", finished {len(result.finished)} interrupted" if result.finished else "")
    )
