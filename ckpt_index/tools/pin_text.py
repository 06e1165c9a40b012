"""Setting or removing a sidecar's top-level ``pinned: true`` as a targeted edit of its text.

A sidecar is a file people read and annotate: pinning must not reorder its keys, drop its comments
or change its line endings. The edit touches only the top-level ``pinned`` entry (its value, or
its lines), or appends one line; every other byte stays. An edit is kept only when the edited text
parses to exactly the document it should give (the original with ``pinned`` set, or without it),
so a document the edit does not understand (an anchor shared with another value, a merge key, an
odd layout) cannot be changed by accident: it gets a full rewrite of its values instead, which
keeps every key and value but not the comments or layout, and the caller says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from ckpt_index.sidecar.files import SidecarError, dump_document, parse_sidecar_bytes

KEY = "pinned"
_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")
_STR_TAG = "tag:yaml.org,2002:str"


@dataclass(frozen=True)
class PinnedText:
    """The sidecar's new text; ``rewritten`` says why the whole document was rewritten (comments
    and layout not kept), None for a targeted edit."""

    text: str
    rewritten: str | None = None


def expected_document(document: dict[str, Any], pinned: bool) -> dict[str, Any]:
    """``document`` with ``pinned: true`` (its place kept when it had the key), or without it."""
    if pinned:
        return {**document, KEY: True}
    return {k: v for k, v in document.items() if k != KEY}


def edit_pinned(text: str, document: dict[str, Any], pinned: bool) -> PinnedText:
    """The text of the sidecar ``text`` (parsed: ``document``) with ``pinned: true`` set, or with
    its top-level ``pinned`` entry removed (``pinned=False``).

    Tried in order: the targeted edit, checked by parsing its result; then a full rewrite of the
    document's values (:func:`~ckpt_index.sidecar.files.dump_document`), checked the same way.
    Raises :class:`ValueError` when neither gives the expected document.
    """
    expected = expected_document(document, pinned)
    try:
        candidate = _targeted(text, pinned)
        why = "the document's layout is not one a line edit can change safely"
    except _NotEditable as exc:
        candidate, why = None, str(exc)
    if candidate is not None and _parses_to(candidate, expected):
        return PinnedText(candidate)
    rewrite = dump_document(expected)
    if _parses_to(rewrite, expected):
        return PinnedText(rewrite, rewritten=why)
    raise ValueError("the document cannot be written back with the same values")


class _NotEditable(Exception):
    """Why no targeted edit is attempted."""


def _targeted(text: str, pinned: bool) -> str:
    """The targeted edit of ``text`` (unchecked); raises :class:`_NotEditable`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError) as exc:
        raise _NotEditable(
            f"its YAML cannot be edited in place ({exc.__class__.__name__})"
        ) from None
    if not isinstance(root, yaml.MappingNode):
        raise _NotEditable("it is not a mapping")
    entries = [
        (key, value)
        for key, value in root.value
        if isinstance(key, yaml.ScalarNode) and key.tag == _STR_TAG and key.value == KEY
    ]
    # Right to left: the positions of the entries not edited yet stay valid.
    entries.sort(key=lambda pair: pair[0].start_mark.index, reverse=True)
    if pinned:
        if not entries:
            return _append(text, root)
        for _, value in entries:
            text = _set_true(text, value)
        return text
    for key, value in entries:
        text = (
            _remove_flow(text, key, value) if root.flow_style else _remove_lines(text, key, value)
        )
    return text


def _newline(text: str) -> str:
    """The line break the file uses where a line is added: its last one (``\\n`` if none)."""
    at = max(text.rfind("\n"), text.rfind("\r"))
    if at < 0:
        return "\n"
    return "\r\n" if text[at - 1 : at + 1] == "\r\n" else text[at]


def _append(text: str, root: yaml.MappingNode) -> str:
    """``text`` with a ``pinned: true`` entry added at the end of the top-level mapping."""
    if root.flow_style:
        close = root.end_mark.index - 1
        if close < 0 or text[close] != "}":
            raise _NotEditable("its flow mapping does not end with '}'")
        return f"{text[:close]}{', ' if root.value else ''}{KEY}: true{text[close:]}"
    newline = _newline(text)
    end = root.end_mark.index
    if text.startswith(("...", "---"), end) and _line_start(text, end) == end:
        # An explicit end of the document: the entry goes before it, not into a second one.
        return f"{text[:end]}{KEY}: true{newline}{text[end:]}"
    if not text or _LINE_BREAK.fullmatch(text[-1]):
        return f"{text}{KEY}: true{newline}"
    # No final line break: the entry goes on a line of its own, and the file still ends without
    # one (an unpin then gives back the very same bytes).
    return f"{text}{newline}{KEY}: true"


def _set_true(text: str, value: yaml.Node) -> str:
    if not isinstance(value, yaml.ScalarNode):
        raise _NotEditable("its pinned value is not a scalar")
    start, end = value.start_mark.index, value.end_mark.index
    if start == end:  # `pinned:` with no value (null): the value goes after the colon
        return f"{text[:start]} true{text[start:]}"
    return f"{text[:start]}true{text[end:]}"


def _line_start(text: str, index: int) -> int:
    return max(text.rfind("\n", 0, index), text.rfind("\r", 0, index)) + 1


def _remove_lines(text: str, key: yaml.Node, value: yaml.Node) -> str:
    """``text`` without the lines of one top-level block entry (its key at column 0)."""
    if key.start_mark.column != 0:
        raise _NotEditable("its pinned key is not at the start of a line")
    start = _line_start(text, key.start_mark.index)
    end = value.end_mark.index
    if end == 0 or not _LINE_BREAK.fullmatch(text[end - 1]):
        found = _LINE_BREAK.search(text, end)
        end = found.end() if found else len(text)
    if end == len(text) and not _LINE_BREAK.fullmatch(text[end - 1 :]) and start > 0:
        # The last line, without a final line break: its preceding line break goes with it.
        start -= 2 if text[start - 2 : start] == "\r\n" else 1
    return text[:start] + text[end:]


def _remove_flow(text: str, key: yaml.Node, value: yaml.Node) -> str:
    """``text`` without one entry of a top-level flow mapping, and one comma beside it."""
    start, end = key.start_mark.index, value.end_mark.index
    after = re.compile(r"\s*,\s*").match(text, end)
    if after:
        return text[:start] + text[after.end() :]
    before = re.compile(r",\s*$").search(text[:start])
    if before:
        return text[: before.start()] + text[end:]
    return text[:start] + text[end:]


def _parses_to(text: str, expected: dict[str, Any]) -> bool:
    """Whether ``text`` is a sidecar document equal to ``expected``, key order and types too."""
    try:
        parsed = parse_sidecar_bytes(text.encode("utf-8"))
    except (SidecarError, UnicodeEncodeError):
        return False
    return _same(parsed, expected)


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types (``1``, ``1.0`` and ``True`` differ), NaN equal to NaN, and
    mappings with their keys in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)
