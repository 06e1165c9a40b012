"""Tests for the ``--where`` language: parsing, errors, compilation on SQLite, injection."""

from __future__ import annotations

import dataclasses
import doctest
import inspect
import math
import re
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    select,
)
from sqlalchemy import (
    inspect as sa_inspect,
)
from sqlalchemy.dialects import postgresql, sqlite

from ckpt_index.query import where
from ckpt_index.query.where import (
    And,
    Compare,
    In,
    IsNull,
    Like,
    Not,
    Or,
    WhereError,
    WhereTypeError,
    compile_where,
    names_in,
    parse_where,
    predicates,
)

# SQLAlchemy deprecations (e.g. LIKE on a non-string type) would become errors in a later release.
pytestmark = pytest.mark.filterwarnings("error")

# --------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "a = 1 or b = 2 and not c = 3",
            Or((Compare("a", "=", 1), And((Compare("b", "=", 2), Not(Compare("c", "=", 3)))))),
        ),
        (
            "(a = 1 or b = 2) and c = 3",
            And((Or((Compare("a", "=", 1), Compare("b", "=", 2))), Compare("c", "=", 3))),
        ),
        ("not not a = 1", Not(Not(Compare("a", "=", 1)))),
        ("not (a = 1 or b = 2)", Not(Or((Compare("a", "=", 1), Compare("b", "=", 2))))),
        ("not a = 1 and b = 2", And((Not(Compare("a", "=", 1)), Compare("b", "=", 2)))),
        ("((a = 1))", Compare("a", "=", 1)),
        (
            "a = 1 and b = 2 and c = 3",
            And((Compare("a", "=", 1), Compare("b", "=", 2), Compare("c", "=", 3))),
        ),
        (
            "a = 1 or b = 2 or c = 3",
            Or((Compare("a", "=", 1), Compare("b", "=", 2), Compare("c", "=", 3))),
        ),
        (
            "a = 1 and (b = 2 and c = 3)",
            And((Compare("a", "=", 1), And((Compare("b", "=", 2), Compare("c", "=", 3))))),
        ),
        (
            "hmean > 0.8 and encoder = 'resnet50'",
            And((Compare("hmean", ">", 0.8), Compare("encoder", "=", "resnet50"))),
        ),
    ],
)
def test_structure_and_precedence(text, expected):
    assert parse_where(text) == expected


@pytest.mark.parametrize(
    "op, normalised",
    [
        ("=", "="),
        ("==", "="),
        ("!=", "!="),
        ("<>", "!="),
        ("<", "<"),
        ("<=", "<="),
        (">", ">"),
        (">=", ">="),
    ],
)
@pytest.mark.parametrize("spacing", ["x {op} 1", "x{op}1", "x {op}1", "x{op} 1"])
def test_every_comparison_operator(op, normalised, spacing):
    assert parse_where(spacing.format(op=op)) == Compare("x", normalised, 1)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x like 'res%'", Like("x", "res%", False)),
        ("x not like 'res%'", Like("x", "res%", True)),
        ("x in (1)", In("x", (1,), False)),
        ("x in (1, 'a', true)", In("x", (1, "a", True), False)),
        ("x not in (1,2)", In("x", (1, 2), True)),
        ("x is null", IsNull("x", False)),
        ("x is not null", IsNull("x", True)),
        ("x=true", Compare("x", "=", True)),
        ("x != FALSE", Compare("x", "!=", False)),
    ],
)
def test_predicates(text, expected):
    assert parse_where(text) == expected


@pytest.mark.parametrize(
    "literal, value",
    [
        ("1", 1),
        ("0", 0),
        ("-2", -2),
        ("007", 7),
        ("123456789012", 123456789012),
        ("0.8", 0.8),
        (".5", 0.5),
        ("-.5", -0.5),
        ("1.", 1.0),
        ("1e-3", 1e-3),
        ("1E3", 1000.0),
        ("-1.5E+2", -150.0),
        ("2e0", 2.0),
        ("9223372036854775807", 2**63 - 1),
    ],
)
def test_numbers(literal, value):
    node = parse_where(f"x > {literal}")
    assert node.value == value
    assert type(node.value) is type(value)  # ints stay int, floats float
    assert parse_where(f"x>{literal}") == node


