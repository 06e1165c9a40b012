"""The ``ckpt-index`` command line: parse arguments, call the library, print.

The group and the entry point live here; the commands in ``index_commands`` (sync),
``query_commands`` (query, show, stats, sql), ``diff_commands`` (diff), ``tools_commands``
(validate, convert, rename, demo), ``gc_commands`` (gc), ``disk_commands`` (du, pin, unpin),
``serve_commands`` (serve) and ``db_commands`` (db ...).
Heavy libraries (torch, lightning, wandb, pandas) and the web stack are never imported;
SQLAlchemy, pydantic and alembic only by the commands that need them.
"""

from __future__ import annotations

import click

from ckpt_index import __version__
from ckpt_index.cli.db_commands import db_group
from ckpt_index.cli.diff_commands import diff
from ckpt_index.cli.disk_commands import du, pin, unpin
from ckpt_index.cli.gc_commands import gc
from ckpt_index.cli.index_commands import sync
from ckpt_index.cli.query_commands import query, show, sql, stats
from ckpt_index.cli.serve_commands import serve
from ckpt_index.cli.tools_commands import convert, demo, rename, validate

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ckpt-index")
def cli() -> None:
    """Index PyTorch Lightning checkpoints by their YAML sidecars and query them with SQL.

    Example:

    \b
        ckpt-index sync outputs/ && ckpt-index query --best-by hmean
    """


_COMMANDS = (
    sync,
    query,
    show,
    diff,
    validate,
    stats,
    sql,
    serve,
    db_group,
    convert,
    rename,
    demo,
    gc,
    du,
    pin,
    unpin,
)
for _command in _COMMANDS:
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="ckpt-index")
