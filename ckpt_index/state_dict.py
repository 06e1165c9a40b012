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

_RESNETS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


def _prefixes(keys: list[str], suffix: str) -> list[str]:
    return [k[: -len(suffix)] for k in keys if k.endswith(suffix)]


def _resnet(shapes: Mapping[str, Shape], keys: list[str]) -> str | None:
    for prefix in _prefixes(keys, "layer1.0.conv1.weight"):
        if prefix + "conv1.weight" not in shapes:
            continue
        blocks = []
        for stage in range(1, 5):
            pattern = re.compile(re.escape(f"{prefix}layer{stage}.") + r"(\d+)\.")
            indices = {int(m.group(1)) for k in keys if (m := pattern.match(k))}
            blocks.append(len(indices))
        bottleneck = prefix + "layer1.0.conv3.weight" in shapes
        name = _RESNETS.get((tuple(blocks), bottleneck))
        if name:
            return name
    return None


def _out(shape: Shape | None) -> int | None:
    return int(shape[0]) if shape else None


def _mobile(shapes: Mapping[str, Shape], keys: list[str]) -> str | None:
    # timm: conv_stem -> blocks -> conv_head (1x1 conv after pooling).
    for prefix in _prefixes(keys, "conv_stem.weight"):
        stem = _out(shapes.get(prefix + "conv_stem.weight"))
        head = shapes.get(prefix + "conv_head.weight")
        if stem is None or head is None:
            continue
        head_out, head_in = int(head[0]), int(head[1])
        if stem == 32 and head_in == 320 and head_out == 1280:
            return "efficientnet_b0"
        if stem == 16 and head_out == 1024:
            return "mobilenetv3_small"
        if stem == 16 and head_out == 1280:
            return "mobilenetv3_large"
    # torchvision: features.0.0 is the stem; the last features.N.0 is the widest 1x1 conv.
    for prefix in _prefixes(keys, "features.0.0.weight"):
        stem = _out(shapes.get(prefix + "features.0.0.weight"))
        pattern = re.compile(re.escape(prefix + "features.") + r"(\d+)\.0\.weight$")
        last = max((int(m.group(1)) for k in keys if (m := pattern.match(k))), default=None)
        if stem is None or last is None:
            continue
        last_shape = shapes[f"{prefix}features.{last}.0.weight"]
        width, width_in = int(last_shape[0]), int(last_shape[1]) if len(last_shape) > 1 else 0
        if stem == 32 and width == 1280 and width_in == 320:
            return "efficientnet_b0"
        if stem == 16 and width == 576:
            return "mobilenetv3_small"
        if stem == 16 and width == 960:
            return "mobilenetv3_large"
    return None


def infer_encoder(shapes: Mapping[str, Shape]) -> str | None:
    """The encoder family member a state dict holds, or None when it is not recognised."""
    keys = list(shapes)
    return _resnet(shapes, keys) or _mobile(shapes, keys)
