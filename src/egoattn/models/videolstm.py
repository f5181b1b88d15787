"""VideoLSTM (Li et al., CVIU 2018; seed 003): convolutional soft attention inside a ConvLSTM.

Per frame, the backbone's last feature map X_t (VGG-16 pool5, 512 x 7 x 7 at 224 in the paper; any
egoattn backbone here) is weighted by a spatial attention that depends on the recurrent state:

    Z_t = u^T tanh(W_xa * X_t + W_ha * H_{t-1} + b)      1x1 convolutions, one score per location
    A_t = softmax over the h x w locations of Z_t           ("attention" (B, T, h, w), sums to 1)
    H_t, C_t = ConvLSTM(X_t * A_t, (H_{t-1}, C_{t-1}))      3x3 gates (egoattn.models.convlstm)

Initial state H_0 = tanh(conv3x3_h(mean_t X_t)), C_0 = tanh(conv3x3_c(mean_t X_t)) (two convolutions).
Head per step: average-pooled H_t -> Linear(hidden, 1024) -> tanh -> dropout 0.7 -> Linear(1024, K)
gives ``step_logits`` (B, T, K); the video score ``logits`` is their **sum** over the T steps
(``aggregate="sum"``, the reference) or their mean (``aggregate="mean"``: T times smaller logits, same
argmax; use it to keep the cross-entropy scale independent of T).

Motion-based attention (``videolstm_motion``): a flow backbone (``flow_channels=2``: the loader's
``flow_pair``, the x/y flow at each sampled frame; ``10``: ``flow`` stacks of 5 flow frames, one stack per
step, so S must equal T) -> a ConvLSTM with 1x1 kernels (zero initial state) whose hidden state M drives the
RGB attention in place of H_{t-1}: Z_t = u^T tanh(W_xa * X_t + W_ma * M + b). ``motion_state="current"``
(default) uses M_t, the state after the flow of step t, so the attention of frame t looks where frame t
moves; ``"previous"`` uses M_{t-1} (M_0 = 0), the literal replacement of H_{t-1}. The RGB ConvLSTM, its
initial state and the head are as above.

Options beyond the paper: ``input_proj`` (a 1x1 convolution reducing the backbone channels, both
streams) for affordable CPU runs; ``backbone`` any egoattn backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from egoattn.errors import ConfigError
from egoattn.models.backbones import Backbone, build_backbone
from egoattn.models.convlstm import ConvLSTMCell
from egoattn.models.egornn import check_frames, split_time

Aggregate = Literal["sum", "mean"]


class ConvAttention(nn.Module):
    """Z = u^T tanh(W_xa X + W_ha S + b) per location, softmax over locations -> (N, h, w)."""

    def __init__(self, in_channels: int, state_channels: int, channels: int = 512) -> None:
        super().__init__()
        self.w_x = nn.Conv2d(in_channels, channels, 1, bias=True)  # carries b
        self.w_h = nn.Conv2d(state_channels, channels, 1, bias=False)
        self.u = nn.Conv2d(channels, 1, 1, bias=False)

    def scores(self, x: Tensor, state: Tensor) -> Tensor:
        """Unnormalised Z (N, h, w)."""
        return self.u(torch.tanh(self.w_x(x) + self.w_h(state)))[:, 0]

    def forward(self, x: Tensor, state: Tensor) -> Tensor:
        z = self.scores(x, state)
        return z.flatten(1).softmax(dim=1).view_as(z)


class ConvALSTM(nn.Module):
    """Attention + ConvLSTM over a feature sequence, with VideoLSTM's learned initial state."""

    def __init__(self, in_channels: int, hidden: int = 512, attention_channels: int = 512,
                 state_channels: int | None = None, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.attention = ConvAttention(in_channels, state_channels or hidden, attention_channels)
        self.cell = ConvLSTMCell(in_channels, hidden, kernel_size)
        self.init_h = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.init_c = nn.Conv2d(in_channels, hidden, 3, padding=1)

    def initial_state(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, T, C, h, w) -> H_0, C_0 = tanh(conv3x3(mean over t of x)), each (B, hidden, h, w)."""
        mean = x.mean(dim=1)
        return torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))

    def forward(self, x: Tensor, drive: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (B, T, C, h, w) -> (hidden states H_1..H_T (B, T, hidden, h, w), attention (B, T, h, w)).

        ``drive`` (B, T, S, h, w): the state the attention of step t uses instead of H_{t-1} (motion).
        """
        state = self.initial_state(x)
        hs, attention = [], []
        for t in range(x.shape[1]):
            a = self.attention(x[:, t], state[0] if drive is None else drive[:, t])
            state = self.cell(x[:, t] * a.unsqueeze(1), state)
            hs.append(state[0])
            attention.append(a)
        return torch.stack(hs, 1), torch.stack(attention, 1)


class StepHead(nn.Module):
    """Per-step classifier on pooled H_t and the video score (sum or mean over steps)."""

    def __init__(self, hidden: int, num_classes: int, channels: int = 1024, dropout: float = 0.7,
                 aggregate: Aggregate = "sum") -> None:
        super().__init__()
        if aggregate not in ("sum", "mean"):
            raise ConfigError(f"aggregate must be 'sum' or 'mean', got {aggregate!r}")
        self.aggregate = aggregate
        self.fc = nn.Linear(hidden, channels)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, hs: Tensor) -> tuple[Tensor, Tensor]:
        """hs (B, T, hidden, h, w) -> (video logits (B, K), step logits (B, T, K))."""
        step = self.classifier(self.dropout(torch.tanh(self.fc(hs.mean(dim=(3, 4))))))
        return (step.sum(dim=1) if self.aggregate == "sum" else step.mean(dim=1)), step


