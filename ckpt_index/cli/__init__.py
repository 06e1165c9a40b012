"""The ``ckpt-index`` command line: parse arguments, call the library, print.

Heavy libraries (torch, lightning, wandb, pandas) are never imported here; pydantic and alembic
only by the commands that need them.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from ckpt_index import __version__
from ckpt_index.vocabulary import GROUPABLE, PHASES, REPORT_FORMATS, RESULT_FORMATS

FORMAT_CHOICES = click.Choice(RESULT_FORMATS)


def db_option(func: Callable) -> Callable:
    return click.option(
        "--db",
        metavar="PATH|URL",
        default=None,
        help="Index database: a file path or SQLAlchemy URL "
        "[default: $CKPT_INDEX_DB, else ./ckpt_index.db].",
    )(func)


class NeedsSetup(click.ClickException):
    """No index there, or one a reading command cannot use before ``db upgrade`` (exit 2)."""

    exit_code = 2


def friendly_errors(func: Callable) -> Callable:
    """Turn the library's domain errors into one-line CLI errors (exit 1; 2 for an index that
    is missing or needs ``db upgrade``)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from sqlalchemy.exc import SQLAlchemyError

        from ckpt_index.index.engine import IndexError_, IndexMissingError, IndexOutdatedError

        try:
            return func(*args, **kwargs)
        except (IndexMissingError, IndexOutdatedError) as exc:
            raise NeedsSetup(str(exc)) from None
        except (IndexError_, NotADirectoryError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None
        except SQLAlchemyError as exc:
            detail = getattr(exc, "orig", None) or exc
            raise click.ClickException(
                f"database error: {exc.__class__.__name__}: {detail}"
            ) from None
        except Exception as exc:
            if type(exc).__name__ == "CommandError":  # alembic's, e.g. an unknown revision
                raise click.ClickException(f"alembic: {exc}") from None
            raise

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckpt-index")
def cli() -> None:
    """Index PyTorch Lightning checkpoints by their YAML sidecars and query them with SQL.

    Example:

        ckpt-index sync outputs/ && ckpt-index query --best-by hmean
    """


# --------------------------------------------------------------------------------------- sync
@cli.command()
@click.argument("roots", nargs=-1, required=True, type=click.Path(file_okay=False))
@db_option
@click.option("--strict", is_flag=True, help="Exit 1 when any sidecar is invalid.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(REPORT_FORMATS),
    default="text",
    show_default=True,
    help="Summary format.",
)
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
    wandb_online: bool,
    full: bool,
    inspect: bool,
) -> None:
    """Bring the index in line with the checkpoints and sidecars under ROOTS.

    Unchanged sidecars (same size and mtime) are not read again; rows whose files are gone are
    removed; invalid sidecars and unreadable checkpoints are recorded with their reason and
    never stop the sync. Checkpoints are read by worker processes under a memory and time
    limit ($CKPT_INDEX_WORKER_MEMORY_MB, default 512; $CKPT_INDEX_WORKER_SECONDS, default 30).

    Example:

        ckpt-index sync outputs/ --format json
        ckpt-index sync outputs/ --full --inspect
    """
    from ckpt_index.index.engine import open_engine
    from ckpt_index.sync.roots import sync_roots

    engine = open_engine(db)
    show_bar = sys.stderr.isatty() if progress is None else progress
    bar = _ProgressBar() if show_bar else None
    try:
        summary = sync_roots(
            engine,
            roots,
            progress=bar,
            infer=not no_infer,
            wandb_online=wandb_online,
            full=full,
            inspect=inspect,
        )
    finally:
        if bar:
            bar.close()
        engine.dispose()
    if fmt == "json":
        click.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        from ckpt_index.query.render import escape_control

        for path, reason in summary.invalid_files[:20]:
            click.echo(escape_control(f"invalid: {path}: {reason}"), err=True)
        for path, reason in summary.unlisted_dirs[:20]:
            click.echo(escape_control(f"not listed: {reason} (its rows were kept)"), err=True)
        if len(summary.invalid_files) > 20:
            click.echo(
                f"... {len(summary.invalid_files) - 20} more invalid inputs "
                "(ckpt-index validate ROOT lists all)",
                err=True,
            )
        click.echo(summary.one_line())
    if strict and (summary.invalid or summary.unreadable):
        raise click.ClickException(
            f"{summary.invalid} invalid sidecar(s), {summary.unreadable} unreadable "
            "checkpoint(s) (--strict)"
        )


