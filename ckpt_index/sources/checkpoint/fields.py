"""The fields :func:`~ckpt_index.sources.checkpoint.reader.read_checkpoint` takes from a
checkpoint's unpickled dict: the 0-d tensors it decodes, epoch and global step, the
hyperparameters, the CLEval metrics and the ModelCheckpoint states.
"""

from __future__ import annotations

import ast
import re
from typing import TYPE_CHECKING, Any

from ckpt_index.sources.checkpoint.convert import ConversionLimit, to_plain
from ckpt_index.sources.checkpoint.formats import ZIP_ERRORS, ScalarSource
from ckpt_index.sources.checkpoint.objects import (
    ELEMENT_SIZE,
    Placeholder,
    TensorDescriptor,
    decode_scalar,
    global_name,
)
from ckpt_index.storable import as_float, as_int

if TYPE_CHECKING:
    from ckpt_index.sources.checkpoint.reader import CheckpointContents

#: 0-d tensors decoded per checkpoint at most (each is one or two small reads).
MAX_SCALAR_READS = 1024


#: Counters such as epoch and global_step are refused outside [0, 2**63).
_MAX_COUNTER = (1 << 63) - 1


#: Top-level keys whose 0-d tensors (BatchNorm counters, optimizer steps) are left undecoded.
_WEIGHT_KEYS = frozenset({"state_dict", "optimizer_states", "lr_schedulers"})


_STATE_KEY = re.compile(r"^(?P<cls>[A-Za-z_][\w.]*)(?P<kwargs>\{.*\})$", re.DOTALL)


_MODE_IN_KEY = re.compile(r"""['"]mode['"]\s*:\s*['"](min|max)['"]""")


def decode_scalars(raw: dict[Any, Any], source: ScalarSource | None) -> None:
    """Fill ``value`` of the 0-d tensors reachable outside the weights (bounded work)."""
    if source is None:
        return
    reads, budget = MAX_SCALAR_READS, 1_000_000
    stack: list[Any] = [v for k, v in raw.items() if k not in _WEIGHT_KEYS]
    seen: set[int] = set()
    while stack and budget > 0 and reads > 0:
        obj = stack.pop()
        budget -= 1
        if isinstance(obj, (str, bytes, int, float, type(None))) or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, TensorDescriptor):
            if obj.shape == () and obj.value is None and obj.storage is not None:
                reads -= 1
                obj.value = _read_scalar(obj, source)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif isinstance(obj, Placeholder):
            stack.extend(obj.args)
            stack.extend(obj.kwargs.values())
            stack.append(obj.state)
            stack.extend(v for pair in obj.dict_items or () for v in pair)
            stack.extend(obj.list_items or ())


def _read_scalar(tensor: TensorDescriptor, source: ScalarSource) -> Any:
    ref = tensor.storage
    size = ELEMENT_SIZE.get(tensor.dtype)
    if ref is None or size is None or ref.dtype not in ELEMENT_SIZE:
        return None
    start = ref.offset * ELEMENT_SIZE[ref.dtype] + tensor.storage_offset * size
    try:
        data = source.element(ref, start, size)
    except ZIP_ERRORS:  # a damaged storage member only costs this value
        return None
    return decode_scalar(tensor.dtype, data, source.byteorder) if data is not None else None


def summarize(contents: CheckpointContents) -> None:
    raw = contents.raw
    contents.epoch = _counter(contents, "epoch")
    contents.global_step = _counter(contents, "global_step")
    version = raw.get("pytorch-lightning_version")
    contents.lightning_version = version if isinstance(version, str) else None
    hparams = raw.get("hyper_parameters", raw.get("hparams"))
    contents.hyper_parameters = _hparams(contents, "hyper_parameters", hparams)
    contents.datamodule_hyper_parameters = _hparams(
        contents, "datamodule_hyper_parameters", raw.get("datamodule_hyper_parameters")
    )
    if "cleval_metrics" in raw:
        plain = _convert(contents, "cleval_metrics", raw["cleval_metrics"])
        if isinstance(plain, dict):
            contents.cleval_metrics = {
                text(k): float(v) for k, v in plain.items() if as_float(v) is not None
            }
    callbacks = raw.get("callbacks")
    if isinstance(callbacks, dict):
        for key, value in callbacks.items():
            try:
                state = _model_checkpoint(key, value)
            except ConversionLimit as exc:
                contents.warnings.append(f"callbacks[{text(key)[:80]!r}]: {exc}")
                continue
            if state is not None:
                contents.checkpoint_callbacks.append(state)