@pytest.mark.parametrize(
    "literal, value",
    [
        ("''", ""),
        ("'abc'", "abc"),
        ("'it''s'", "it's"),
        ("''''", "'"),
        ("'a''''b'", "a''b"),
        ("'with space and \"double\"'", 'with space and "double"'),
        ("'and or not'", "and or not"),
        ("'null'", "null"),
        ("'1.5'", "1.5"),
        ("'ünïcødé ✓'", "ünïcødé ✓"),
        ("'a\nb'", "a\nb"),
        ("'%_\\'", "%_\\"),
    ],
)
def test_strings(literal, value):
    assert parse_where(f"x = {literal}") == Compare("x", "=", value)


@pytest.mark.parametrize(
    "name",
    [
        "hmean",
        "val/loss",
        "cleval/hmean",
        "train-loss",
        "lr-Adam",
        "metrics.val.acc",
        "step:10",
        "loss@k",
        "_private",
        "A1",
        "x-",
        "val/loss/",
    ],
)
def test_bare_metric_names(name):
    assert parse_where(f"{name} < 0.03") == Compare(name, "<", 0.03)
    assert parse_where(f"{name}<0.03") == Compare(name, "<", 0.03)
    assert parse_where(f"({name}>=1)") == Compare(name, ">=", 1)
    assert parse_where(f"{name} is null") == IsNull(name)


@pytest.mark.parametrize(
    "quoted, name",
    [
        ('"my metric"', "my metric"),
        ('"a""b"', 'a"b'),
        ('"and"', "and"),
        ('"null"', "null"),
        ('"1st"', "1st"),
        ('"x; DROP TABLE t"', "x; DROP TABLE t"),
        ('"val/loss"', "val/loss"),
    ],
)
def test_quoted_names(quoted, name):
    assert parse_where(f"{quoted} = 1") == Compare(name, "=", 1)
    assert parse_where(f"{quoted} not like 'a'") == Like(name, "a", True)


@pytest.mark.parametrize(
    "text",
    [
        "a = 1 AND b = 2 OR NOT c = 3",
        "a = 1 And b = 2 oR nOt c = 3",
        "a = 1 and b = 2 or not c = 3",
    ],
)
def test_keywords_are_case_insensitive(text):
    assert parse_where(text) == Or(
        (And((Compare("a", "=", 1), Compare("b", "=", 2))), Not(Compare("c", "=", 3)))
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x LIKE 'a'", Like("x", "a")),
        ("x NOT Like 'a'", Like("x", "a", True)),
        ("x IN (TRUE, False)", In("x", (True, False))),
        ("x Is NuLl", IsNull("x")),
        ("x IS NOT NULL", IsNull("x", True)),
        ("AND_x = 1", Compare("AND_x", "=", 1)),  # a keyword prefix does not make a keyword
        ("Hmean = 1", Compare("Hmean", "=", 1)),  # names keep their case
    ],
)
def test_keyword_case_and_name_case(text, expected):
    assert parse_where(text) == expected


def test_whitespace_of_any_kind():
    assert parse_where("\t a\n=\r\n1 ") == Compare("a", "=", 1)


@pytest.mark.parametrize(
    "text, names",
    [
        ("a = 1", {"a"}),
        ("a = 1 or (b in (1) and not \"c d\" is null) or a like 'x'", {"a", "b", "c d"}),
        ("val/loss < 1 and lr-Adam > 0", {"val/loss", "lr-Adam"}),
    ],
)
def test_names_in(text, names):
    assert names_in(parse_where(text)) == names


def test_predicates_know_where_their_name_is():
    """Each condition keeps its name's offset, left to right, so that an unknown name can be
    pointed at; the offset is not part of the tree's equality."""
    text = "a = 1 or (bb in (1) and not \"c d\" is null) or a like 'x'"
    found = [(p.name, p.position) for p in predicates(parse_where(text))]
    assert found == [("a", 0), ("bb", 10), ("c d", 28), ("a", 46)]
    assert [text[pos] for _, pos in found] == ["a", "b", '"', "a"]
    assert parse_where("  a = 1") == Compare("a", "=", 1)


