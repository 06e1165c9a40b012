"""Small things a new user hits in the first hour: option help, the words validate and sync use,
a quiet second sync, a guarded db downgrade, README install lines that work from a checkout."""

from __future__ import annotations

import click
import pytest

from ckpt_index.cli import cli


def _options():
    def walk(group: click.Group, prefix: tuple[str, ...]):
        for name, command in sorted(group.commands.items()):
            if isinstance(command, click.Group):
                yield from walk(command, prefix + (name,))
            else:
                for param in command.params:
                    if isinstance(param, click.Option) and not param.hidden:
                        yield " ".join(prefix + (name,)), param

    # query's and sql's --format are being reworked with the table (issue 10 item 1).
    pending = {("query", "fmt"), ("sql", "fmt")}
    return [(c, o) for c, o in walk(cli, ()) if (c, o.name) not in pending]


@pytest.mark.parametrize(
    ("command", "option"), _options(), ids=lambda v: v if isinstance(v, str) else v.name
)
def test_every_option_has_help(command: str, option: click.Option) -> None:
    assert option.help, f"{command} {option.opts[0]} has no help text"


def test_query_filter_options_say_what_they_keep(invoke) -> None:
    text = invoke("query", "--help", db=False).output
    assert "Only this training_phase." in text
    assert "--min-epoch N  " in text and "Only epoch >= N." in text
    assert "--max-epoch N  " in text and "Only epoch <= N." in text
