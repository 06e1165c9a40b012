"""Encoder inference from state-dict shapes, on state dicts built from real torch.nn modules.

The modules reproduce the key names and shapes of torchvision's and timm's encoders (stem, stages,
blocks, head) without depending on either library.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from ckpt_index.sources.state_dict import infer_encoder  # noqa: E402


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, downsample: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, bias=False), nn.BatchNorm2d(cout)
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)
            )


class Bottleneck(nn.Module):
    def __init__(self, cin: int, cout: int, downsample: bool) -> None:
        super().__init__()
        mid = cout // 4
        self.conv1, self.bn1 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self.conv2, self.bn2 = nn.Conv2d(mid, mid, 3, bias=False), nn.BatchNorm2d(mid)
        self.conv3, self.bn3 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        if downsample:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)
            )


class ResNet(nn.Module):
    """torchvision.models.ResNet's attribute layout."""

    def __init__(self, blocks: list[int], bottleneck: bool) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, bias=False), nn.BatchNorm2d(64)
        block = Bottleneck if bottleneck else BasicBlock
        widths = [256, 512, 1024, 2048] if bottleneck else [64, 128, 256, 512]
        cin = 64
        for stage, (count, width) in enumerate(zip(blocks, widths, strict=True), start=1):
            layers = [
                block(cin if i == 0 else width, width, i == 0 and cin != width)
                for i in range(count)
            ]
            setattr(self, f"layer{stage}", nn.Sequential(*layers))
            cin = width
        self.fc = nn.Linear(cin, 1000)


def conv_bn(cin: int, cout: int, k: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, bias=False), nn.BatchNorm2d(cout))


class TorchvisionMobileNetV3(nn.Module):
    """features.0 is the stem; the last features entry is the 1x1 conv to 576 (small) / 960."""

    def __init__(self, large: bool) -> None:
        super().__init__()
        widths = [16, 16, 24, 40, 80, 112, 160] if large else [16, 16, 24, 40, 48, 96]
        n_blocks = 15 if large else 11
        layers = [conv_bn(3, 16, 3)]
        cin = 16
        for i in range(n_blocks):
            cout = widths[min(i * len(widths) // n_blocks, len(widths) - 1)]
            layers.append(nn.Sequential(conv_bn(cin, cout)))  # an inverted-residual stand-in
            cin = cout
        layers.append(conv_bn(cin, 960 if large else 576))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(960 if large else 576, 1280 if large else 1024))


class TimmMobileNet(nn.Module):
    """timm's conv_stem / blocks / conv_head layout (MobileNetV3 and EfficientNet)."""

    def __init__(self, stem: int, last: int, head: int) -> None:
        super().__init__()
        self.conv_stem, self.bn1 = nn.Conv2d(3, stem, 3, bias=False), nn.BatchNorm2d(stem)
        self.blocks = nn.Sequential(
            nn.Sequential(conv_bn(stem, 24)), nn.Sequential(conv_bn(24, last))
        )
        self.conv_head = nn.Conv2d(last, head, 1)


class TorchvisionEfficientNetB0(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        stages = [conv_bn(3, 32, 3)] + [
            nn.Sequential(conv_bn(c_in, c_out))
            for c_in, c_out in [
                (32, 16),
                (16, 24),
                (24, 40),
                (40, 80),
                (80, 112),
                (112, 192),
                (192, 320),
            ]
        ]
        stages.append(conv_bn(320, 1280))
        self.features = nn.Sequential(*stages)


class LitWrapper(nn.Module):
    """A LightningModule-like owner: the encoder sits under ``model.encoder.``."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.encoder = encoder
        self.model.decoder = nn.Conv2d(8, 8, 1)


def shapes_of(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


ENCODERS = {
    "resnet18": lambda: ResNet([2, 2, 2, 2], bottleneck=False),
    "resnet34": lambda: ResNet([3, 4, 6, 3], bottleneck=False),
    "resnet50": lambda: ResNet([3, 4, 6, 3], bottleneck=True),
    "resnet101": lambda: ResNet([3, 4, 23, 3], bottleneck=True),
    "mobilenetv3_small": lambda: TorchvisionMobileNetV3(large=False),
    "mobilenetv3_large": lambda: TorchvisionMobileNetV3(large=True),
    "efficientnet_b0": TorchvisionEfficientNetB0,
}
TIMM = {
    "mobilenetv3_small": lambda: TimmMobileNet(16, 576, 1024),
    "mobilenetv3_large": lambda: TimmMobileNet(16, 960, 1280),
    "efficientnet_b0": lambda: TimmMobileNet(32, 320, 1280),
}


@pytest.mark.parametrize("name", sorted(ENCODERS))
@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "lightning-prefix"])
def test_torchvision_layouts(name: str, wrapped: bool) -> None:
    module = ENCODERS[name]()
    assert infer_encoder(shapes_of(LitWrapper(module) if wrapped else module)) == name


@pytest.mark.parametrize("name", sorted(TIMM))
def test_timm_layouts(name: str) -> None:
    assert infer_encoder(shapes_of(LitWrapper(TIMM[name]()))) == name


def test_state_dict_prefix_is_stripped_even_when_deep() -> None:
    outer = nn.Module()
    outer.net = LitWrapper(ENCODERS["resnet34"]())
    assert infer_encoder({"state_dict." + k: v for k, v in shapes_of(outer).items()}) == "resnet34"


@pytest.mark.parametrize(
    "module",
    [nn.Linear(4, 2), ResNet([2, 2, 2, 3], bottleneck=False), TimmMobileNet(24, 320, 1280)],
    ids=["linear", "resnet-odd-depth", "unknown-stem"],
)
def test_unrecognised_state_dicts_give_none(module: nn.Module) -> None:
    assert infer_encoder(shapes_of(module)) is None


def test_empty_state_dict() -> None:
    assert infer_encoder({}) is None


def test_decoy_prefixes_cost_one_pass_and_hide_nothing() -> None:
    # Keys that each start a ResNet probe used to cost a pass over every key per prefix (70 s for
    # 20k); the real encoder among them is still found (up to MAX_CANDIDATES prefixes).
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(9_000):
        shapes[f"decoy{i}.layer1.0.conv1.weight"] = (1,)
        shapes[f"decoy{i}.conv1.weight"] = (1,)
        shapes[f"decoy{i}.features.0.0.weight"] = (16, 3)
    assert infer_encoder(shapes) is None
    shapes.update({f"model.{k}": v for k, v in shapes_of(ENCODERS["resnet50"]()).items()})
    assert infer_encoder(shapes) == "resnet50"


def test_odd_shapes_and_key_spellings_never_raise() -> None:
    assert (
        infer_encoder({"conv_stem.weight": (16, 3, 3, 3), "conv_head.weight": (1280,)})
        == "mobilenetv3_large"
    )
    assert infer_encoder({"conv_stem.weight": (), "conv_head.weight": ()}) is None
    assert (
        infer_encoder({"features.0.0.weight": (16, 3), "features.012.0.weight": (576,)})
        == "mobilenetv3_small"
    )
    assert (
        infer_encoder(
            {
                "layer1.0.conv1.weight": (1,),
                "conv1.weight": (1,),
                "layer1." + "9" * 5000 + ".x": (1,),
                7: (1,),
            }
        )
        is None
    )  # type: ignore[dict-item]
