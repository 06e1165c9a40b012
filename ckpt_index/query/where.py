"""The ``--where`` filter language of ``ckpt-index query``: tokenizer, parser, AST and SQL compiler.

``parse_where("hmean > 0.8 and val/loss < 0.03")`` gives an AST of frozen dataclasses;
``compile_where(node, resolve)`` turns it into a SQLAlchemy boolean expression. User text never
reaches SQL as text: every value becomes a bound parameter, and a name only chooses among the
expressions the caller's ``resolve`` callback returns. Nothing is evaluated as Python.

Grammar (keywords are case-insensitive)::

    expr      := and_expr ("or" and_expr)*
    and_expr  := not_expr ("and" not_expr)*
    not_expr  := "not" not_expr | "(" expr ")" | predicate
    predicate := NAME OP value | NAME ["not"] "like" STRING
               | NAME ["not"] "in" "(" value ("," value)* ")" | NAME "is" ["not"] "null"
    value     := NUMBER | STRING | "true" | "false"

The module is one idea, the language from text to SQL, and is kept whole (a little over 400
lines): the tokenizer's positions feed the parser's error carets, and the compiler's type checks
name the tokens the parser kept.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

from sqlalchemy import Boolean, Float, Integer, Numeric, String, and_, cast, literal, not_, or_
from sqlalchemy.sql.elements import ColumnElement

Value = int | float | str | bool

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_./:@-]*")
_NUMBER = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NAME_CHARS = re.compile(r"[A-Za-z0-9_./:@-]*")
# Longest first, so that "<=" is not read as "<" followed by "=".
_OPERATORS = ("==", "!=", "<>", "<=", ">=", "=", "<", ">")
_CANONICAL_OP = {"==": "=", "<>": "!="}
_KEYWORDS = frozenset({"and", "or", "not", "in", "like", "is", "null", "true", "false"})
_INT64 = 2**63 - 1  # SQLite and PostgreSQL bigint both stop here
_MAX_DEPTH = 100  # nested parentheses and nots


class WhereError(ValueError):
    """A malformed ``--where`` expression.

    Attributes:
        text: the whole expression.
        position: 0-based offset of the offending character or token (``len(text)`` at the end).
        message: a short reason, without the position.
    """

    def __init__(self, message: str, text: str, position: int) -> None:
        super().__init__(message, text, position)
        self.message, self.text, self.position = message, text, position

    def __str__(self) -> str:
        return point_at(self.message, self.text, self.position)


def point_at(message: str, text: str, position: int) -> str:
    """``message at position N`` above the line of ``text`` holding ``position``, with a caret
    under it (also used for an unknown name, which the parser cannot know about)."""
    # Show only the line holding the error so the caret lines up with multi-line input.
    start = text.rfind("\n", 0, position) + 1
    end = text.find("\n", position)
    line = text[start : None if end < 0 else end]
    # One column per character keeps the caret in place; what a terminal would act on (or
    # cannot encode) is shown as "?".
    line = "".join(" " if c.isspace() else c if c.isprintable() else "?" for c in line)
    caret = " " * (position - start) + "^"
    return f"{message} at position {position}\n  {line}\n  {caret}"


class WhereTypeError(WhereError):
    """A value of a type the field cannot be compared with (refused alike on every backend)."""

    def __init__(self, message: str) -> None:
        ValueError.__init__(self, message)
        self.message, self.text, self.position = message, "", 0

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class _Condition:
    """A condition on one field or metric."""

    name: str
    #: Offset of the name in the expression (for error carets); not part of equality.
    position: int = field(default=-1, compare=False, repr=False, kw_only=True)


@dataclass(frozen=True)
class Compare(_Condition):
    op: str  # one of = != < <= > >=
    value: Value


@dataclass(frozen=True)
class Like(_Condition):
    pattern: str
    negated: bool = False


@dataclass(frozen=True)
class In(_Condition):
    values: tuple
    negated: bool = False


@dataclass(frozen=True)
class IsNull(_Condition):
    negated: bool = False


@dataclass(frozen=True)
class And:
    items: tuple


@dataclass(frozen=True)
class Or:
    items: tuple


@dataclass(frozen=True)
class Not:
    item: Node


Node = Compare | Like | In | IsNull | And | Or | Not


class _Token(NamedTuple):
    kind: str  # NAME KW NUM STR OP ( ) , END
    value: Any
    start: int
    end: int


def _quoted(text: str, start: int, what: str) -> tuple[str, int]:
    """Read a ``'...'`` or ``"..."`` token at ``start`` (doubled quote = one quote)."""
    quote, parts, i = text[start], [], start + 1
    while True:
        j = text.find(quote, i)
        if j < 0:
            raise WhereError(f"unterminated {what}", text, start)
        parts.append(text[i:j])
        if text.startswith(quote, j + 1):
            parts.append(quote)
            i = j + 2
        else:
            return "".join(parts), j + 1


def _number(text: str, start: int, end: int) -> int | float:
    literal_text = text[start:end]
    if any(c in literal_text for c in ".eE"):
        value = float(literal_text)
        if not math.isfinite(value):
            raise WhereError("number out of range (beyond a 64-bit float)", text, start)
        return value
    # Count digits before converting: int() of thousands of digits is refused by Python itself
    # (and costs quadratic time below that limit).
    negative, digits = literal_text.startswith("-"), literal_text.lstrip("-").lstrip("0") or "0"
    if len(digits) > len(str(_INT64)):
        raise WhereError("integer out of range (beyond 64 bits)", text, start)
    value = -int(digits) if negative else int(digits)
    if abs(value) > _INT64:
        raise WhereError("integer out of range (beyond 64 bits)", text, start)
    return value


#: NUL (PostgreSQL refuses it in text) and lone surrogates (from undecodable bytes in argv; no
#: driver can encode them): refused up front rather than failing in the database driver.
_UNENCODABLE = re.compile("[\x00\ud800-\udfff]")


def _tokenize(text: str) -> Iterator[_Token]:
    """Yield tokens lazily, so the first error reported is the leftmost one."""
    if bad := _UNENCODABLE.search(text):
        raise WhereError(f"character {bad.group()!r} is not allowed", text, bad.start())
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "(),":
            yield _Token(c, c, i, i + 1)
            i += 1
        elif c in "'\"":
            value, end = _quoted(text, i, "string" if c == "'" else "quoted name")
            if c == '"' and not value:
                raise WhereError("empty quoted name", text, i)
            yield _Token("STR" if c == "'" else "NAME", value, i, end)
            i = end
        elif m := _NUMBER.match(text, i):
            end = m.end()
            # "1st", "1.2.3" and "5-3" are one bad token, not a number followed by something.
            rest = _NAME_CHARS.match(text, end)  # matches the empty string: never None
            tail = rest.end() if rest else end
            if tail > end:
                raise WhereError(f"malformed number {text[i:tail]!r}", text, i)
            yield _Token("NUM", _number(text, i, end), i, end)
            i = end
        elif m := _NAME.match(text, i):
            word, end = m.group(), m.end()
            if word.endswith(".") and text.startswith('"', end):
                # params."weird name": a prefix and a quoted rest are one name.
                quoted, end = _quoted(text, end, "quoted name")
                if not quoted:
                    raise WhereError("empty quoted name", text, m.end())
                yield _Token("NAME", word + quoted, i, end)
                i = end
                continue
            kind = "KW" if word.lower() in _KEYWORDS else "NAME"
            yield _Token(kind, word.lower() if kind == "KW" else word, i, end)
            i = end
        else:
            op = next((op for op in _OPERATORS if text.startswith(op, i)), None)
            if op is None:
                raise WhereError(f"unexpected character {c!r}", text, i)
            yield _Token("OP", op, i, i + len(op))
            i += len(op)
    yield _Token("END", None, n, n)


class _Parser:
    """Recursive descent over the grammar in the module docstring, one token of lookahead."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._tokens = _tokenize(text)
        self.tok = next(self._tokens)
        self._depth = 0

    def parse(self) -> Node:
        if self.tok.kind == "END":
            self._fail("empty expression")
        node = self._or(None)
        if self.tok.kind == ")":
            self._fail("unmatched ')'")
        if self.tok.kind != "END":
            self._fail(f"unexpected {self._show(self.tok)} after a complete condition")
        return node

    def _fail(self, message: str, tok: _Token | None = None) -> NoReturn:
        raise WhereError(message, self.text, (tok or self.tok).start)

    def _show(self, tok: _Token) -> str:
        return "end of expression" if tok.kind == "END" else repr(self.text[tok.start : tok.end])

    def _advance(self) -> _Token:
        tok, self.tok = self.tok, next(self._tokens)
        return tok

    def _accept(self, keyword: str) -> _Token | None:
        if self.tok.kind == "KW" and self.tok.value == keyword:
            return self._advance()
        return None

    def _or(self, after: str | None) -> Node:
        items = [self._and(after)]
        while self._accept("or"):
            items.append(self._and("or"))
        return items[0] if len(items) == 1 else Or(tuple(items))

    def _and(self, after: str | None) -> Node:
        items = [self._not(after)]
        while self._accept("and"):
            items.append(self._not("and"))
        return items[0] if len(items) == 1 else And(tuple(items))

    def _not(self, after: str | None) -> Node:
        if self.tok.kind == "NAME":
            return self._predicate()
        if self.tok.kind != "(" and not (self.tok.kind == "KW" and self.tok.value == "not"):
            where = f" after {after!r}" if after else ""
            word = self.text[self.tok.start : self.tok.end]
            quotable = self.tok.kind == "KW" and self.tok.value not in ("and", "or")
            hint = f' (a field named like a keyword must be quoted: "{word}")' if quotable else ""
            self._fail(f"expected a condition{where}, got {self._show(self.tok)}{hint}")
        # Each level costs Python stack frames here and in SQLAlchemy's compiler: stop long before
        # a RecursionError would escape as something other than a WhereError.
        self._depth += 1
        if self._depth > _MAX_DEPTH:
            self._fail("expression nested too deeply")
        if self._accept("not"):
            node: Node = Not(self._not("not"))
        else:
            opening = self._advance()
            node = self._or("(")
            self._close(opening, "expected ')', 'and' or 'or'")
        self._depth -= 1
        return node

    def _close(self, opening: _Token, message: str) -> None:
        if self.tok.kind == "END":
            self._fail("unclosed '('", opening)
        if self.tok.kind != ")":
            self._fail(f"{message}, got {self._show(self.tok)}")
        self._advance()

    def _predicate(self) -> Node:
        name = self._advance()
        if self.tok.kind == "OP":
            op = self._advance()
            value = self._value(op)
            return Compare(
                name.value, _CANONICAL_OP.get(op.value, op.value), value, position=name.start
            )
        if self._accept("is"):
            negated = self._accept("not") is not None
            if not self._accept("null"):
                self._fail(f"expected 'null' or 'not null' after 'is', got {self._show(self.tok)}")
            return IsNull(name.value, negated, position=name.start)
        negated = self._accept("not") is not None
        if self._accept("like"):
            if self.tok.kind != "STR":
                self._fail("'like' needs a quoted pattern, e.g. like 'resnet%'")
            return Like(name.value, self._advance().value, negated, position=name.start)
        if self._accept("in"):
            return In(name.value, self._list(), negated, position=name.start)
        if negated:
            self._fail(f"expected 'like' or 'in' after 'not', got {self._show(self.tok)}")
        self._fail(f"expected an operator after {self._show(name)}, got {self._show(self.tok)}")

    def _list(self) -> tuple:
        if self.tok.kind != "(":
            self._fail("'in' needs a parenthesised list, e.g. in (1, 2)")
        opening = self._advance()
        if self.tok.kind == ")":
            self._fail("empty list after 'in'")
        values = [self._value(opening)]
        while self.tok.kind == ",":
            values.append(self._value(self._advance()))
        self._close(opening, "expected ',' or ')' in the list")
        return tuple(values)

    def _value(self, after: _Token) -> Value:
        tok, shown = self.tok, self.text[after.start : after.end]
        if tok.kind in ("NUM", "STR") or (tok.kind == "KW" and tok.value in ("true", "false")):
            self._advance()
            return tok.value == "true" if tok.kind == "KW" else tok.value
        if tok.kind == "KW" and tok.value == "null":
            if shown in ("=", "=="):
                self._fail(f"use 'is null' instead of '{shown} null'")
            if shown in ("!=", "<>"):
                self._fail(f"use 'is not null' instead of '{shown} null'")
            self._fail(f"null cannot be used after {shown!r}; use 'is null' or 'is not null'")
        hint = f" (quote strings: '{tok.value}')" if tok.kind == "NAME" else ""
        self._fail(f"expected a value after {shown!r}{hint}")