def test_nodes_are_frozen_and_hashable():
    node = parse_where("a in (1, 2) and b = 'x'")
    with pytest.raises(AttributeError):
        node.items = ()
    assert hash(node) == hash(parse_where("a in (1, 2) and b = 'x'"))


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "text, position, message",
    [
        ("", 0, "empty expression"),
        ("   ", 3, "empty expression"),
        ("name = 'abc", 7, "unterminated string"),
        ("name = 'it''s", 7, "unterminated string"),
        ('"my metric = 1', 0, "unterminated quoted name"),
        ('"" = 1', 0, "empty quoted name"),
        ("hmean > 0.8; DROP TABLE items", 11, "unexpected character ';'"),
        ("hmean > $1", 8, "unexpected character '$'"),
        ("hmean > `x`", 8, "unexpected character '`'"),
        ("a ! 1", 2, "unexpected character '!'"),
        ("a = -x", 4, "unexpected character '-'"),
        ("hmean > and x = 1", 8, "expected a value after '>'"),
        ("hmean >", 7, "expected a value after '>'"),
        ("encoder = resnet50", 10, "expected a value after '='"),
        ("a = 1 and", 9, "expected a condition after 'and'"),
        ("a = 1 or or b = 1", 9, "expected a condition after 'or'"),
        ("not", 3, "expected a condition after 'not'"),
        ("and a = 1", 0, "expected a condition"),
        ("= 1", 0, "expected a condition"),
        ("hmean", 5, "expected an operator after 'hmean'"),
        ("hmean 0.8", 6, "expected an operator after 'hmean'"),
        ("hmean > 0.8 extra", 12, "unexpected 'extra'"),
        ("a = 1 b = 2", 6, "unexpected 'b'"),
        ("a in 1", 5, "'in' needs a parenthesised list"),
        ("a in", 4, "'in' needs a parenthesised list"),
        ("a in ()", 6, "empty list after 'in'"),
        ("a in (1,)", 8, "expected a value after ','"),
        ("a in (1 2)", 8, "expected ',' or ')'"),
        ("a in (1, 2", 5, "unclosed '('"),
        ("a in (null)", 6, "null"),
        ("(a = 1", 0, "unclosed '('"),
        ("((a = 1) or b = 2", 0, "unclosed '('"),
        ("a = 1)", 5, "unmatched ')'"),
        ("(a = 1))", 7, "unmatched ')'"),
        ("()", 1, "expected a condition after '('"),
        ("(a = 1 b = 2)", 7, "expected ')'"),
        ("a like 1", 7, "'like' needs a quoted pattern"),
        ("a like b", 7, "'like' needs a quoted pattern"),
        ("a not like", 10, "'like' needs a quoted pattern"),
        ("a not = 1", 6, "expected 'like' or 'in' after 'not'"),
        ("a is 1", 5, "expected 'null' or 'not null' after 'is'"),
        ("a = null", 4, "use 'is null' instead of '= null'"),
        ("a == NULL", 5, "use 'is null' instead of '== null'"),
        ("a != null", 5, "use 'is not null' instead of '!= null'"),
        ("a <> null", 5, "use 'is not null'"),
        ("a < null", 4, "use 'is null' or 'is not null'"),
        ("in = 1", 0, 'quoted: "in"'),
        ("null is null", 0, 'quoted: "null"'),
        ("1st_metric > 0", 0, "malformed number '1st_metric'"),
        ("a = 1.2.3", 4, "malformed number '1.2.3'"),
        ("a = 1e", 4, "malformed number '1e'"),
        ("a = 5-3", 4, "malformed number '5-3'"),
        ("a = 99999999999999999999", 4, "integer out of range"),
        ("a = 1\nand $", 10, "unexpected character '$'"),
    ],
)
def test_errors(text, position, message):
    with pytest.raises(WhereError) as info:
        parse_where(text)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.position == position
    assert err.text == text
    assert message in err.message
    rendered = str(err)
    assert rendered.startswith(f"{err.message} at position {position}\n")
    _, shown, caret = rendered.split("\n")
    # The caret sits under the offending character of the displayed line.
    line_start = text.rfind("\n", 0, position) + 1
    assert caret == "  " + " " * (position - line_start) + "^"
    assert shown.strip() == text[line_start:].split("\n")[0].strip()