class _ProgressBar:
    """A click progress bar on stderr, created once the total is known."""

    def __init__(self) -> None:
        self._bar = None
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


# -------------------------------------------------------------------------------------- query
@cli.command()
@db_option
@click.option(
    "--best-by",
    metavar="METRIC[:max|min]",
    help="Only the best checkpoint by METRIC (a field or any logged metric). Direction "
    "defaults to max, or min for names containing 'loss'.",
)
@click.option(
    "--group-by",
    type=click.Choice(GROUPABLE),
    help="With --best-by: the best checkpoint per group.",
)
@click.option("--encoder", help="Only this encoder (e.g. resnet50).")
@click.option("--architecture", help="Only this architecture (e.g. dbnet).")
@click.option("--exp", metavar="GLOB", help="Experiment name glob, e.g. 'ocr_*resnet50*'.")
@click.option("--phase", type=click.Choice(PHASES))
@click.option("--min-epoch", type=int)
@click.option("--max-epoch", type=int)
@click.option(
    "--where",
    "where",
    metavar="EXPR",
    help="Filter expression: hmean > 0.8 and encoder = 'resnet50' or val/loss < 0.03.",
)
@click.option("--sort", multiple=True, metavar="FIELD[:asc|desc]", help="Sort key (repeatable).")
@click.option("--limit", type=click.IntRange(min=0), help="At most N results.")
@click.option(
    "--include-orphans",
    is_flag=True,
    help="Also rows whose checkpoint file is gone (sidecar only).",
)
@click.option(
    "--include-unreadable",
    is_flag=True,
    help="Also checkpoints that could not be read (truncated, not a checkpoint): "
    "skipped by default, even under a valid sidecar.",
)
@click.option(
    "--location",
    help="Only rows indexed at this location (host name or "
    "$CKPT_INDEX_LOCATION of the machine that synced them).",
)
@click.option("--format", "fmt", type=FORMAT_CHOICES, default="table", show_default=True)
@click.option(
    "-0",
    "--null",
    "null",
    is_flag=True,
    help="With --format paths: end each path with a NUL instead of a newline (for "
    "xargs -0). Without it, a path holding a newline is an error.",
)
@friendly_errors
def query(
    db: str | None,
    best_by: str | None,
    group_by: str | None,
    encoder: str | None,
    architecture: str | None,
    exp: str | None,
    phase: str | None,
    min_epoch: int | None,
    max_epoch: int | None,
    where: str | None,
    sort: tuple[str, ...],
    limit: int | None,
    include_orphans: bool,
    include_unreadable: bool,
    location: str | None,
    fmt: str,
    null: bool,
) -> None:
    """Select checkpoints from the index.

    Exit status 1 when nothing matches, 2 for a usage error (a malformed --where included) or
    an index that is missing or needs `ckpt-index db upgrade` (a query never writes).

    Example:

        ckpt-index query --best-by hmean --encoder resnet50
        ckpt-index query --best-by val/loss --group-by exp_name --format json
        ckpt-index query --where "hmean > 0.8 and epoch >= 10" --sort hmean:desc --limit 5
        ckpt-index query --exp 'old_*' --format paths -0 | xargs -0 ls -l
    """
    from ckpt_index.query.render import PathsFormatError, render_paths, render_records
    from ckpt_index.query.spec import QueryError, QuerySpec, WhereError, parse_direction, run_query

    if null and fmt != "paths":
        raise click.UsageError("-0/--null goes with --format paths")
    spec = QuerySpec(
        best_by=best_by,
        group_by=group_by,
        encoder=encoder,
        architecture=architecture,
        exp=exp,
        phase=phase,
        min_epoch=min_epoch,
        max_epoch=max_epoch,
        where=where,
        sort=sort,
        limit=limit,
        include_orphans=include_orphans,
        include_unreadable=include_unreadable,
        location=location,
    )
    try:
        records = _read_index(db, lambda conn: run_query(conn, spec))
    except (WhereError, QueryError) as exc:
        raise click.UsageError(str(exc)) from None
    if not records:
        click.echo("no checkpoint matches", err=True)
        sys.exit(1)
    if fmt == "paths":
        try:
            text = render_paths(records, null=null)
        except PathsFormatError as exc:
            raise click.ClickException(str(exc)) from None
        _write_data(text if null else text + "\n")
        return
    options: dict[str, Any] = {}
    if fmt == "table":
        options["metric"] = parse_direction(best_by)[0] if best_by else None
        if limit is None and sys.stdout.isatty():
            options["max_rows"] = max(10, shutil.get_terminal_size().lines - 4)
    _write_data(render_records(records, fmt, **options) + "\n")