def frame_feature_maps(backbone: Backbone, rgb: Tensor) -> dict[str, Tensor]:
    """``f_bn`` (B, T, C, h, w) of every frame of ``rgb`` (B, T, 3, H, W): both VideoLSTMs' cacheable part."""
    check_frames(rgb, "rgb", backbone.in_channels)
    return {"f_bn": split_time(backbone(rgb.flatten(0, 1))["f_bn"], rgb.shape[0])}


def _proj(channels: int, out: int | None) -> nn.Module:
    return nn.Conv2d(channels, out, kernel_size=1) if out else nn.Identity()


class VideoLSTM(nn.Module):
    """``forward(rgb=(B, T, 3, H, W))`` or ``forward(frame_features=encode_frames(rgb))``."""

    input_keys = ("rgb",)

    def __init__(self, backbone: Backbone, num_classes: int, hidden: int = 512, attention_channels: int = 512,
                 head_channels: int = 1024, dropout: float = 0.7, aggregate: Aggregate = "sum",
                 input_proj: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.input_proj = _proj(backbone.out_channels, input_proj)
        self.alstm = ConvALSTM(input_proj or backbone.out_channels, hidden, attention_channels)
        self.head = StepHead(hidden, num_classes, head_channels, dropout, aggregate)
        self.num_classes = num_classes

    def encode_frames(self, rgb: Tensor) -> dict[str, Tensor]:
        """The frozen part: the backbone's feature map of every frame, ``f_bn`` (B, T, C, h, w)."""
        return frame_feature_maps(self.backbone, rgb)

    def forward(self, rgb: Tensor | None = None, frame_features: dict[str, Tensor] | None = None
                ) -> dict[str, Tensor]:
        if (rgb is None) == (frame_features is None):
            raise ValueError("pass exactly one of rgb= or frame_features=")
        if frame_features is None:
            frame_features = self.encode_frames(rgb)
        f = frame_features["f_bn"]
        x = split_time(self.input_proj(f.flatten(0, 1)), f.shape[0])
        hs, attention = self.alstm(x)
        logits, step_logits = self.head(hs)
        return {"logits": logits, "step_logits": step_logits, "attention": attention}


class MotionVideoLSTM(nn.Module):
    """VideoLSTM whose attention is driven by a 1x1 ConvLSTM over flow features."""

    def __init__(self, backbone: Backbone, flow_backbone: Backbone, num_classes: int, hidden: int = 512,
                 motion_hidden: int = 512, attention_channels: int = 512, head_channels: int = 1024,
                 dropout: float = 0.7, aggregate: Aggregate = "sum",
                 motion_state: Literal["current", "previous"] = "current", input_proj: int | None = None) -> None:
        super().__init__()
        if motion_state not in ("current", "previous"):
            raise ConfigError(f"motion_state must be 'current' or 'previous', got {motion_state!r}")
        if flow_backbone.in_channels not in (2, 10):
            raise ConfigError(f"the flow backbone takes 2 (flow_pair) or 10 (flow) channels, "
                              f"not {flow_backbone.in_channels}")
        self.backbone = backbone
        self.flow_backbone = flow_backbone
        self.flow_key = "flow_pair" if flow_backbone.in_channels == 2 else "flow"
        self.motion_state = motion_state
        self.input_proj = _proj(backbone.out_channels, input_proj)
        self.flow_proj = _proj(flow_backbone.out_channels, input_proj)
        self.motion = ConvLSTMCell(input_proj or flow_backbone.out_channels, motion_hidden, kernel_size=1)
        self.alstm = ConvALSTM(input_proj or backbone.out_channels, hidden, attention_channels,
                               state_channels=motion_hidden)
        self.head = StepHead(hidden, num_classes, head_channels, dropout, aggregate)
        self.num_classes = num_classes

    @property
    def input_keys(self) -> tuple[str, ...]:
        return ("rgb", self.flow_key)

    def motion_states(self, flow: Tensor) -> Tensor:
        """Flow (B, T, Cf, H, W) -> the attention's driving states (B, T, motion_hidden, h, w)."""
        check_frames(flow, self.flow_key, self.flow_backbone.in_channels)
        f = self.flow_proj(self.flow_backbone(flow.flatten(0, 1))["f_bn"])
        f = split_time(f, flow.shape[0])
        state, ms = None, []
        for t in range(f.shape[1]):
            state = self.motion(f[:, t], state)
            ms.append(state[0])
        m = torch.stack(ms, 1)
        if self.motion_state == "previous":
            m = torch.cat([torch.zeros_like(m[:, :1]), m[:, :-1]], dim=1)
        return m

    def encode_frames(self, rgb: Tensor) -> dict[str, Tensor]:
        """The frozen RGB part (cacheable): the backbone's feature map of every frame, ``f_bn`` (B, T, C, h, w).
        The flow backbone is frozen too but runs at every step on the clip's (stored) flow."""
        return frame_feature_maps(self.backbone, rgb)

    def forward(self, rgb: Tensor | None = None, flow_pair: Tensor | None = None, flow: Tensor | None = None,
                frame_features: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        motion_input = flow_pair if self.flow_key == "flow_pair" else flow
        if motion_input is None:
            raise ValueError(f"this model needs {self.flow_key}= (flow backbone with "
                             f"{self.flow_backbone.in_channels} channels)")
        if (rgb is None) == (frame_features is None):
            raise ValueError("pass exactly one of rgb= or frame_features=")
        if frame_features is None:
            frame_features = self.encode_frames(rgb)
        f = frame_features["f_bn"]
        if motion_input.shape[:2] != f.shape[:2]:
            raise ValueError(f"{self.flow_key} {tuple(motion_input.shape)} needs one entry per rgb frame "
                             f"(B, T = {tuple(f.shape[:2])})")
        x = split_time(self.input_proj(f.flatten(0, 1)), f.shape[0])
        drive = self.motion_states(motion_input)
        if drive.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"flow features {tuple(drive.shape[-2:])} and rgb features {tuple(x.shape[-2:])} "
                             "differ in size; use the same frame size for both")
        hs, attention = self.alstm(x, drive)
        logits, step_logits = self.head(hs)
        return {"logits": logits, "step_logits": step_logits, "attention": attention}


def videolstm(num_classes: int, backbone: str = "vgg16", weights: str | Path | None = "none", hidden: int = 512,
              attention_channels: int = 512, head_channels: int = 1024, dropout: float = 0.7,
              aggregate: Aggregate = "sum", input_proj: int | None = None) -> VideoLSTM:
    """VideoLSTM (Conv-ALSTM) on per-frame features; the paper: vgg16 pool5 with ImageNet weights."""
    return VideoLSTM(build_backbone(backbone, weights), num_classes, hidden=hidden,
                     attention_channels=attention_channels, head_channels=head_channels, dropout=dropout,
                     aggregate=aggregate, input_proj=input_proj)


def videolstm_motion(num_classes: int, backbone: str = "vgg16", weights: str | Path | None = "none",
                     flow_backbone: str | None = None, flow_weights: str | Path | None = "none",
                     flow_channels: int = 2, hidden: int = 512, motion_hidden: int = 512,
                     attention_channels: int = 512, head_channels: int = 1024, dropout: float = 0.7,
                     aggregate: Aggregate = "sum", motion_state: Literal["current", "previous"] = "current",
                     input_proj: int | None = None) -> MotionVideoLSTM:
    """VideoLSTM with motion-based attention; ``flow_backbone`` defaults to ``backbone``."""
    if flow_channels not in (2, 10):
        raise ConfigError(f"flow_channels must be 2 (flow_pair) or 10 (5-frame flow stacks), got {flow_channels}")
    rgb_net = build_backbone(backbone, weights)
    flow_net = build_backbone(flow_backbone or backbone, flow_weights, in_channels=flow_channels)
    return MotionVideoLSTM(rgb_net, flow_net, num_classes, hidden=hidden, motion_hidden=motion_hidden,
                           attention_channels=attention_channels, head_channels=head_channels, dropout=dropout,
                           aggregate=aggregate, motion_state=motion_state, input_proj=input_proj)