def test_nesting_depth_is_bounded():
    assert parse_where("(" * 100 + "a = 1" + ")" * 100) == Compare("a", "=", 1)
    assert parse_where("not " * 100 + "a = 1") == nested_nots(100)
    for text, position in [
        ("(" * 101 + "a = 1" + ")" * 101, 100),
        ("(" * 5000 + "a = 1" + ")" * 5000, 100),
        ("not " * 5000 + "a = 1", 400),
        ("not (" * 60 + "a = 1" + ")" * 60, 250),
    ]:
        with pytest.raises(WhereError, match="nested too deeply") as info:
            parse_where(text)
        assert info.value.position == position


def nested_nots(n):
    node = Compare("a", "=", 1)
    for _ in range(n):
        node = Not(node)
    return node


def test_module_docstring_examples():
    assert doctest.testmod(where).failed == 0


def test_error_message_matches_the_documented_shape():
    with pytest.raises(WhereError) as info:
        parse_where("hmean > and x = 1")
    assert str(info.value) == (
        "expected a value after '>' at position 8\n  hmean > and x = 1\n          ^"
    )


def test_leftmost_error_wins():
    # The tokenizer runs lazily, so a parse error before a bad character is reported first.
    with pytest.raises(WhereError) as info:
        parse_where("a > and ;")
    assert info.value.position == 4


# --------------------------------------------------------------------------------------------
# Compilation against a real SQLite database

metadata = MetaData()
items = Table(
    "items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String),
    Column("hmean", Float),
    Column("epoch", Integer),
    Column("best", Boolean),
    Column("created_at", DateTime),
)
metrics = Table(
    "metrics",
    metadata,
    Column("item_id", Integer),
    Column("name", String),
    Column("value", Float),
)

ROWS = [
    dict(id=1, name="resnet50-a", hmean=0.91, epoch=10, best=True, created_at=datetime(2024, 5, 1)),
    dict(id=2, name="resnet50-b", hmean=0.75, epoch=5, best=False, created_at=datetime(2024, 6, 1)),
    dict(id=3, name="it's", hmean=0.85, epoch=20, best=False, created_at=datetime(2024, 7, 1)),
    dict(id=4, name="vit%", hmean=None, epoch=1, best=None, created_at=None),
]
METRICS = [
    (1, "val/loss", 0.02),
    (1, "cleval/hmean", 0.9),
    (1, "train-loss", 0.5),
    (2, "val/loss", 0.05),
    (2, "lr-Adam", 0.001),
    (3, "val/loss", 0.025),
    (3, "my metric", 7.0),
]


def resolve(name: str):
    """Known columns resolve to themselves, anything else to that metric's value."""
    if name in items.c:
        return items.c[name]
    return (
        select(metrics.c.value)
        .where(metrics.c.item_id == items.c.id, metrics.c.name == name)
        .scalar_subquery()
    )


@pytest.fixture(scope="module")
def engine():
    engine = create_engine("sqlite://")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(items.insert(), ROWS)
        conn.execute(metrics.insert(), [dict(item_id=i, name=n, value=v) for i, n, v in METRICS])
    yield engine
    engine.dispose()


def query(text: str):
    return select(items.c.id).where(compile_where(parse_where(text), resolve))


def ids(engine, text: str) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(query(text)).scalars())


@pytest.mark.parametrize(
    "text, expected",
    [
        ("hmean > 0.8", {1, 3}),
        ("hmean>0.8", {1, 3}),
        ("hmean >= 0.85", {1, 3}),
        ("hmean <= 0.85", {2, 3}),
        ("val/loss < 0.03", {1, 3}),
        ("val/loss<0.03 and epoch >= 20", {3}),
        ("cleval/hmean == 0.9", {1}),
        ("lr-Adam = 0.001", {2}),
        ("lr-Adam = 1e-3", {2}),
        ('"my metric" > 6', {3}),
        ("train-loss is null", {2, 3, 4}),
        ("name like 'resnet%'", {1, 2}),
        ("name LIKE '%-_'", {1, 2}),
        ("epoch like '1%'", {1, 4}),  # LIKE on a number matches its text form
        ("val/loss like '0.02%'", {1, 3}),
        ("created_at like '2024-06%'", {2}),
        ("name not like 'resnet%'", {3, 4}),
        ("name like 'vit%'", {4}),
        ("name = 'it''s'", {3}),
        ("epoch in (5, 20)", {2, 3}),
        ("epoch not in (5, 20)", {1, 4}),
        ("name in ('vit%', 'it''s', 'nope')", {3, 4}),
        ("hmean is null", {4}),
        ("hmean is not null", {1, 2, 3}),
        ("not hmean > 0.8", {2}),  # SQL three-valued logic: NULL hmean matches neither side
        ("epoch <> 10", {2, 3, 4}),
        ("epoch != 10 and epoch != 1", {2, 3}),
        ("best = true", {1}),
        ("best = false", {2, 3}),
        ("best != true", {2, 3}),
        ("created_at >= '2024-06-01'", {2, 3}),
        # and binds tighter than or: a or (b and c), not (a or b) and c
        ("name = 'resnet50-a' or name = 'resnet50-b' and epoch < 7", {1, 2}),
        ("(name = 'resnet50-a' or name = 'resnet50-b') and epoch < 7", {2}),
        ("(epoch < 10 or epoch > 15) and hmean is not null", {2, 3}),
        ("not (epoch < 10 or epoch > 15)", {1}),
        ("val/loss < 0.03 or hmean is null", {1, 3, 4}),
        ("epoch > 100", set()),
    ],
)
def test_compiled_queries_on_sqlite(engine, text, expected):
    assert ids(engine, text) == expected