def _hparams(contents: CheckpointContents, name: str, value: Any) -> dict[Any, Any] | None:
    """Saved hparams as a plain dict (OmegaConf, AttributeDict and Namespace stand-ins
    converted), or None: absent, too large or deep (a warning), or not a mapping (a warning)."""
    if value is None:
        return None
    plain = _convert(contents, name, value)
    if plain is None or isinstance(plain, dict):
        return plain
    contents.warnings.append(f"{name}: not a mapping ({type(plain).__name__}); ignored")
    return None


def _convert(contents: CheckpointContents, name: str, value: Any) -> Any:
    """``to_plain(value)``, or None with a warning when it is too large or deep to convert."""
    try:
        return to_plain(value)
    except ConversionLimit as exc:
        contents.warnings.append(f"{name}: {exc}")
        return None


def _counter(contents: CheckpointContents, key: str) -> int | None:
    """``raw[key]`` if it is an int in [0, 2**63), else None (with a warning when it is an int)."""
    value = as_int(contents.raw.get(key))
    if value is not None and not 0 <= value <= _MAX_COUNTER:
        text = str(value) if value.bit_length() < 200 else f"a {value.bit_length()}-bit integer"
        contents.warnings.append(f"{key}: {text} is outside the range of a counter")
        return None
    return value


def text(value: Any) -> str:
    """``str(value)``, or a stand-in when it cannot print (str() refuses ints past 4300 digits)."""
    if isinstance(value, str):
        return value
    try:
        return str(value)
    except (ValueError, RecursionError):
        return f"<unprintable {type(value).__name__}>"


def _model_checkpoint(key: Any, state: Any) -> dict[str, Any] | None:
    """The fields of a ModelCheckpoint state, or None for other callbacks."""
    config: dict[str, Any] | None = None
    if isinstance(key, str):
        key_text = key
        match = _STATE_KEY.match(key)
        cls_name = match["cls"] if match else key
        if match and len(key) <= 10_000:
            try:
                parsed = ast.literal_eval(match["kwargs"])
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                parsed = None
            config = parsed if isinstance(parsed, dict) else None
    elif isinstance(key, type) and issubclass(key, Placeholder):  # Lightning < 1.5 keyed by class
        key_text = global_name(key) or ""
        cls_name = key.name
    else:
        return None
    if not isinstance(state, dict):
        return None
    if not (
        cls_name.endswith("ModelCheckpoint")
        or "best_model_path" in state
        or "best_k_models" in state
    ):
        return None
    plain = to_plain(state)
    config = config or {}
    mode = config.get("mode", plain.get("mode"))
    if mode is None and (found := _MODE_IN_KEY.search(key_text)):
        mode = found[1]
    best_k = plain.get("best_k_models")
    return {
        "state_key": key_text,
        "monitor": config.get("monitor", plain.get("monitor")),
        "mode": mode,
        "current_score": as_float(plain.get("current_score")),
        "best_model_score": as_float(plain.get("best_model_score")),
        "best_model_path": plain.get("best_model_path"),
        "best_k_models": {text(k): as_float(v) for k, v in best_k.items()}
        if isinstance(best_k, dict)
        else {},
        "kth_best_model_path": plain.get("kth_best_model_path"),
        "last_model_path": plain.get("last_model_path"),
        "dirpath": plain.get("dirpath"),
        # Not in Lightning's own state or key; a subclass may keep them in either.
        "save_top_k": config.get("save_top_k", plain.get("save_top_k")),
        "save_last": config.get("save_last", plain.get("save_last")),
        "config": config,
    }
