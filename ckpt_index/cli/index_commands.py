"""``sync``: bring the index in line with the files (the one command that fills the index)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from ckpt_index.cli.common import db_option, echo_escaped, friendly_errors, report_format_option

if TYPE_CHECKING:
    from ckpt_index.sync.roots import SyncSummary

#: How many invalid inputs the text summary lists (``validate`` lists them all).
_LISTED = 20


@click.command()
@click.argument("roots", nargs=-1, required=True, type=click.Path(file_okay=False))
@db_option
@click.option("--strict", is_flag=True, help="Exit 1 when any sidecar is invalid.")
@report_format_option
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bar on stderr [default: when stderr is a terminal].",
)
@click.option(
    "--no-infer",
    is_flag=True,
    help="Do not fill checkpoints without a sidecar from the fallbacks (checkpoint, "
    "Hydra config, W&B run, path names); index them as 'missing'.",
)
@click.option(
    "--wandb-online",
    is_flag=True,
    help="Ask the W&B API for runs not found on disk (with a timeout; cached).",
)
@click.option(
    "--full",
    is_flag=True,
    help="Read every file again, even those whose size and mtime are unchanged.",
)
@click.option(
    "--inspect",
    is_flag=True,
    help="Also read the pickle of checkpoints that have a sidecar, to record the "
    "globals torch.load(weights_only=True) would refuse (unsafe_globals).",
)
@friendly_errors
def sync(
    roots: tuple[str, ...],
    db: str | None,
    strict: bool,
    fmt: str,
    progress: bool | None,
    no_infer: bool,
    **options: Any,
) -> None:
    """Bring the index in line with the checkpoints and sidecars under ROOTS.

    Unchanged sidecars (same size and mtime) are not read again; rows whose files are gone are
    removed; invalid sidecars and unreadable checkpoints are recorded with their reason and
    never stop the sync. Checkpoints are read by worker processes under a memory and time
    limit ($CKPT_INDEX_WORKER_MEMORY_MB, default 512; $CKPT_INDEX_WORKER_SECONDS, default 30).

    Example:

    \b
        ckpt-index sync outputs/ --format json
        ckpt-index sync outputs/ --full --inspect
    """
    from ckpt_index.index.engine import disposing, open_engine
    from ckpt_index.sync.roots import sync_roots

    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = _ProgressBar() if show_bar else None
    try:
        with disposing(open_engine(db)) as engine:
            summary = sync_roots(engine, roots, progress=bar, infer=not no_infer, **options)
    finally:
        if bar:
            bar.close()
    if fmt == "json":
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        _print_summary(summary)
    if strict and (summary.invalid or summary.unreadable):
        raise click.ClickException(
            f"{summary.invalid} invalid sidecar(s), {summary.unreadable} unreadable "
            "checkpoint(s) (--strict)"
        )


def _print_summary(summary: SyncSummary) -> None:
    """The first invalid inputs and unlisted folders on stderr, then the one-line summary."""
    listed = [("invalid", path, reason) for path, reason in summary.invalid_files]
    listed += [("unreadable", path, reason) for path, reason in summary.unreadable_files]
    for word, path, reason in listed[:_LISTED]:
        echo_escaped(f"{word}: {path}: {reason}", err=True)
    for _path, reason in summary.unlisted_dirs[:_LISTED]:
        echo_escaped(f"not listed: {reason} (its rows were kept)", err=True)
    for path, reason in summary.dangling_links[:_LISTED]:
        echo_escaped(f"link not indexed: {path}: {reason}", err=True)
    if len(listed) > _LISTED:
        click.echo(
            f"... {len(listed) - _LISTED} more invalid or unreadable files "
            "(ckpt-index validate ROOT lists all)",
            err=True,
        )
    click.echo(summary.one_line())


class _ProgressBar:
    """A click progress bar on stderr, created once the total is known."""

    def __init__(self) -> None:
        self._bar: Any = None  # click's ProgressBar, entered on the first call
        self._done = 0

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = click.progressbar(length=total, label="syncing", file=sys.stderr)
            self._bar.__enter__()
        self._bar.update(done - self._done)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
