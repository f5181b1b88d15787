"""Two-in-one stream (Zhao & Snoek 2019, as used in seed 004): flow modulates the RGB backbone's conv1.

Per frame, the x/y flow at the same index (2 channels, full frame resolution) goes through the motion
condition (1x1 2->64, LeakyReLU 0.1, 1x1 64->64, LeakyReLU, 1x1 64->64, LeakyReLU, 3x3 64->32) and the
motion modulation: scale = conv3x3 stride 2 (32 -> C1) of LeakyReLU(conv1x1 32->32 of the condition),
shift = the same structure with its own weights. Then conv1(RGB) * (scale + 1) + shift replaces conv1's
output, before bn1; the rest is the Ego-RNN path (CAM attention, ConvLSTM, classifier on c_T).

The stride-2 3x3 convolution (padding 1) gives ceil(H / 2) x ceil(W / 2), the size of ResNet's conv1
(7x7, stride 2, padding 3) and of EfficientNet-Lite0's stem (3x3 stride 2, 'same' padding) for every input
size, so ResNets and EfficientNet-Lite0 are supported (C1 = 64 or 32). VGG-16's first convolution has
stride 1, so it is rejected. With scale = shift = 0 the model is exactly the plain Ego-RNN, and so it starts
(the modulation's last convolutions are zero-initialised).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from egoattn.errors import ConfigError
from egoattn.models.backbones import Backbone, build_backbone
from egoattn.models.egornn import RecurrentAttentionModel, check_frames, split_time


def motion_condition(in_channels: int = 2) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 1), nn.LeakyReLU(0.1),
        nn.Conv2d(64, 64, 1), nn.LeakyReLU(0.1),
        nn.Conv2d(64, 64, 1), nn.LeakyReLU(0.1),
        nn.Conv2d(64, 32, 3, padding=1),
    )


class MotionModulation(nn.Module):
    """Scale and shift maps (N, C1, ceil(H/2), ceil(W/2)) from the motion condition (N, 32, H, W)."""

    def __init__(self, out_channels: int = 64, cond_channels: int = 32) -> None:
        super().__init__()
        self.scale_conv0 = nn.Conv2d(cond_channels, cond_channels, 1)
        self.scale_conv1 = nn.Conv2d(cond_channels, out_channels, 3, stride=2, padding=1)
        self.shift_conv0 = nn.Conv2d(cond_channels, cond_channels, 1)
        self.shift_conv1 = nn.Conv2d(cond_channels, out_channels, 3, stride=2, padding=1)
        # Zero scale and shift at the start: the modulation begins as the identity, so the model begins as
        # the Ego-RNN it is initialised from. With PyTorch's default init the random scale/shift corrupt
        # the frozen backbone's stem output: a two-in-one started from a 48.8 % Ego-RNN run (compact
        # synthetic preset) was at chance after 2 epochs, training loss above ln K.
        for conv in (self.scale_conv1, self.shift_conv1):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        scale = self.scale_conv1(F.leaky_relu(self.scale_conv0(cond), 0.1))
        shift = self.shift_conv1(F.leaky_relu(self.shift_conv0(cond), 0.1))
        return scale, shift


class TwoInOne(RecurrentAttentionModel):
    input_keys = ("rgb", "flow_pair")

    def __init__(self, backbone: Backbone, num_classes: int, flow_channels: int = 2, **options) -> None:
        if backbone.spec.family not in ("resnet", "efficientnet"):
            raise ConfigError(f"two_in_one needs a backbone whose first convolution has stride 2 (ResNets, "
                              f"efficientnet_lite0), not {backbone.name}")
        super().__init__(backbone, num_classes, **options)
        self.flow_channels = flow_channels
        self.motion_condition = motion_condition(flow_channels)
        self.motion_modulation = MotionModulation(backbone.stem_channels)

    def encode_frames_with_flow(self, rgb: Tensor, flow_pair: Tensor) -> dict[str, Tensor]:
        """Modulated backbone on all B*T frames -> f_bn, f_pre, logits, scale, shift as (B, T, ...)."""
        check_frames(rgb, "rgb", self.backbone.in_channels)
        check_frames(flow_pair, "flow_pair", self.flow_channels)
        if rgb.shape[:2] != flow_pair.shape[:2] or rgb.shape[-2:] != flow_pair.shape[-2:]:
            raise ValueError(f"rgb {tuple(rgb.shape)} and flow_pair {tuple(flow_pair.shape)} must share "
                             "B, T, H and W")
        y = self.backbone.stem(rgb.flatten(0, 1))
        scale, shift = self.motion_modulation(self.motion_condition(flow_pair.flatten(0, 1)))
        if scale.shape != y.shape:  # pragma: no cover - guarded by the backbone check above
            raise ValueError(f"modulation {tuple(scale.shape)} does not match conv1 output {tuple(y.shape)}")
        out = self.backbone.forward_from_stem(y * (scale + 1) + shift)
        out["scale"], out["shift"] = scale, shift
        return {k: split_time(v, rgb.shape[0]) for k, v in out.items()}

    def forward(self, rgb: Tensor, flow_pair: Tensor) -> dict[str, Tensor]:
        return self._finish(self.encode_frames_with_flow(rgb, flow_pair), None)


def two_in_one(num_classes: int, backbone: str = "resnet34", weights: str | Path | None = "none",
               attention: bool = True, hidden: int = 512, dropout: float = 0.7,
               ms_head: Literal["cls", "reg"] | None = None, ms_input: Literal["features", "attended"] = "features",
               ms_sigmoid: bool = False, input_proj: int | None = None, input_size: int = 224) -> TwoInOne:
    """Two-in-one stream on an Ego-RNN (seed 004); options as :func:`egornn` (no order head)."""
    return TwoInOne(build_backbone(backbone, weights), num_classes, attention=attention, hidden=hidden,
                    dropout=dropout, ms_head=ms_head, ms_input=ms_input, ms_sigmoid=ms_sigmoid,
                    input_proj=input_proj, input_size=input_size)
