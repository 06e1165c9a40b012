"""The reading commands: ``query``, ``show``, ``stats`` and ``sql``. None of them writes to the
index: a missing index, or one that needs ``db upgrade``, exits 2 (``sql`` reads an older one as
it is)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from ckpt_index.cli import completion
from ckpt_index.cli.common import (
    F,
    db_option,
    format_option,
    friendly_errors,
    read_index,
    report_format_option,
    write_data,
)
from ckpt_index.vocabulary import GROUPABLE, PHASES, RESULT_FORMATS

if TYPE_CHECKING:
    from ckpt_index.query.columns import Picked
    from ckpt_index.query.params import ParamsWanted
    from ckpt_index.query.table import Screen

#: The options of ``query`` that are fields of QuerySpec, passed to it by name.
_QUERY_SPEC_OPTIONS: list[Callable[[F], F]] = [
    click.option(
        "--best-by",
        metavar="METRIC[:max|min]",
        shell_complete=completion.complete_metric,
        help="Only the best checkpoint by METRIC (a field or any logged metric). Direction "
        "defaults to max, or min for names containing 'loss'.",
    ),
    click.option(
        "--group-by",
        metavar=f"[{'|'.join(GROUPABLE)}|params.NAME]",
        shell_complete=lambda ctx, param, incomplete: [
            name for name in GROUPABLE if name.startswith(incomplete)
        ],
        help="With --best-by: the best checkpoint per group (per value of a hyperparameter "
        "with params.NAME).",
    ),
    click.option(
        "--encoder",
        shell_complete=completion.complete_encoder,
        help="Only this encoder (e.g. resnet50).",
    ),
    click.option(
        "--architecture",
        shell_complete=completion.complete_architecture,
        help="Only this architecture (e.g. dbnet).",
    ),
    click.option(
        "--exp",
        metavar="GLOB",
        shell_complete=completion.complete_exp,
        help="Experiment name glob, e.g. 'ocr_*resnet50*'.",
    ),
    click.option("--phase", type=click.Choice(PHASES), help="Only this training_phase."),
    click.option("--min-epoch", type=int, metavar="N", help="Only epoch >= N."),
    click.option("--max-epoch", type=int, metavar="N", help="Only epoch <= N."),
    click.option(
        "--where",
        "where",
        metavar="EXPR",
        help="Filter expression: hmean > 0.8 and encoder = 'resnet50' or val/loss < 0.03.",
    ),
    click.option(
        "--sort",
        multiple=True,
        metavar="FIELD[:asc|desc]",
        shell_complete=completion.complete_sort_key,
        help="Sort key (repeatable).",
    ),
    click.option("--limit", type=click.IntRange(min=0), help="At most N results."),
    click.option(
        "--include-orphans",
        is_flag=True,
        help="Also rows whose checkpoint file is gone (sidecar only).",
    ),
    click.option(
        "--include-unreadable",
        is_flag=True,
        help="Also checkpoints that could not be read (truncated, not a checkpoint): "
        "skipped by default, even under a valid sidecar.",
    ),
    click.option(
        "--location",
        help="Only rows indexed at this location (host name or "
        "$CKPT_INDEX_LOCATION of the machine that synced them).",
    ),
    click.option(
        "--pinned",
        is_flag=True,
        help="Only pinned checkpoints (ckpt-index pin; gc never deletes them).",
    ),
]


def spec_options(func: F) -> F:
    """The query options (--best-by, --where, --exp, ...), passed as QuerySpec fields."""
    for option in reversed(_QUERY_SPEC_OPTIONS):
        func = option(func)
    return func


@click.command()
@db_option
@spec_options
@format_option(
    RESULT_FORMATS,
    "table",
    "table for people; json, jsonl and csv for scripts; paths prints checkpoint paths.",
)
@click.option(
    "--columns",
    metavar="NAME,...",
    help="The columns to show, in every format but paths: fields (path, size, created, "
    "exp_name, ...), metrics (metrics.val/loss, or a bare metric name) and hyperparameters "
    "(params.model.lr).",
)
@click.option(
    "--varying",
    is_flag=True,
    help="Add as columns the hyperparameters whose values differ among the checkpoints shown "
    "(what a sweep varied); in JSON, params holds only those.",
)
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
    db: str | None, fmt: str, columns: str | None, varying: bool, null: bool, **spec_fields: Any
) -> None:
    """Select checkpoints from the index.

    On a terminal the table fits the window: the columns that fit (those ranked, sorted or
    filtered by always), long names elided in the middle, and at most a screenful of rows
    unless --limit is given ($COLUMNS and $LINES override its size); piped, the table is
    plain, every row and value whole. JSON and CSV hold
    every value whole; no match is [] in JSON and the header in CSV.

    Exit status 1 when nothing matches, 2 for a usage error (a malformed --where included) or
    an index that is missing or needs `ckpt-index db upgrade` (a query never writes).

    Example:

    \b
        ckpt-index query --best-by hmean --encoder resnet50
        ckpt-index query --best-by val/loss --group-by exp_name --format json
        ckpt-index query --where "hmean > 0.8 and epoch >= 10" --sort hmean:desc --limit 5
        ckpt-index query --columns path,size,created,metrics.val/loss --format csv
        ckpt-index query --columns path,hmean,params.model.lr --sort params.model.lr
        ckpt-index query --exp 'sweep_*' --varying --sort hmean:desc
        ckpt-index query --exp 'old_*' --format paths -0 | xargs -0 ls -l
    """
    from ckpt_index.query.columns import ColumnError, read_columns
    from ckpt_index.query.spec import QueryError, QuerySpec, WhereError, run_query

    if null and fmt != "paths":
        raise click.UsageError("-0/--null goes with --format paths")
    spec = QuerySpec(**spec_fields)

    def read(conn: Any) -> tuple[list[dict[str, Any]], Picked]:
        wanted = _params_wanted(conn, fmt, columns, varying, spec)
        records = run_query(conn, spec, params=wanted)
        return records, read_columns(conn, records, columns, spec, wanted.found_varying)

    try:
        records, picked = read_index(db, read)
    except (WhereError, QueryError, ColumnError) as exc:
        raise click.UsageError(str(exc)) from None
    if fmt == "paths":
        _write_paths(records, null)
    else:
        _write_records(records, fmt, picked)
    if not records:
        click.echo("no checkpoint matches", err=True)
        sys.exit(1)


def _params_wanted(
    conn: Any, fmt: str, columns: str | None, varying: bool, spec: Any
) -> ParamsWanted:
    """The hyperparameters the records must carry: every one for JSON rows, those named by
    --columns, --where, --sort, ... otherwise, plus --varying's (none for paths)."""
    from ckpt_index.query.columns import planned_params
    from ckpt_index.query.params import ParamsWanted

    if fmt == "paths":
        return ParamsWanted()
    every = fmt in ("json", "jsonl") and columns is None and not varying
    return ParamsWanted(every=every, names=planned_params(conn, columns, spec), varying=varying)


