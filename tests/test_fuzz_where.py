"""Fuzzing the `--where` compiler (issue 8, item 9).

Generated expressions, from random text to well-formed ones mutated at random, either compile
to bound SQL or raise :class:`WhereError` (the usage error); no other exception escapes. The SQL
never carries user text: compiling the same expression with every value and metric name
replaced gives the same SQL, and the values arrive as bound parameters.

``CKPT_INDEX_FUZZ_EXAMPLES`` sets the number of examples per target (default 200).
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, select
from sqlalchemy.dialects import postgresql, sqlite

from ckpt_index.index.tables import checkpoints, metadata
from ckpt_index.query.spec import FIELDS, resolve
from ckpt_index.query.where import (
    And,
    Compare,
    In,
    IsNull,
    Like,
    Not,
    Or,
    WhereError,
    compile_where,
    parse_where,
)
from ckpt_index.query.where import (
    predicates as conditions_of,
)

EXAMPLES = int(os.environ.get("CKPT_INDEX_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

NAMES = st.one_of(
    st.sampled_from(sorted(FIELDS)),
    st.sampled_from(
        ["val/loss", "cleval/hmean", "metrics.hmean", "metrics.epoch", "x", "a-b", "m@1:2", "_"]
    ),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_./:@-]{0,12}", fullmatch=True),
)
QUOTED_NAMES = st.text(min_size=1, max_size=12).map(lambda t: '"' + t.replace('"', '""') + '"')
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False).map(repr),
    st.sampled_from(
        [
            "9" * 5000,
            "-" + "9" * 25,
            "1e999",
            "-1e400",
            "0" * 30 + "1",
            ".5",
            "1.",
            "1e-400",
            "9223372036854775807",
            "9223372036854775808",
        ]
    ),
)
STRINGS = st.text(max_size=15).map(lambda t: "'" + t.replace("'", "''") + "'")
VALUES = st.one_of(NUMBERS, STRINGS, st.sampled_from(["true", "false", "TRUE", "null"]))
OPS = st.sampled_from(["=", "==", "!=", "<>", "<", "<=", ">", ">="])


@st.composite
def predicates(draw) -> str:
    name = draw(st.one_of(NAMES, QUOTED_NAMES))
    kind = draw(st.sampled_from(["cmp", "like", "in", "null"]))
    if kind == "cmp":
        return f"{name} {draw(OPS)} {draw(VALUES)}"
    if kind == "like":
        return f"{name} {draw(st.sampled_from(['like', 'not like', 'LIKE']))} {draw(STRINGS)}"
    if kind == "in":
        values = draw(st.lists(VALUES, min_size=1, max_size=4))
        return f"{name} {draw(st.sampled_from(['in', 'not in']))} ({', '.join(values)})"
    return f"{name} is {draw(st.sampled_from(['', 'not ']))}null"


EXPRESSIONS = st.recursive(
    predicates(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from([" and ", " or ", " AND "]), inner).map("".join),
        inner.map(lambda e: f"not {e}"),
        inner.map(lambda e: f"({e})"),
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw) -> str:
    """A well-formed expression with characters inserted, deleted or swapped at random."""
    text = draw(EXPRESSIONS)
    for _ in range(draw(st.integers(0, 4))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        junk = draw(
            st.sampled_from(
                [
                    "(",
                    ")",
                    "'",
                    '"',
                    ",",
                    " ",
                    "not",
                    "\x00",
                    "\ud800",
                    "\x1b",
                    "\n",
                    "=",
                    "-",
                    ".",
                    "e",
                    "9" * 30,
                    "\u202e",
                ]
            )
        )
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert":
            text = text[:i] + junk + text[i:]
        elif action == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + junk + text[i + 1 :]
    return text


ANY_TEXT = st.one_of(
    st.text(max_size=60),
    st.text(alphabet="()'\",=<>!not and or in like is null 0123456789.eE-_/x\x00\n", max_size=60),
    EXPRESSIONS,
    mutated(),
    st.integers(1, 300).map(lambda n: "(" * n + "x = 1" + ")" * n),
    st.integers(1, 300).map(lambda n: "not " * n + "x = 1"),
)

_ENGINE = create_engine("sqlite://")
metadata.create_all(_ENGINE)


def _anonymised(node):
    """The same expression with user text and numbers replaced (fields kept: they pick a column)."""

    def name(n: str) -> str:
        if n.startswith("metrics."):
            return "metrics.m"
        return n if n in FIELDS else "m"

    def value(v):
        if isinstance(v, bool):
            return v
        if isinstance(v, int):  # PostgreSQL casts a literal to INTEGER or BIGINT by its size
            return 1 if -(2**31) <= v < 2**31 else 2**40
        if isinstance(v, float):
            return 0.5
        return "s"

    if isinstance(node, (And, Or)):
        return type(node)(tuple(_anonymised(i) for i in node.items))
    if isinstance(node, Not):
        return Not(_anonymised(node.item))
    if isinstance(node, Compare):
        return Compare(name(node.name), node.op, value(node.value))
    if isinstance(node, Like):
        return Like(name(node.name), "p", node.negated)
    if isinstance(node, In):
        return In(name(node.name), tuple(value(v) for v in node.values), node.negated)
    return IsNull(name(node.name), node.negated)


def _sql(node, dialect) -> tuple[str, dict]:
    compiled = select(checkpoints.c.id).where(compile_where(node, resolve)).compile(dialect=dialect)
    return str(compiled), compiled.params


def _check(text: str) -> None:
    try:
        node = parse_where(text)
        sqls = {d.name: _sql(node, d) for d in (sqlite.dialect(), postgresql.psycopg.dialect())}
    except WhereError as exc:
        assert isinstance(exc.message, str) and 0 <= exc.position <= len(text)
        str(exc)  # the caret rendering works for every input
        return
    anonymous = _anonymised(node)
    for dialect in (sqlite.dialect(), postgresql.psycopg.dialect()):
        sql, params = sqls[dialect.name]
        same_shape, _ = _sql(anonymous, dialect)
        assert sql == same_shape, "user text reached the SQL"
        bound = set(map(repr, params.values()))
        for leaf in conditions_of(node):
            for v in _values(leaf):
                if isinstance(v, bool):
                    continue
                # A Boolean field takes 1/0 as true/false; a text field compares a number's text.
                shown = {repr(v), repr(str(v)), repr(bool(v))}
                assert shown & bound, (v, params)
            if leaf.name not in FIELDS:
                metric = leaf.name.removeprefix("metrics.")
                assert repr(metric) in bound, (leaf.name, params)
    with _ENGINE.connect() as conn:  # and the SQL runs
        conn.execute(select(checkpoints.c.id).where(compile_where(node, resolve))).all()


def _values(leaf):
    if isinstance(leaf, Compare):
        return [leaf.value]
    if isinstance(leaf, In):
        return list(leaf.values)
    if isinstance(leaf, Like):
        return [leaf.pattern]
    return []


@FUZZ
@given(ANY_TEXT)
def test_where_compiles_to_bound_sql_or_is_a_usage_error(text: str) -> None:
    _check(text)


@FUZZ
@given(EXPRESSIONS)
def test_well_formed_expressions_mostly_compile(text: str) -> None:
    _check(text)


# Regressions found by fuzzing (each failed before its fix).
@pytest.mark.parametrize(
    "text",
    [
        "epoch = " + "9" * 5000,  # int() refused > 4300 digits: a ValueError traceback
        "hmean > 1e999",  # inf reached the database
        "exp_name = 'a\x00b'",  # NUL: PostgreSQL refuses it in text
        "exp_name = '\udcff'",  # an undecodable argv byte: no driver encodes it
    ],
)
def test_fuzz_regressions_are_usage_errors(text: str) -> None:
    with pytest.raises(WhereError):
        parse_where(text)
    _check(text)


@pytest.mark.parametrize(
    "text",
    [
        "epoch = " + "0" * 5000 + "1",  # leading zeros counted by int()'s digit limit: a traceback
        "A < 2147483648",  # a BIGINT literal on PostgreSQL
        "encoder_pretrained = 0",  # 0/1 on a Boolean field
    ],
)
def test_fuzz_regressions_compile(text: str) -> None:
    parse_where(text)
    _check(text)