def parse_where(text: str) -> Node:
    """Parse a ``--where`` expression into an AST; raise :class:`WhereError` if malformed.

    Example::

        >>> parse_where("val/loss < 0.03 or x = 1")
        Or(items=(Compare(name='val/loss', op='<', value=0.03), Compare(name='x', op='=', value=1)))
    """
    return _Parser(text).parse()


def predicates(node: Node) -> Iterator[Compare | Like | In | IsNull]:
    """The conditions of the expression, left to right (each names one field or metric)."""
    if isinstance(node, (And, Or)):
        for item in node.items:
            yield from predicates(item)
    elif isinstance(node, Not):
        yield from predicates(node.item)
    else:
        yield node


def names_in(node: Node) -> set[str]:
    """Every field or metric name the expression refers to."""
    return {predicate.name for predicate in predicates(node)}


_COMPARE = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class Conditions:
    """What ``resolve`` returns for a name that is no column expression (a hyperparameter,
    whose rows live in another table): it builds each condition on the name itself.

    ``condition(node, negated)`` must follow the three-valued logic of a column: with
    ``negated`` it matches where the condition is false, not where it is unknown (a checkpoint
    without the parameter matches neither ``x = 1`` nor ``not x = 1``).
    """

    def condition(self, node: Compare | Like | In | IsNull, negated: bool) -> ColumnElement[bool]:
        raise NotImplementedError