def _write_paths(records: list[dict[str, Any]], null: bool) -> None:
    """One path a line, or NUL-terminated with ``-0``; a path holding a newline is refused
    without ``-0`` (it would read as two paths)."""
    from ckpt_index.query.render import PathsFormatError, render_paths

    try:
        text = render_paths(records, null=null)
    except PathsFormatError as exc:
        raise click.ClickException(str(exc)) from None
    if text:
        write_data(text if null else text + "\n")


def _write_records(records: list[dict[str, Any]], fmt: str, picked: Picked) -> None:
    """The table, for a person, only when there are rows; data formats always (``[]``, the CSV
    header)."""
    from ckpt_index.query.render import render_records

    if fmt == "table" and not records:
        return
    options: dict[str, Any] = {"columns": picked.columns, "added": picked.added}
    if fmt == "table":
        options.update(first=picked.first, screen=_screen(picked.limited))
    text = render_records(records, fmt, **options)
    if text:
        write_data(text + "\n")


def _output_is_terminal() -> bool:
    return sys.stdout.isatty()


def _screen(limited: bool) -> Screen:
    """The table's bounds: the terminal's size ($COLUMNS and $LINES override it) when output goes
    to a terminal; a pipe or file gets the plain table, every row and every value whole, whatever
    the environment says. No row limit when --limit is given."""
    from ckpt_index.query.table import Screen

    tty = _output_is_terminal()
    size = shutil.get_terminal_size()
    width = size.columns if tty else None
    height = size.lines if tty and not limited else None
    ellipsis = "\u2026"
    try:
        ellipsis.encode(getattr(sys.stdout, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        ellipsis = "..."
    return Screen(width=width, height=height, ellipsis=ellipsis)


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@db_option
@friendly_errors
def show(checkpoint: str, db: str | None) -> None:
    """Print everything the index knows about one checkpoint, as JSON, whatever its status
    (an unreadable checkpoint shows why in "error"). "unsafe_globals" lists the pickle globals
    torch.load(weights_only=True) would refuse; the file is read now (isolated) when the index
    does not know them.

    Example:

    \b
        ckpt-index show outputs/exp/checkpoints/epoch-10_step-005420.ckpt
    """
    from ckpt_index.query.spec import find_checkpoint

    record = read_index(db, lambda conn: find_checkpoint(conn, _index_path(checkpoint)))
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
    """What loading ``path`` would run, read now in an isolated worker (the index is not
    written)."""
    from ckpt_index.isolation.pool import run_isolated

    outcome = run_isolated("ckpt_index.sources.checkpoint.tasks:inspect_checkpoint_task", [path])
    return outcome.value[1] if outcome.ok else None


def _index_path(path: str) -> str:
    """How the index spells a checkpoint path: the folder resolved, the file name as it is."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(os.path.realpath(folder), name)


@click.command()
@db_option
@report_format_option
@friendly_errors
def stats(db: str | None, fmt: str) -> None:
    """Counts of what the index holds.

    Example:

    \b
        ckpt-index stats --format json
    """
    from ckpt_index.index.engine import resolve_db_url
    from ckpt_index.query.render import escape_control
    from ckpt_index.query.stats import index_stats

    data = {"database": _safe_url(resolve_db_url(db)), **read_index(db, index_stats)}
    if fmt == "json":
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items()) or "-"
        click.echo(f"{key + ':':<20}{escape_control(str(value))}")


def _safe_url(url: str) -> str:
    """The URL as it can be shown: without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@click.command()
@click.argument("statement")
@db_option
@format_option(
    [f for f in RESULT_FORMATS if f != "paths"],
    "table",
    "table for people; json, jsonl and csv for scripts.",
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

    \b
        ckpt-index sql "SELECT encoder, max(hmean) FROM checkpoints GROUP BY encoder"
        ckpt-index sql --timeout 300 --format csv "SELECT * FROM checkpoint_metrics_flat"
        ckpt-index sql --allow-write-role --db postgresql+psycopg://admin@db/ckpt "SELECT 1"
    """
    from ckpt_index.index.engine import check_unlocked_read, disposing
    from ckpt_index.index.readonly import ReadOnlyError, read_only_engine, stream_sql
    from ckpt_index.query.render import stream_rows

    with disposing(read_only_engine(db)) as engine:
        try:
            with stream_sql(
                engine, statement, timeout=timeout, allow_write_role=allow_write_role
            ) as result:
                for piece in stream_rows(result.columns, result.batches, fmt):
                    sys.stdout.write(piece)
            check_unlocked_read(engine)
            write_data("\n")
        except ReadOnlyError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:
            # The reader went away (| head): stop quietly, and keep Python's exit flush from
            # failing.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
