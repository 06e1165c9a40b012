"""Reading and writing ``X.metadata.yaml`` sidecars, the file beside checkpoint ``X.ckpt``.

Reading is defensive: bounded size, UTF-8 text only, YAML safe loading (libyaml's C loader when
present), and a check of how large the document would become once aliases are expanded, made on
the composed node graph before anything is constructed. Every rejection is a
:class:`SidecarError` whose ``reason`` is one line naming the field or the parse error.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ckpt_index.safe_io import UnsafeFileError, read_bounded

if TYPE_CHECKING:  # pydantic is imported when a sidecar is validated: parsing workers start faster
    from ckpt_index.sidecar.schema import CheckpointMetadataV1

CKPT_SUFFIX = ".ckpt"
SIDECAR_SUFFIX = ".metadata.yaml"

#: A seed-shaped sidecar is 1-3 KB; anything past this is not a sidecar.
MAX_SIDECAR_BYTES = 1 << 20
#: Nodes the document may expand to once aliases are followed (a sidecar has about a hundred).
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 64
#: Opening characters a document may hold before its nesting depth is checked event by event.
_DEPTH_SCAN_AFTER = MAX_DEPTH

# libyaml's C loader and dumper when present (same results, several times faster); the type
# checker is shown the pure-Python classes, whose interface they share.
if TYPE_CHECKING:
    _SafeLoader = yaml.SafeLoader
    _BaseDumper = yaml.SafeDumper
else:
    _SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    _BaseDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
#: Tags of plain scalars already resolved: the tag of a plain scalar depends on its text alone,
#: and the keys and small values of sidecars repeat from file to file.
_PLAIN_TAGS: dict[str, str] = {}


class _Loader(_SafeLoader):
    """The safe loader, with the tags of repeated plain scalars remembered (same tags)."""

    def resolve(self, kind: type, value: Any, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = _PLAIN_TAGS.get(value)
            if tag is None:
                tag = super().resolve(kind, value, implicit)
                if len(value) <= 64 and len(_PLAIN_TAGS) < 8192:
                    _PLAIN_TAGS[value] = tag
            return tag
        return super().resolve(kind, value, implicit)


class SidecarError(Exception):
    """A sidecar that cannot be used; ``reason`` is a one-line explanation."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def sidecar_path_for(ckpt_path: Path | str) -> Path:
    """``dir/X.ckpt`` -> ``dir/X.metadata.yaml``."""
    path = Path(ckpt_path)
    name = path.name[: -len(CKPT_SUFFIX)] if path.name.endswith(CKPT_SUFFIX) else path.name
    return path.with_name(name + SIDECAR_SUFFIX)


