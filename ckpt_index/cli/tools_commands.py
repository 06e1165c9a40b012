"""The tools around the index: ``validate`` (the tree, not the index), ``convert`` (sidecars for
old checkpoints), ``rename`` (old names to the naming scheme) and ``demo``."""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING

import click

from ckpt_index.cli.common import db_option, echo_escaped, friendly_errors, report_format_option

if TYPE_CHECKING:
    from ckpt_index.tools.validate import ValidationReport


@click.command()
@click.argument("root", type=click.Path(file_okay=False))
@report_format_option
@click.option(
    "--checkpoints/--no-checkpoints",
    default=True,
    show_default=True,
    help="Read each checkpoint (integrity, unsafe globals) as well as the sidecars.",
)
@friendly_errors
def validate(root: str, fmt: str, checkpoints: bool) -> None:
    """Check every sidecar and checkpoint under ROOT (the index is not touched).

    Lists invalid sidecars and unreadable checkpoints (truncated, not a checkpoint) with their
    reasons, stale sidecars (older than their checkpoint), orphaned sidecars, checkpoints
    without sidecar, and the pickle globals torch.load(weights_only=True) would refuse in each
    checkpoint, in the words sync uses. Checkpoints are read by isolated workers. Exit 1 if
    anything is invalid or unreadable.

    Example:

    \b
        ckpt-index validate outputs/ --format json
        ckpt-index validate outputs/ --no-checkpoints
    """
    from ckpt_index.tools.validate import validate_tree

    report = validate_tree(root, checkpoints=checkpoints)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)
    if not report.ok:
        sys.exit(1)


def _print_report(report: ValidationReport) -> None:
    """One line per file worth a look, then the counts, in the words ``sync`` uses."""
    for path, reason in report.invalid:
        echo_escaped(f"invalid: {path}: {reason}")
    for path, reason in report.unreadable:
        echo_escaped(f"unreadable: {path}: {reason}")
    for path in report.stale:
        echo_escaped(f"stale: {path}: the checkpoint is newer than its sidecar")
    for path in report.orphaned:
        echo_escaped(f"orphaned sidecar: {path}: its checkpoint is gone")
    for path in report.without_sidecar:
        echo_escaped(f"without sidecar: {path}")
    for path, warning in report.warnings:
        echo_escaped(f"warning: {path}: {warning}")
    for path, names in report.unsafe_globals.items():
        echo_escaped(f"needs weights_only=False: {path}: {', '.join(names)}")
    for path, reason in report.dangling_links:
        echo_escaped(f"link not indexed: {path}: {reason}")
    click.echo(
        f"{len(report.valid)} valid sidecars, {len(report.invalid)} invalid, "
        f"{len(report.unreadable)} unreadable; {len(report.without_sidecar)} without sidecar, "
        f"{len(report.orphaned)} orphaned sidecars, {len(report.stale)} stale, "
        f"{len(report.unsafe_globals)} with unsafe globals"
        + (f", {len(report.dangling_links)} links not indexed" if report.dangling_links else "")
    )