def compile_where(
    node: Node, resolve: Callable[[str], ColumnElement[Any] | Conditions]
) -> ColumnElement[bool]:
    """Compile an AST into a SQLAlchemy boolean expression.

    Args:
        node: the result of :func:`parse_where`.
        resolve: maps a name to the column expression it means (a column, a scalar subquery over
            the metrics table...) or to a :class:`Conditions`; it may raise for an unknown name.

    Every value goes through ``literal()``, typed by its Python type: that is what SQLAlchemy
    would do for ``col == value`` anyway, except for booleans, which it would render as SQL
    constants and refuse with ``<``. Comparisons follow SQL's three-valued logic: a NULL field
    matches neither ``x = 1`` nor ``not x = 1``. ``not`` is pushed down to the conditions (De
    Morgan's laws hold in that logic), so that a :class:`Conditions` sees its own negation.
    """
    return _compile(node, resolve, False)


def _compile(
    node: Node, resolve: Callable[[str], ColumnElement[Any] | Conditions], negated: bool
) -> ColumnElement[bool]:
    if isinstance(node, (And, Or)):
        items = [_compile(item, resolve, negated) for item in node.items]
        return and_(*items) if isinstance(node, And) != negated else or_(*items)
    if isinstance(node, Not):
        return _compile(node.item, resolve, not negated)
    if not isinstance(node, (Compare, Like, In, IsNull)):
        raise TypeError(f"not a where-expression node: {node!r}")
    target = resolve(node.name)
    if isinstance(target, Conditions):
        return target.condition(node, negated)
    condition = _condition(node, target)
    return not_(condition) if negated else condition