def checkpoint_path_for(sidecar_path: Path | str) -> Path:
    """``dir/X.metadata.yaml`` -> ``dir/X.ckpt``."""
    path = Path(sidecar_path)
    if not path.name.endswith(SIDECAR_SUFFIX):
        raise ValueError(f"{path}: not a sidecar name (expected *{SIDECAR_SUFFIX})")
    return path.with_name(path.name[: -len(SIDECAR_SUFFIX)] + CKPT_SUFFIX)


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """``problem (context) at line L, column C`` without the parser's multi-line layout."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        where = exc.problem_mark or exc.context_mark
        reason = exc.problem if not exc.context else f"{exc.problem} ({exc.context})"
        if where is not None:
            reason += f" at line {where.line + 1}, column {where.column + 1}"
        return " ".join(reason.split())
    return " ".join(str(exc).split())


def _check_expansion(root: yaml.Node, path: Path) -> None:
    """Refuse alias bombs and cycles by sizing the node graph as it would be expanded."""
    sizes: dict[int, int] = {}
    on_stack: set[int] = set()
    # Iterative post-order walk; memoising per node keeps it linear in the composed graph.
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_stack.discard(key)
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > MAX_EXPANDED_NODES:
                raise SidecarError(
                    path,
                    f"YAML expands to more than {MAX_EXPANDED_NODES:,} nodes (alias bomb?)",
                )
            continue
        if key in sizes:
            continue
        if key in on_stack:
            raise SidecarError(path, "YAML aliases form a cycle")
        if depth > MAX_DEPTH:
            raise SidecarError(path, f"YAML nests deeper than {MAX_DEPTH} levels")
        on_stack.add(key)
        stack.append((node, depth, True))
        for child in _children(node):
            if id(child) not in sizes:
                stack.append((child, depth + 1, False))


def _check_depth(text: str, path: Path, max_nodes: int | None = None) -> None:
    """Refuse deep nesting from the event stream, before libyaml's recursive composer sees it.

    The C composer recurses once per level without a depth guard: some 30,000 ``[`` crash the
    interpreter (SIGSEGV). The parser itself is iterative, so counting events is safe. With
    ``max_nodes``, a document of more nodes is refused before any is built.
    """
    loader = _Loader(text)
    depth = 0
    events = 0
    limit = None if max_nodes is None else 2 * max_nodes + 4  # start and end events per node
    try:
        while loader.check_event():
            event = loader.get_event()
            events += 1
            if limit is not None and events > limit:
                raise SidecarError(path, f"YAML holds more than {max_nodes:,} values")
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SidecarError(path, f"YAML nests deeper than {MAX_DEPTH} levels")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
    except yaml.YAMLError as exc:
        raise SidecarError(path, f"YAML error: {_yaml_reason(exc)}") from None
    finally:
        loader.dispose()


class _Unusual(Exception):
    """A node the plain constructor leaves to PyYAML's (a merge key, an explicit tag, ...)."""


_STR_TAG = "tag:yaml.org,2002:str"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_SCALAR_CONSTRUCTORS = {
    f"tag:yaml.org,2002:{name}": _SafeLoader.yaml_constructors[f"tag:yaml.org,2002:{name}"]
    for name in ("null", "bool", "int", "float", "timestamp")
}


def _construct_plain(loader: Any, node: yaml.Node) -> Any:
    """The value of a document of plain mappings, lists and scalars, as PyYAML's safe loader
    would build it, in a third of the time; raises :class:`_Unusual` on anything else.

    Scalars other than strings go through the safe loader's own constructors, so an int, a float
    or a date means the same here as there. Merge keys, explicit tags and unhashable keys are
    left to the full constructor, which builds them (or names the error) as it always has.
    """
    kind = type(node)
    if kind is yaml.ScalarNode:
        if node.tag == _STR_TAG:
            return node.value
        constructor = _SCALAR_CONSTRUCTORS.get(node.tag)
        if constructor is None:
            raise _Unusual
        return constructor(loader, node)
    if kind is yaml.MappingNode and node.tag == _MAP_TAG:
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _construct_plain(loader, key_node)
            if type(key) not in (str, int, float, bool) and key is not None:
                raise _Unusual  # a merge key ('<<'), a date or an unhashable key
            mapping[key] = _construct_plain(loader, value_node)
        return mapping
    if kind is yaml.SequenceNode and node.tag == _SEQ_TAG:
        return [_construct_plain(loader, child) for child in node.value]
    raise _Unusual


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def parse_sidecar_bytes(data: bytes, path: Path | str = "<sidecar>") -> dict[str, Any]:
    """Safely parse sidecar bytes into a mapping, or raise :class:`SidecarError`."""
    document = _with_repeated_block(data)
    return document if document is not None else parse_yaml_bytes(data, path)


#: The ``hyperparameters`` block of a sidecar: its key at column 0 alone on its line, then every
#: line up to the next one that starts at column 0 with something other than a comment.
_BLOCK_KEY = "hyperparameters:"
_BLOCK_END = re.compile(r"\n[^ \t\n#]")
#: What the block split leaves to the full parse: aliases, anchors, tags, escapes and line breaks
#: other than ``\n`` (the split only knows ``\n``); directives (``%`` at a line start) too.
_NOT_SPLIT = ("*", "&", "!", "\\", "\r", "\x85", "\u2028", "\u2029", "\n%")
#: Block text -> (its value, pickled: each caller gets its own copy; its nesting depth). The
#: checkpoints of a run repeat the same block. Bounded.
_BLOCKS: dict[str, tuple[bytes, int]] = {}
_MAX_BLOCKS = 256


def _with_repeated_block(data: bytes) -> dict[str, Any] | None:
    """The document, its ``hyperparameters`` block parsed once per distinct text; None: use
    :func:`parse_yaml_bytes` (the only path that reports errors).

    The checkpoints of a run share a config of a few hundred values, which costs several times
    the rest of the sidecar to compose. The block is cut out and parsed alone, and the rest with
    ``hyperparameters: null`` in its place; when both parse, the rest really holds that key at
    the top level (so the cut is at a top-level key, not inside a string or a flow collection)
    and the block closes every string and bracket it opens, the document is exactly the rest
    with the block's value. Anything unusual (an alias, a tag, a guard that fails) falls back to
    the full parse, which gives the same document or the same error.
    """
    if b"hyperparameters:" not in data or len(data) > MAX_SIDECAR_BYTES or b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.startswith("%") or any(c in text for c in _NOT_SPLIT):
        return None
    if text.startswith(_BLOCK_KEY):
        at = 0
    else:
        at = text.find("\n" + _BLOCK_KEY) + 1
        if at == 0:
            return None
    if text.find("\n" + _BLOCK_KEY, at) >= 0:
        return None  # the key twice
    line_end = text.find("\n", at)
    if line_end < 0 or text[at + len(_BLOCK_KEY) : line_end].strip(" \t"):
        return None  # a value on the key's line (a flow mapping, a scalar)
    end_match = _BLOCK_END.search(text, line_end)
    end = end_match.start() + 1 if end_match else len(text)
    block, rest_text = text[at:end], f"{text[:at]}hyperparameters: null\n{text[end:]}"
    # The nesting guard parse_yaml_bytes would run, on both parts: the document nests as deep
    # as the deeper of them (the block has no aliases: its depth is its value's).
    scan = sum(data.count(c) for c in (b"[", b"{", b"-", b"?")) > _DEPTH_SCAN_AFTER
    cached = _BLOCKS.get(block)
    try:
        if cached is None:
            if scan:
                _check_depth(block, Path("<sidecar>"))
            parsed = _plain_document(block)
            value = parsed.get("hyperparameters") if isinstance(parsed, dict) else None
            if not isinstance(value, dict):
                return None
            cached = (pickle.dumps(value, pickle.HIGHEST_PROTOCOL), 1 + _nesting(value))
            if len(_BLOCKS) >= _MAX_BLOCKS:
                _BLOCKS.clear()
            _BLOCKS[block] = cached
        if scan:
            if cached[1] > MAX_DEPTH:
                return None
            _check_depth(rest_text, Path("<sidecar>"))
    except SidecarError:
        return None
    rest = _plain_document(rest_text)
    if not isinstance(rest, dict) or "hyperparameters" not in rest:
        return None
    if rest["hyperparameters"] is not None:
        return None
    rest["hyperparameters"] = pickle.loads(cached[0])  # noqa: S301 (bytes pickled just above)
    return rest


def _nesting(value: Any) -> int:
    """How many mappings and lists deep ``value`` nests (a scalar: 0)."""
    if type(value) is dict:
        return 1 + max((_nesting(item) for item in value.values()), default=0)
    if type(value) is list:
        return 1 + max((_nesting(item) for item in value), default=0)
    return 0


def _plain_document(text: str) -> Any:
    """``text`` built by :func:`_construct_plain`; None on any error or unusual node."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        return None if node is None else _construct_plain(loader, node)
    except (yaml.YAMLError, _Unusual, RecursionError, MemoryError, ValueError, TypeError):
        return None
    except (AttributeError, OverflowError, KeyError, IndexError):
        return None
    finally:
        loader.dispose()


def parse_yaml_bytes(
    data: bytes,
    path: Path | str = "<yaml>",
    *,
    max_bytes: int = MAX_SIDECAR_BYTES,
    scan_depth: bool = False,
    max_nodes: int | None = None,
) -> dict[str, Any]:
    """A YAML mapping from untrusted bytes, with the sidecar guards; raises :class:`SidecarError`.

    ``scan_depth`` checks nesting on every document, not only those with many opening
    characters: block mappings nest by indentation alone, and a config's consumers (OmegaConf,
    ``copy.deepcopy``) recurse in Python once per level, so they need the bound that the C
    composer alone does not. ``max_nodes`` (with ``scan_depth``) refuses documents of more nodes
    before they are composed.
    """
    path = Path(path)
    if len(data) > max_bytes:
        raise SidecarError(path, f"file is {len(data):,} bytes, over the {max_bytes:,}-byte limit")
    if b"\x00" in data:
        raise SidecarError(path, "binary data, not YAML text (NUL byte)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SidecarError(path, f"not UTF-8 text (byte {exc.start})") from None
    # The two guards below walk the document in Python, which costs more than parsing it. They are
    # only needed when the bytes could trigger them: nesting takes an opening character per level
    # ('[', '{', '-' or '?'; block mappings need ever-longer indentation, so 1 MiB holds too few
    # of those to crash the composer), and expansion needs an alias ('*').
    if scan_depth or sum(data.count(c) for c in (b"[", b"{", b"-", b"?")) > _DEPTH_SCAN_AFTER:
        _check_depth(text, path, max_nodes if scan_depth else None)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SidecarError(path, "empty document, expected a mapping")
        if b"*" in data:
            _check_expansion(node, path)
        try:
            document = _construct_plain(loader, node)
        except _Unusual:
            document = loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise SidecarError(path, f"YAML error: {_yaml_reason(exc)}") from None
    except (RecursionError, MemoryError):
        raise SidecarError(path, "YAML too deeply nested or too large") from None
    except (ValueError, TypeError, AttributeError, OverflowError, KeyError, IndexError) as exc:
        # PyYAML's constructors raise plain errors for values such as 2025-02-30 or a
        # 5,000-digit integer; they are still just a bad file.
        raise SidecarError(path, f"YAML value error: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    if not isinstance(document, dict):
        raise SidecarError(
            path, f"expected a mapping at the top level, got {type(document).__name__}"
        )
    return document


def read_sidecar(sidecar_path: Path | str) -> CheckpointMetadataV1:
    """Read and validate one sidecar file; raise :class:`SidecarError` with a reason."""
    path = Path(sidecar_path)
    try:
        data = read_bounded(path, MAX_SIDECAR_BYTES, what="sidecar")
    except UnsafeFileError as exc:
        raise SidecarError(path, exc.reason) from None
    # parse_sidecar_bytes refused NUL bytes and non-UTF-8: only an escape can make bad text.
    return validate_document(parse_sidecar_bytes(data, path), path, plain_text=b"\\" not in data)


def validate_document(
    document: dict[str, Any], path: Path | str, *, plain_text: bool = False
) -> CheckpointMetadataV1:
    """The sidecar model of a parsed document; ``plain_text``: its YAML held no escape, so no
    string in it can hold a NUL or a lone surrogate (the walk that looks for them is skipped)."""
    from pydantic import ValidationError

    from ckpt_index.sidecar.schema import CheckpointMetadataV1, format_validation_error

    try:
        return CheckpointMetadataV1.model_validate(document, context={"plain_text": plain_text})
    except ValidationError as exc:
        raise SidecarError(path, format_validation_error(exc)) from None


def load_metadata(ckpt_path: Path | str) -> CheckpointMetadataV1 | None:
    """The metadata of a checkpoint from its sidecar; ``None`` when it has no sidecar.

    Raises :class:`SidecarError` when the sidecar exists but is invalid.
    """
    path = sidecar_path_for(ckpt_path)
    if not path.exists():
        return None
    return read_sidecar(path)


class _SidecarDumper(_BaseDumper):
    """Never emits anchors/aliases; short lists of scalars go on one line."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = len(data) <= 16 and all(isinstance(v, (int, float, str, bool)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_SidecarDumper.add_representer(list, _represent_list)