def _write_data(text: str) -> None:
    """Write output as it is: click.echo strips ANSI sequences when stdout is not a terminal,
    which would change a path or a CSV value (the table escapes them before this)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def _read_index(db: str | None, read: Callable[[Any], Any]) -> Any:
    """``read(conn)`` on the index opened read-only at head: nothing is created or migrated."""
    from ckpt_index.index.engine import check_unlocked_read, open_engine

    engine = open_engine(db, readonly=True)
    try:
        with engine.connect() as conn:
            result = read(conn)
        check_unlocked_read(engine)
        return result
    finally:
        engine.dispose()


# --------------------------------------------------------------------------------------- show
@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@db_option
@friendly_errors
def show(checkpoint: str, db: str | None) -> None:
    """Print everything the index knows about one checkpoint, as JSON, whatever its status
    (an unreadable checkpoint shows why in "error"). "unsafe_globals" lists the pickle globals
    torch.load(weights_only=True) would refuse; the file is read now (isolated) when the index
    does not know them.

    Example:

        ckpt-index show outputs/exp/checkpoints/epoch-10_step-005420.ckpt
    """
    from ckpt_index.query.spec import find_checkpoint

    record = _read_index(db, lambda conn: find_checkpoint(conn, _index_path(checkpoint)))
    if record is None:
        click.echo(f"{_index_path(checkpoint)}: not in the index (run ckpt-index sync)", err=True)
        sys.exit(1)
    if (
        record["unsafe_globals"] is None
        and record["checkpoint_exists"]
        and record["status"] != "unreadable"
    ):
        record["unsafe_globals"] = _inspect_now(record["checkpoint_path"])
    click.echo(json.dumps(record, indent=2))


def _inspect_now(path: str) -> list[str] | None:
    """What loading ``path`` would run, read now in an isolated worker (the index is not written)."""
    from ckpt_index.isolation.pool import run_isolated

    outcome = run_isolated("inspect_checkpoint", [path])
    return outcome.value[1] if outcome.ok else None


def _index_path(path: str) -> str:
    """How the index spells a checkpoint path: the folder resolved, the file name as it is."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(folder), name)


