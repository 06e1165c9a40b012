"""What every command shares: the ``--db`` option, domain errors as one-line CLI errors, reading
the index without writing it, and writing data to stdout unchanged.

Heavy libraries (torch, lightning, wandb, pandas) are never imported here; SQLAlchemy only when a
command runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def db_option(func: F) -> F:
    """``--db PATH|URL``: the index a command works on."""
    return click.option(
        "--db",
        metavar="PATH|URL",
        default=None,
        help="Index database: a file path or SQLAlchemy URL "
        "[default: $CKPT_INDEX_DB, else ./ckpt_index.db].",
    )(func)


def format_option(formats: Sequence[str], default: str, help_text: str) -> Callable[[F], F]:
    """``--format`` (``fmt``), one of ``formats``: how a command prints what it found."""
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(formats),
        default=default,
        show_default=True,
        help=help_text,
    )


#: What ``table_format_option`` offers.
TABLE_FORMATS = ("table", "json")


def table_format_option(func: F) -> F:
    """``--format table|json`` of the commands that print a table (``du``, ``gc``)."""
    return format_option(TABLE_FORMATS, "table", "table for people, json for scripts.")(func)


def report_format_option(func: F) -> F:
    """``--format text|json`` of the commands that print a report."""
    from ckpt_index.vocabulary import REPORT_FORMATS

    return format_option(
        REPORT_FORMATS, "text", "Report format: text for people, json for scripts."
    )(func)


class NeedsSetup(click.ClickException):
    """No index there, or one a reading command cannot use before ``db upgrade`` (exit 2)."""

    exit_code = 2


def friendly_errors(func: F) -> F:
    """Turn the library's domain errors into one-line CLI errors (exit 1; 2 for an index that
    is missing or needs ``db upgrade``)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except click.ClickException:
            raise
        except Exception as exc:
            error = _as_click_error(exc)
            if error is None:
                raise
            raise error from None

    return wrapper  # type: ignore[return-value]  # wraps() keeps the signature F describes


def _as_click_error(exc: Exception) -> click.ClickException | None:
    """The CLI error for a domain error, ``None`` for anything else (a bug: its traceback shows).

    The index's and SQLAlchemy's error classes are looked up only when their modules are loaded:
    an error cannot come from a module never imported, and a command that does not touch the
    index (``validate``) must not load SQLAlchemy to report an error.
    """
    if "ckpt_index.index.engine" in sys.modules:
        from ckpt_index.index.engine import IndexError_, IndexMissingError
        from ckpt_index.index.migrate import IndexOutdatedError

        if isinstance(exc, (IndexMissingError, IndexOutdatedError)):
            return NeedsSetup(str(exc))
        if isinstance(exc, IndexError_):
            return click.ClickException(str(exc))
    if isinstance(exc, (NotADirectoryError, FileNotFoundError)):
        return click.ClickException(str(exc))
    if "sqlalchemy" in sys.modules:
        from sqlalchemy.exc import SQLAlchemyError

        if isinstance(exc, SQLAlchemyError):
            detail = getattr(exc, "orig", None) or exc
            return click.ClickException(f"database error: {exc.__class__.__name__}: {detail}")
    if type(exc).__name__ == "CommandError":  # alembic's, e.g. an unknown revision
        return click.ClickException(f"alembic: {exc}")
    return None


def write_data(text: str) -> None:
    """Write output as it is: click.echo strips ANSI sequences when stdout is not a terminal,
    which would change a path or a CSV value (the table escapes them before this)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def echo_escaped(text: str, err: bool = False) -> None:
    """Print a line holding names from the tree: control characters never reach a terminal raw."""
    from ckpt_index.query.render import escape_control

    click.echo(escape_control(text), err=err)


def read_index(db: str | None, read: Callable[[Any], Any]) -> Any:
    """``read(conn)`` on the index opened read-only at head: nothing is created or migrated."""
    from ckpt_index.index.engine import check_unlocked_read, disposing, open_engine

    with disposing(open_engine(db, readonly=True)) as engine:
        with engine.connect() as conn:
            result = read(conn)
        check_unlocked_read(engine)
        return result