def test_compile_only_uses_the_resolver():
    seen = []

    def recording(name):
        seen.append(name)
        return resolve(name)

    compile_where(parse_where("hmean > 0.8 or (val/loss < 1 and not epoch in (1))"), recording)
    assert sorted(seen) == ["epoch", "hmean", "val/loss"]


def test_compile_also_targets_postgresql():
    sql = str(query("val/loss < 0.03 and name like 'r%'").compile(dialect=postgresql.dialect()))
    assert "%(param_1)s" in sql and "LIKE" in sql


typed = Table(
    "typed",
    MetaData(),
    *(Column(t.__name__.lower(), t) for t in (String, Float, Integer, Boolean, DateTime)),
)


@pytest.mark.parametrize("column", [c.name for c in typed.c])
@pytest.mark.parametrize(
    "template",
    [
        "{} < 1",
        "{} >= 2.5",
        "{} = 'x'",
        "{} != true",
        "{} > false",
        "{} like 'x%'",
        "{} not like 'x'",
        "{} in (1, 'a', true)",
        "{} not in (2)",
        "{} is null",
        "{} is not null",
    ],
)
@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()], ids=["sqlite", "pg"])
def test_every_predicate_compiles_for_every_column_type(column, template, dialect):
    # Warnings are errors in this module: no SQLAlchemy deprecation for any combination.
    # A value the column's type cannot be compared with is refused (alike on every backend).
    try:
        expr = compile_where(parse_where(template.format(column)), lambda name: typed.c[name])
    except WhereTypeError as err:
        assert err.message
        return
    compiled = select(typed).where(expr).compile(dialect=dialect)
    assert "'x" not in str(compiled)
    assert bool(compiled.params) == ("null" not in template)


def test_compile_rejects_foreign_nodes():
    with pytest.raises(TypeError):
        compile_where(object(), resolve)


# --------------------------------------------------------------------------------------------
# Injection: user text is bound or resolved, never spliced


@pytest.mark.parametrize(
    "text, user_text, expected",
    [
        ("name = 'x'' OR ''1''=''1'", "x' OR '1'='1", set()),
        ("name = '; DROP TABLE items; --'", "; DROP TABLE items; --", set()),
        ("name != '; DROP TABLE items; --'", "; DROP TABLE items; --", {1, 2, 3, 4}),
        ("name like '%'' OR 1=1 --'", "%' OR 1=1 --", set()),
        ("name in ('a', '); DROP TABLE items; --')", "); DROP TABLE items; --", set()),
        ('"hmean; DROP TABLE items" > 0', "hmean; DROP TABLE items", set()),
        ('"id) OR (1=1" is not null', "id) OR (1=1", set()),
        ('"name"" OR 1=1 --" = 1', 'name" OR 1=1 --', set()),
    ],
)
def test_injection_attempts_are_bound(engine, text, user_text, expected):
    stmt = query(text)
    compiled = stmt.compile(dialect=sqlite.dialect())
    sql = str(compiled)
    assert user_text not in sql
    assert "DROP" not in sql and "1=1" not in sql
    # The text reached the database only as a parameter value.
    flat = []
    for value in compiled.params.values():
        flat.extend(value if isinstance(value, (list, tuple)) else [value])
    assert user_text in flat
    assert ids(engine, text) == expected
    assert sa_inspect(engine).has_table("items")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(items)).scalar() == len(ROWS)