def dump_metadata(meta: CheckpointMetadataV1) -> str:
    """The YAML text of a sidecar: declaration key order, no aliases, no nulls."""
    data = meta.model_dump(mode="json", exclude_none=True)
    if meta.hyperparameters:  # as given: JSON mode turns NaN and infinities into nulls
        try:
            return dump_document({**data, "hyperparameters": meta.hyperparameters})
        except yaml.YAMLError:  # a value safe dumping cannot write (a tuple): JSON mode's
            pass
    return dump_document(data)


def dump_document(data: dict[str, Any]) -> str:
    """YAML text of a plain mapping, in the sidecar style."""
    return yaml.dump(
        data,
        Dumper=_SidecarDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
    )


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# Read once at import: os.umask() can only be read by setting it, which races with threads.
_UMASK = _read_umask()


def _link_new(tmp_name: str, target: Path) -> None:
    """Link ``tmp_name`` to ``target``; an existing ``target`` is named in the error.

    ``os.link``'s own error names the temporary file first, which tells a user nothing.
    """
    try:
        os.link(tmp_name, target)
    except FileExistsError:
        raise FileExistsError(
            errno.EEXIST, "sidecar already exists (pass force=True to replace it)", str(target)
        ) from None


def save_metadata(
    meta: CheckpointMetadataV1,
    ckpt_path: Path | str,
    *,
    force: bool = False,
    durable: bool = True,
) -> Path:
    """Write the sidecar of ``ckpt_path`` atomically and return its path.

    The text goes to a temporary file in the same directory, is flushed to disk (``durable``),
    then linked into place: readers see the old file or the whole new one, never a torn write.
    An existing sidecar is kept (``FileExistsError``) unless ``force``. The training callback
    passes ``durable=False``: the checkpoint beside it is not fsynced either.
    """
    target = sidecar_path_for(ckpt_path)
    text = dump_metadata(meta).encode("utf-8")
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            # mkstemp makes the file 0600; a sidecar is shared like any file the user creates.
            os.fchmod(handle.fileno(), 0o666 & ~_UMASK)
            handle.write(text)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        if force:
            os.replace(tmp_name, target)
        else:
            # link() fails if the target exists, so a concurrent writer cannot be clobbered.
            _link_new(tmp_name, target)
            os.unlink(tmp_name)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return target