# ----------------------------------------------------------------------------------- validate
@cli.command()
@click.argument("root", type=click.Path(file_okay=False))
@click.option(
    "--format", "fmt", type=click.Choice(REPORT_FORMATS), default="text", show_default=True
)
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
    reasons, stale sidecars (older than their checkpoint), checkpoints without metadata, and the
    pickle globals torch.load(weights_only=True) would refuse in each checkpoint. Checkpoints
    are read by isolated workers. Exit 1 if anything is invalid or unreadable.

    Example:

        ckpt-index validate outputs/ --format json
        ckpt-index validate outputs/ --no-checkpoints
    """
    from ckpt_index.tools.validate import validate_tree

    report = validate_tree(root, checkpoints=checkpoints)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        from ckpt_index.query.render import escape_control

        def line(text: str) -> None:  # names come from the tree: never raw to a terminal
            click.echo(escape_control(text))

        for path, reason in report.invalid:
            line(f"invalid: {path}: {reason}")
        for path, warning in report.warnings:
            line(f"warning: {path}: {warning}")
        for path in report.without_metadata:
            line(f"no metadata: {path}")
        for path in report.orphaned:
            line(f"orphaned sidecar (no checkpoint): {path}")
        for path, reason in report.unreadable:
            line(f"unreadable: {path}: {reason}")
        for path, names in report.unsafe_globals.items():
            line(f"needs weights_only=False: {path}: {', '.join(names)}")
        click.echo(
            f"{len(report.valid)} valid, {len(report.invalid)} invalid, "
            f"{len(report.without_metadata)} checkpoints without metadata, "
            f"{len(report.orphaned)} orphaned sidecars, {len(report.unreadable)} unreadable, "
            f"{len(report.stale)} stale, {len(report.unsafe_globals)} with unsafe globals"
        )
    if not report.ok:
        sys.exit(1)


# -------------------------------------------------------------------------------------- stats
@cli.command()
@db_option
@click.option(
    "--format", "fmt", type=click.Choice(REPORT_FORMATS), default="text", show_default=True
)
@friendly_errors
def stats(db: str | None, fmt: str) -> None:
    """Counts of what the index holds.

    Example:

        ckpt-index stats --format json
    """
    from ckpt_index.index.engine import resolve_db_url
    from ckpt_index.query.render import escape_control
    from ckpt_index.query.stats import index_stats

    data = {"database": _safe_url(resolve_db_url(db)), **_read_index(db, index_stats)}
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        click.echo(f"{key + ':':<20}{escape_control(str(value))}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ---------------------------------------------------------------------------------------- sql
@cli.command()
@click.argument("statement")
@db_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(RESULT_FORMATS[:-1]),
    default="table",
    show_default=True,
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Stop the statement after this long (0: no limit).",
)
@click.option(
    "--allow-write-role",
    is_flag=True,
    help="PostgreSQL: run even as a superuser or a role that can write to the index "
    "(refused by default: a READ ONLY transaction does not stop COPY ... TO "
    "PROGRAM or dblink_exec).",
)
@friendly_errors
def sql(statement: str, db: str | None, fmt: str, timeout: float, allow_write_role: bool) -> None:
    """Run one read-only SQL statement against the index; writes are refused.

    Tables: checkpoints, checkpoint_metrics (checkpoint_id, name, value); view
    checkpoint_metrics_flat. An index at an older revision is read as it is (never migrated).
    Rows are printed as they arrive. Exit status 1 when the statement is refused, fails or runs
    past --timeout; 2 when there is no index.

    Example:

        ckpt-index sql "SELECT encoder, max(hmean) FROM checkpoints GROUP BY encoder"
        ckpt-index sql --timeout 300 --format csv "SELECT * FROM checkpoint_metrics_flat"
        ckpt-index sql --allow-write-role --db postgresql+psycopg://admin@db/ckpt "SELECT 1"
    """
    from ckpt_index.index.engine import check_unlocked_read
    from ckpt_index.index.readonly import ReadOnlyError, read_only_engine, stream_sql
    from ckpt_index.query.render import stream_rows

    engine = read_only_engine(db)
    try:
        with stream_sql(
            engine, statement, timeout=timeout, allow_write_role=allow_write_role
        ) as result:
            for piece in stream_rows(result.columns, result.batches, fmt):
                sys.stdout.write(piece)
        check_unlocked_read(engine)
        _write_data("\n")
    except ReadOnlyError as exc:
        raise click.ClickException(str(exc)) from None
    except BrokenPipeError:
        # The reader went away (| head): stop quietly, and keep Python's exit flush from failing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------------------- db
@cli.group("db")
def db_group() -> None:
    """Schema migrations of the index (alembic).

    Example:

        ckpt-index db current
    """


@db_group.command("upgrade")
@click.argument("revision", default="head")
@db_option
@friendly_errors
def db_upgrade(revision: str, db: str | None) -> None:
    """Upgrade the index schema to REVISION (default: head).

    Example:

        ckpt-index db upgrade --db team.db
    """
    from ckpt_index.index.engine import (
        HEAD_REVISION,
        SchemaTooNewError,
        create_index_engine,
        current_revision,
        known_revisions,
        resolve_db_url,
        upgrade,
    )

    url = resolve_db_url(db)
    engine = create_index_engine(url)
    try:
        with engine.connect() as conn:
            found = current_revision(conn)
        if found is not None and found not in known_revisions():
            raise SchemaTooNewError(url, found, HEAD_REVISION)
        upgrade(engine, url, revision)
        with engine.connect() as conn:
            click.echo(f"at revision {current_revision(conn)}")
    finally:
        engine.dispose()


@db_group.command("downgrade")
@click.argument("revision")
@db_option
@friendly_errors
def db_downgrade(revision: str, db: str | None) -> None:
    """Downgrade the index schema to REVISION ('base' drops everything).

    Example:

        ckpt-index db downgrade base
    """
    from ckpt_index.index.engine import (
        create_index_engine,
        current_revision,
        downgrade,
        resolve_db_url,
    )

    url = resolve_db_url(db)
    engine = create_index_engine(url)
    try:
        downgrade(engine, url, revision)
        with engine.connect() as conn:
            click.echo(f"at revision {current_revision(conn) or 'base'}")
    finally:
        engine.dispose()


@db_group.command("current")
@db_option
@friendly_errors
def db_current(db: str | None) -> None:
    """Print the index's schema revision and this release's head.

    Example:

        ckpt-index db current
    """
    from ckpt_index.index.engine import (
        HEAD_REVISION,
        create_index_engine,
        current_revision,
        resolve_db_url,
    )

    url = resolve_db_url(db)
    engine = create_index_engine(url, readonly=True)  # looking must not create a database
    try:
        with engine.connect() as conn:
            found = current_revision(conn)
    finally:
        engine.dispose()
    state = "up to date" if found == HEAD_REVISION else f"head is {HEAD_REVISION}"
    click.echo(f"{found or 'base (empty)'} ({state})")


@db_group.command("history")
def db_history() -> None:
    """List the schema revisions this release ships, newest first.

    Example:

        ckpt-index db history
    """
    from alembic.script import ScriptDirectory

    from ckpt_index.index.engine import _MIGRATIONS

    for rev in ScriptDirectory(str(_MIGRATIONS)).walk_revisions():
        click.echo(f"{rev.down_revision or 'base'} -> {rev.revision}: {rev.doc}")


# ------------------------------------------------------------------------------------ convert
@cli.command()
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
@click.option(
    "--format", "fmt", type=click.Choice(REPORT_FORMATS), default="text", show_default=True
)
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

        ckpt-index convert --outputs-dir outputs/ --dry-run -v
    """
    import logging

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
        click.echo(f"Converted:               {summary.converted}")
        click.echo(f"Skipped (existing):      {summary.skipped}")
        click.echo(f"Failed:                  {summary.failed}")
    if summary.failed:
        sys.exit(1)


# ------------------------------------------------------------------------------------- rename
@cli.command()
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
@click.option(
    "--format", "fmt", type=click.Choice(REPORT_FORMATS), default="text", show_default=True
)
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

        ckpt-index rename outputs/ --dry-run -v
        ckpt-index rename outputs/ --delete-old --keep-from-epoch 10
    """
    import logging

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


# --------------------------------------------------------------------------------------- demo
@cli.command()
@click.argument("directory", default="demo_outputs", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
def demo(directory: str, seed: int) -> None:
    """Write a small demo outputs tree (8 experiments, seed-format sidecars) to DIRECTORY.

    Example:

        ckpt-index demo demo_outputs && ckpt-index sync demo_outputs
    """
    from ckpt_index.tools.demo import make_demo_tree

    if os.path.exists(directory) and os.listdir(directory):
        raise click.ClickException(f"{directory} exists and is not empty")
    paths = make_demo_tree(directory, seed=seed)
    click.echo(f"wrote {len(paths)} checkpoints under {directory}")


def main() -> None:
    cli(prog_name="ckpt-index")


if __name__ == "__main__":
    main()