@click.command()
@click.option(
    "--checkpoint",
    "checkpoint",
    type=click.Path(dir_okay=False, exists=True),
    help="Convert one checkpoint.",
)
@click.option(
    "--exp-dir",
    type=click.Path(file_okay=False, exists=True),
    help="Convert the checkpoints of one experiment directory.",
)
@click.option(
    "--outputs-dir",
    type=click.Path(file_okay=False, exists=True),
    help="Convert every checkpoint under an outputs directory.",
)
@click.option("--force", is_flag=True, help="Overwrite existing sidecars.")
@click.option("--dry-run", is_flag=True, help="Show what would be converted; write nothing.")
@click.option("--no-recursive", is_flag=True, help="Only checkpoints directly in the directory.")
@click.option("--wandb-online", is_flag=True, help="Ask the W&B API for runs not on disk.")
@click.option("-v", "--verbose", is_flag=True, help="Log each checkpoint (DEBUG level).")
@report_format_option
def convert(
    checkpoint: str | None,
    exp_dir: str | None,
    outputs_dir: str | None,
    force: bool,
    dry_run: bool,
    no_recursive: bool,
    wandb_online: bool,
    verbose: bool,
    fmt: str,
) -> None:
    """Write sidecars for checkpoints without one, from the checkpoint (read safely), its Hydra
    config, its W&B run and its path. Existing sidecars are kept unless --force.

    Example:

    \b
        ckpt-index convert --outputs-dir outputs/ --dry-run -v
    """
    from ckpt_index.tools.convert import convert_checkpoints, find_checkpoints

    chosen = [x for x in (checkpoint, exp_dir, outputs_dir) if x]
    if len(chosen) != 1:
        raise click.UsageError("give exactly one of --checkpoint, --exp-dir, --outputs-dir")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(message)s",
        stream=sys.stderr,
    )
    paths = [checkpoint] if checkpoint else find_checkpoints(chosen[0], recursive=not no_recursive)
    summary = convert_checkpoints(paths, force=force, dry_run=dry_run, wandb_online=wandb_online)
    if fmt == "json":
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        for path, reason in summary.failures:
            click.echo(f"failed: {path}: {reason}", err=True)
        click.echo("Conversion summary" + (" (dry run: nothing written)" if dry_run else ""))
        click.echo(f"Total checkpoints found: {summary.found}")
        label = "Would convert:" if dry_run else "Converted:"
        click.echo(f"{label:<25}{summary.converted}")
        click.echo(f"Skipped (existing):      {summary.skipped}")
        click.echo(f"Failed:                  {summary.failed}")
    if summary.failed:
        sys.exit(1)


@click.command()
@click.argument("root", type=click.Path(file_okay=False, exists=True))
@db_option
@click.option("--dry-run", is_flag=True, help="Show what would be done; change nothing.")
@click.option(
    "--delete-old",
    is_flag=True,
    help="Delete checkpoints of epochs before --keep-from-epoch (never best*/last*).",
)
@click.option(
    "--keep-from-epoch",
    type=click.IntRange(min=0),
    metavar="N",
    help="With --delete-old: keep epochs >= N.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every action.")
@report_format_option
def rename(
    root: str,
    db: str | None,
    dry_run: bool,
    delete_old: bool,
    keep_from_epoch: int | None,
    verbose: bool,
    fmt: str,
) -> None:
    """Rename checkpoints from older formats to the naming scheme (epoch-XX_step-XXXXXX.ckpt),
    moving their sidecars and updating the index. Existing files are never overwritten.

    Example:

    \b
        ckpt-index rename outputs/ --dry-run -v
        ckpt-index rename outputs/ --delete-old --keep-from-epoch 10
    """
    from ckpt_index.tools.rename import rename_checkpoints

    if delete_old and keep_from_epoch is None:
        raise click.UsageError("--delete-old needs --keep-from-epoch N")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(message)s", stream=sys.stderr
    )
    summary = rename_checkpoints(
        root, dry_run=dry_run, delete_old=delete_old, keep_from_epoch=keep_from_epoch, db=db
    )
    if fmt == "json":
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        for action in summary.actions:
            if action.kind in ("skip", "error"):
                click.echo(f"{action.kind}: {action.path}: {action.reason}", err=True)
        prefix = "dry run: " if dry_run else ""
        click.echo(
            f"{prefix}processed {summary.processed}, renamed {summary.renamed}, deleted "
            f"{summary.deleted}, skipped {summary.skipped}, errors {summary.errors}"
        )
    if summary.errors:
        sys.exit(1)


@click.command()
@click.argument("directory", default="demo_outputs", type=click.Path(file_okay=False))
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed of the demo metrics."
)
def demo(directory: str, seed: int) -> None:
    """Write a small demo outputs tree (8 experiments, seed-format sidecars) to DIRECTORY.

    The experiments form a small sweep over the learning rate and the batch size, recorded in
    the sidecars' hyperparameters (params.model.optimizer.lr, params.data.batch_size).

    Example:

    \b
        ckpt-index demo demo_outputs && ckpt-index sync demo_outputs
        ckpt-index query --group-by params.model.optimizer.lr --best-by hmean
    """
    from ckpt_index.tools.demo import make_demo_tree

    if os.path.exists(directory) and os.listdir(directory):
        raise click.ClickException(f"{directory} exists and is not empty")
    paths = make_demo_tree(directory, seed=seed)
    click.echo(f"wrote {len(paths)} checkpoints under {directory}")
