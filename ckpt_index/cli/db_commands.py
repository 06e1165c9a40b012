"""``db``: the index's schema revisions (alembic), managed by hand."""

from __future__ import annotations

import sys

import click

from ckpt_index.cli.common import db_option, friendly_errors


@click.group("db")
def db_group() -> None:
    """Schema migrations of the index (alembic).

    Example:

    \b
        ckpt-index db current
    """


@db_group.command("upgrade")
@click.argument("revision", default="head")
@db_option
@friendly_errors
def db_upgrade(revision: str, db: str | None) -> None:
    """Upgrade the index schema to REVISION (default: head).

    Example:

    \b
        ckpt-index db upgrade --db team.db
    """
    from ckpt_index.index.engine import create_index_engine, disposing, resolve_db_url
    from ckpt_index.index.migrate import current_revision, upgrade

    url = resolve_db_url(db)
    with disposing(create_index_engine(url)) as engine:
        upgrade(engine, url, revision)  # refuses an index from a newer release first
        with engine.connect() as conn:
            click.echo(f"at revision {current_revision(conn)}")


@db_group.command("downgrade")
@click.argument("revision")
@db_option
@click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="Drop without asking (required when stdin is not a terminal).",
)
@friendly_errors
def db_downgrade(revision: str, db: str | None, yes: bool) -> None:
    """Downgrade the index schema to REVISION ('base' drops everything).

    The tables and columns of later revisions are dropped with their data, so this asks
    first; --yes answers for scripts.

    Example:

    \b
        ckpt-index db downgrade base --yes
    """
    from ckpt_index.index.engine import create_index_engine, disposing, resolve_db_url
    from ckpt_index.index.migrate import current_revision, downgrade

    url = resolve_db_url(db)
    if not yes:
        _confirm_downgrade(url, revision)
    with disposing(create_index_engine(url)) as engine:
        downgrade(engine, url, revision)
        with engine.connect() as conn:
            click.echo(f"at revision {current_revision(conn) or 'base'}")


def _confirm_downgrade(url: str, revision: str) -> None:
    """Ask before a downgrade drops data; without a terminal to ask on, a usage error."""
    from sqlalchemy.engine import make_url

    shown = make_url(url).render_as_string(hide_password=True)
    what = (
        f"Downgrading {shown} to {revision} drops the tables and columns of later "
        "revisions, with their data."
    )
    if not sys.stdin.isatty():
        raise click.UsageError(f"{what} Pass --yes to go ahead (stdin is not a terminal).")
    click.confirm(f"{what} Go ahead?", abort=True)


@db_group.command("current")
@db_option
@friendly_errors
def db_current(db: str | None) -> None:
    """Print the index's schema revision and this release's head.

    Example:

    \b
        ckpt-index db current
    """
    from ckpt_index.index.engine import create_index_engine, disposing, resolve_db_url
    from ckpt_index.index.migrate import HEAD_REVISION, current_revision

    url = resolve_db_url(db)
    # Looking must not create a database: the engine is read-only.
    with disposing(create_index_engine(url, readonly=True)) as engine:
        with engine.connect() as conn:
            found = current_revision(conn)
    state = "up to date" if found == HEAD_REVISION else f"head is {HEAD_REVISION}"
    click.echo(f"{found or 'base (empty)'} ({state})")


@db_group.command("history")
def db_history() -> None:
    """List the schema revisions this release ships, newest first.

    Example:

    \b
        ckpt-index db history
    """
    from alembic.script import ScriptDirectory

    from ckpt_index.index.migrate import MIGRATIONS_DIR

    for rev in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions():
        click.echo(f"{rev.down_revision or 'base'} -> {rev.revision}: {rev.doc}")
