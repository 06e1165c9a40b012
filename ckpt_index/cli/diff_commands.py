"""``ckpt-index diff``: checkpoints side by side, by path and/or selected like ``query``."""

from __future__ import annotations

import sys
from typing import Any

import click

from ckpt_index.cli.common import db_option, format_option, friendly_errors, read_index, write_data
from ckpt_index.cli.query_commands import spec_options


@click.command()
@click.argument("checkpoints", nargs=-1, type=click.Path(dir_okay=False))
@db_option
@spec_options
@click.option(
    "--all",
    "every",
    is_flag=True,
    help="Every field, metric and parameter, not only those that differ.",
)
@format_option(
    ["table", "json", "markdown"],
    "table",
    "table for people, markdown for a report or a pull request, json for scripts.",
)
@friendly_errors
def diff(
    checkpoints: tuple[str, ...], db: str | None, every: bool, fmt: str, **spec_fields: Any
) -> None:
    """Compare checkpoints side by side: the fields, metrics (metrics.NAME) and hyperparameters
    (params.NAME) whose values differ, one column per checkpoint.

    Checkpoints are named by path (a link to an indexed checkpoint names it) and/or selected
    with the query options: --best-by hmean --group-by exp_name compares the best checkpoint of
    each experiment. At least two are needed.

    Exit status 1 when a path is not in the index, 2 for a usage error (fewer than two
    checkpoints included).

    Example:

    \b
        ckpt-index diff outputs/a/checkpoints/epoch-3.ckpt outputs/b/checkpoints/epoch-3.ckpt
        ckpt-index diff --best-by hmean --group-by exp_name --exp 'sweep_*'
        ckpt-index diff --best-by hmean --group-by params.model.lr --format markdown
        ckpt-index diff outputs/a/checkpoints/last.ckpt --best-by hmean --all --format json
    """
    from ckpt_index.query.diff import NotIndexedError, diff_checkpoints, render_diff
    from ckpt_index.query.spec import QueryError, QuerySpec, WhereError

    spec = QuerySpec(**spec_fields)
    selects = spec != QuerySpec()
    try:
        result = read_index(
            db,
            lambda conn: diff_checkpoints(
                conn, checkpoints, spec if selects else None, every=every
            ),
        )
    except NotIndexedError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except (WhereError, QueryError) as exc:
        raise click.UsageError(str(exc)) from None
    text = render_diff(result, fmt)
    if text:
        write_data(text + "\n")
    if not result.rows:
        click.echo("no difference (--all shows every row)", err=True)
