"""Naming the encoder from a state dict's keys and shapes, when nothing else names it.

Only shapes are needed (the checkpoint reader gives them without reading tensors). The encoder's
keys sit under some attribute prefix of the LightningModule (``model.encoder.backbone.``...),
found by locating a key every member of a family has.

- ResNet: blocks per stage (``layerN.i``) and whether blocks are bottlenecks (``conv3``).
- MobileNetV3 / EfficientNet: stem width and head width, torchvision or timm key names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

Shape = Sequence[int]

_RESNETS: dict[tuple[tuple[int, ...], bool], str] = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


#: Candidate prefixes examined per family at most (a real state dict has one or two); the work is
#: linear in the keys whatever their number, this bounds the memory of hostile ones.
MAX_CANDIDATES = 10_000
_RESNET_BLOCK = re.compile(r"layer([1-4])\.(\d{1,9})\.")
_FEATURES_BLOCK = re.compile(r"features\.(\d{1,9})\.0\.weight$")


def _prefixes(
    keys: list[str], suffix: str, also: str = "", shapes: Mapping[str, Shape] = {}
) -> list[str]:
    """Prefixes of the keys ending in ``suffix`` (and having ``prefix + also`` in ``shapes``)."""
    found = [key[: -len(suffix)] for key in keys if key.endswith(suffix)]
    if also:
        found = [prefix for prefix in found if prefix + also in shapes]
    return found[:MAX_CANDIDATES]


def _resnet(shapes: Mapping[str, Shape], keys: list[str]) -> str | None:
    candidates = _prefixes(keys, "layer1.0.conv1.weight", "conv1.weight", shapes)
    if not candidates:
        return None
    # One pass over the keys: prefix -> stage -> block indices (linear in the keys, whatever
    # the number of candidates).
    blocks: dict[str, list[set[int]]] = {p: [set(), set(), set(), set()] for p in candidates}
    for key in keys:
        for match in _RESNET_BLOCK.finditer(key):
            stages = blocks.get(key[: match.start()])
            if stages is not None:
                stages[int(match[1]) - 1].add(int(match[2]))
    for prefix in candidates:
        counts = tuple(len(indices) for indices in blocks[prefix])
        bottleneck = prefix + "layer1.0.conv3.weight" in shapes
        name = _RESNETS.get((counts, bottleneck))
        if name:
            return name
    return None


def _out(shape: Shape | None) -> int | None:
    return int(shape[0]) if shape else None


def _dims(shape: Shape | None) -> tuple[int, int]:
    """(out, in) channels of a weight's shape, 0 where it has fewer dims."""
    shape = tuple(shape or ())
    return (int(shape[0]) if shape else 0, int(shape[1]) if len(shape) > 1 else 0)


def _mobile_name(stem: int, width: int, width_in: int, small: int, large: int) -> str | None:
    """The family member of a stem of ``stem`` channels and a last 1x1 conv of ``width`` out and
    ``width_in`` in channels; ``small`` / ``large`` are the MobileNetV3 widths of that layout."""
    if stem == 32 and width == 1280 and width_in == 320:
        return "efficientnet_b0"
    if stem == 16 and width == small:
        return "mobilenetv3_small"
    if stem == 16 and width == large:
        return "mobilenetv3_large"
    return None


def _timm_mobile(shapes: Mapping[str, Shape], keys: list[str]) -> str | None:
    # timm: conv_stem -> blocks -> conv_head (1x1 conv after pooling).
    for prefix in _prefixes(keys, "conv_stem.weight"):
        stem = _out(shapes.get(prefix + "conv_stem.weight"))
        head = shapes.get(prefix + "conv_head.weight")
        if stem is None or head is None:
            continue
        name = _mobile_name(stem, *_dims(head), small=1024, large=1280)
        if name:
            return name
    return None


def _torchvision_mobile(shapes: Mapping[str, Shape], keys: list[str]) -> str | None:
    # torchvision: features.0.0 is the stem; the last features.N.0 is the widest 1x1 conv.
    candidates = _prefixes(keys, "features.0.0.weight", "features.0.0.weight", shapes)
    if not candidates:
        return None
    last: dict[str, tuple[int, str]] = {}  # prefix -> (N, key) of its highest features.N.0.weight
    wanted = set(candidates)
    for key in keys:
        if key.endswith(".0.weight") and (match := _FEATURES_BLOCK.search(key)):
            prefix, index = key[: match.start()], int(match[1])
            if prefix in wanted and index >= last.get(prefix, (-1, ""))[0]:
                last[prefix] = (index, key)
    for prefix in candidates:
        stem = _out(shapes.get(prefix + "features.0.0.weight"))
        if stem is None or prefix not in last:
            continue
        name = _mobile_name(stem, *_dims(shapes[last[prefix][1]]), small=576, large=960)
        if name:
            return name
    return None


def _mobile(shapes: Mapping[str, Shape], keys: list[str]) -> str | None:
    return _timm_mobile(shapes, keys) or _torchvision_mobile(shapes, keys)


def infer_encoder(shapes: Mapping[str, Shape]) -> str | None:
    """The encoder family member a state dict holds, or None when it is not recognised.

    Linear in the number of keys: each family's key patterns are matched in one pass.
    """
    keys = [key for key in shapes if isinstance(key, str)]
    return _resnet(shapes, keys) or _mobile(shapes, keys)