def test_statement_separator_is_a_syntax_error():
    with pytest.raises(WhereError) as info:
        parse_where("hmean > 0.8; DROP TABLE items")
    assert info.value.position == 11


def test_module_never_evaluates_python():
    source = inspect.getsource(where)
    assert not re.search(r"(?<![\w.])(eval|exec|compile|__import__)\(", source)
    assert "literal_eval" not in source
    assert not re.search(r"(?<![\w.])text\(", source)  # SQL is never built from strings


# --------------------------------------------------------------------------------------------
# Properties

KEYWORDS = {"and", "or", "not", "in", "like", "is", "null", "true", "false"}
BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_./:@-]*")

#: Any text but NUL and lone surrogates, which parse_where refuses (no backend stores them).
storable_text = st.characters(exclude_characters="\x00", exclude_categories=("Cs",))
names = st.one_of(
    st.from_regex(BARE, fullmatch=True).filter(lambda s: s.lower() not in KEYWORDS),
    st.text(storable_text, min_size=1, max_size=12),
)
values = st.one_of(
    st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(storable_text, max_size=12),
    st.booleans(),
)
leaves = st.one_of(
    st.builds(Compare, names, st.sampled_from(["=", "!=", "<", "<=", ">", ">="]), values),
    st.builds(Like, names, st.text(storable_text, max_size=12), st.booleans()),
    st.builds(In, names, st.lists(values, min_size=1, max_size=4).map(tuple), st.booleans()),
    st.builds(IsNull, names, st.booleans()),
)
trees = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.builds(Not, children),
        st.builds(And, st.lists(children, min_size=2, max_size=3).map(tuple)),
        st.builds(Or, st.lists(children, min_size=2, max_size=3).map(tuple)),
    ),
    max_leaves=8,
)


def render_name(name: str) -> str:
    if BARE.fullmatch(name) and name.lower() not in KEYWORDS:
        return name
    return '"' + name.replace('"', '""') + '"'


def render_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def render(node) -> str:
    """Print an AST back as an expression, parenthesising every compound child."""
    if isinstance(node, Compare):
        return f"{render_name(node.name)} {node.op} {render_value(node.value)}"
    if isinstance(node, Like):
        neg = "not " if node.negated else ""
        return f"{render_name(node.name)} {neg}like {render_value(node.pattern)}"
    if isinstance(node, In):
        neg = "not " if node.negated else ""
        return f"{render_name(node.name)} {neg}in ({', '.join(map(render_value, node.values))})"
    if isinstance(node, IsNull):
        return f"{render_name(node.name)} is {'not ' if node.negated else ''}null"
    if isinstance(node, Not):
        return f"not ({render(node.item)})"
    joiner = " and " if isinstance(node, And) else " or "
    return joiner.join(f"({render(item)})" for item in node.items)


def same(a, b) -> bool:
    """AST equality that also tells 1 from 1.0 from True (dataclass == does not)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if dataclasses.is_dataclass(a):  # position (where the name was) is not part of the tree
        fields = [f.name for f in dataclasses.fields(a) if f.compare]
        return all(same(getattr(a, f), getattr(b, f)) for f in fields)
    return a == b


@settings(max_examples=300, deadline=None)
@given(trees)
def test_render_parse_round_trip(tree):
    assert same(parse_where(render(tree)), tree)


@settings(max_examples=100, deadline=None)
@given(trees)
def test_every_well_formed_tree_compiles_and_runs(engine, tree):
    try:
        condition = compile_where(tree, resolve)
    except WhereTypeError:
        return  # a type mismatch (e.g. a text field against a bool) is a usage error, not SQL
    with engine.connect() as conn:
        conn.execute(select(items.c.id).where(condition)).all()


@settings(max_examples=500, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("ab1.-'\"()=<>!, \tn ot and or in like is null;$")))
    | st.text()
)
def test_arbitrary_text_only_ever_raises_where_error(text):
    try:
        parse_where(text)
    except WhereError as err:
        assert 0 <= err.position <= len(text)
        assert err.message and str(err).count("\n") == 2