def _condition(
    node: Compare | Like | In | IsNull, column: ColumnElement[Any]
) -> ColumnElement[bool]:
    if isinstance(node, Compare):
        return _COMPARE[node.op](column, _bound(column, node.value, node.name))
    if isinstance(node, Like):
        # LIKE is a string operator (SQLAlchemy deprecates it on other types, PostgreSQL has no
        # real ~~ text), so numbers and dates are matched by their text form.
        if not isinstance(column.type, String):
            column = cast(column, String)
        pattern = literal(node.pattern)
        return column.not_like(pattern) if node.negated else column.like(pattern)
    if isinstance(node, In):
        values = [_bound(column, v, node.name) for v in node.values]
        return column.not_in(values) if node.negated else column.in_(values)
    return column.is_not(None) if node.negated else column.is_(None)


def _bound(column: ColumnElement[Any], value: Value, name: str) -> ColumnElement[Any]:
    """``value`` as a parameter of the field's type, or a usage error when it cannot be one.

    SQLite compares across types by its affinity rules; PostgreSQL has no operator for
    ``integer = varchar`` and fails. Both now get the same answer: numbers compare with numbers
    (true/false as 1/0), booleans with true/false or 1/0, text with text (a number is compared as
    its text, as SQLite does), and anything else is refused before a query runs.
    """
    kind = column.type
    if isinstance(kind, Boolean):
        if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
            return literal(bool(value))
        expected = "true or false"
    elif isinstance(kind, (Integer, Float, Numeric)):
        if not isinstance(value, str):
            return literal(int(value) if isinstance(value, bool) else value)
        expected = "a number"
    elif isinstance(kind, String):
        if not isinstance(value, bool):
            return literal(str(value))
        expected = "a quoted string"
    else:
        return literal(value)
    shown = f"'{value}'" if isinstance(value, str) else str(value).lower()
    raise WhereTypeError(f"{name} takes {expected}, not {shown}")
