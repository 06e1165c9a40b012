"""Disk commands: ``du`` (what the indexed checkpoints use, from the index) and ``pin`` /
``unpin`` (checkpoints ``gc`` must never delete, recorded in their sidecars)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

from ckpt_index.cli.common import (
    F,
    db_option,
    echo_escaped,
    friendly_errors,
    report_format_option,
    table_format_option,
    write_data,
)

if TYPE_CHECKING:
    from ckpt_index.tools.du import DiskUsage
    from ckpt_index.tools.pin import PinOutcome

#: ``--by`` of ``du`` (ckpt_index.tools.du.BY_CHOICES, spelled here: the CLI stays light).
_BY_CHOICES = ("exp_name", "encoder", "phase", "status", "run")


@click.command()
@click.argument("roots", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--by",
    type=click.Choice(_BY_CHOICES),
    default="exp_name",
    show_default=True,
    help="Group by experiment, encoder, training phase, status, or run (the checkpoint's folder).",
)
@table_format_option
@db_option
@friendly_errors
def du(roots: tuple[str, ...], by: str, fmt: str, db: str | None) -> None:
    """Disk used by the indexed checkpoints (file and sidecar), per group, largest first.

    From the index as the last sync saw it: this machine's checkpoints whose file exists, under
    the ROOTs when given. Reads only: a missing index exits 2.

    Example:

    \b
        ckpt-index du
        ckpt-index du outputs/ --by run
        ckpt-index du --by encoder --format json
    """
    from ckpt_index.tools.du import disk_usage

    usage = disk_usage(roots or None, by=by, db=db)
    if fmt == "json":
        click.echo(json.dumps(usage.to_dict(), indent=2))
    else:
        write_data(_usage_table(usage) + "\n")


def _usage_table(usage: DiskUsage) -> str:
    """One line per group (escaped: names come from files), then the total."""
    from ckpt_index.query.render import escape_control
    from ckpt_index.query.table import display_path

    def name(group: str | None) -> str:
        if group is None:
            return "-"
        return escape_control(display_path(group) if usage.by == "run" else group)

    total = usage.total
    rows = [(name(g.group), str(g.count), g.size) for g in usage.groups]
    rows.append(("total", str(total.count), total.size))
    header = (usage.by.upper(), "CHECKPOINTS", "SIZE")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    lines = [
        f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}"
        for row in [header, *rows]
    ]
    return "\n".join(lines)


def _pin_options(func: F) -> F:
    """PATH... and the options ``pin`` and ``unpin`` share."""
    func = friendly_errors(func)
    func = db_option(func)
    func = report_format_option(func)
    paths = click.Path(exists=True, dir_okay=False)
    return click.argument("paths", nargs=-1, required=True, type=paths)(func)


@click.command()
@_pin_options
def pin(paths: tuple[str, ...], fmt: str, db: str | None) -> None:
    """Pin checkpoints: ckpt-index gc never deletes them.

    Writes `pinned: true` into each checkpoint's sidecar (the rest of its text is kept byte for
    byte; a checkpoint without a sidecar gets one, made from the fallbacks as convert makes
    it), then updates its row in the index. A link (last.ckpt, best-*.ckpt) pins the checkpoint
    it points to. An invalid sidecar is refused with its reason, never rewritten. Exit 1 when a
    path could not be pinned.

    Example:

    \b
        ckpt-index pin outputs/exp/checkpoints/epoch-03_step-000120.ckpt
        ckpt-index query --pinned
    """
    _pin_or_unpin(True, paths, fmt, db)


@click.command()
@_pin_options
def unpin(paths: tuple[str, ...], fmt: str, db: str | None) -> None:
    """Unpin checkpoints: remove the `pinned` line from their sidecars, then update their rows.

    A checkpoint that is not pinned is left as it is. Exit 1 when a path could not be unpinned.

    Example:

    \b
        ckpt-index unpin outputs/exp/checkpoints/last.ckpt
    """
    _pin_or_unpin(False, paths, fmt, db)


def _pin_or_unpin(pinned: bool, paths: tuple[str, ...], fmt: str, db: str | None) -> None:
    from ckpt_index.tools import pin as pin_tool

    outcomes = (pin_tool.pin if pinned else pin_tool.unpin)(list(paths), db)
    if fmt == "json":
        click.echo(json.dumps([o.to_dict() for o in outcomes], indent=2))
    else:
        for outcome in outcomes:
            _print_outcome(outcome, "pin" if pinned else "unpin")
    if not all(o.ok for o in outcomes):
        sys.exit(1)


def _print_outcome(outcome: PinOutcome, verb: str) -> None:
    from ckpt_index.query.table import display_path

    shown = display_path(outcome.checkpoint_path or outcome.path)
    if outcome.error is not None:
        echo_escaped(f"cannot {verb} {display_path(outcome.path)}: {outcome.error}", err=True)
        return
    notes = []
    if outcome.created and outcome.sidecar_path:
        notes.append(f"new sidecar {display_path(outcome.sidecar_path)}, made from the fallbacks")
    if outcome.rewritten:
        notes.append(f"sidecar rewritten whole, comments and layout not kept: {outcome.rewritten}")
    if display_path(outcome.path) != shown:
        notes.append(f"through {display_path(outcome.path)}")
    if outcome.action in ("already pinned", "not pinned"):
        notes.append("nothing to do")
    suffix = f" ({'; '.join(notes)})" if notes else ""
    echo_escaped(f"{outcome.action}: {shown}{suffix}")
