"""STANet (Wen et al., VIP Cup 2019; seed 000): spatial attention on an Ego-RNN-style RGB network,
second-order (attentional) temporal pooling over the concatenated RGB and flow features.

Three trainable pieces, trained in three stages (recipes ``stanet_stage{1,2,3}_*``):

1. :class:`STANetRGB` (``stanet_rgb``): Ego-RNN (backbone -> spatial attention -> ConvLSTM -> pooled
   c_T -> dropout -> Linear). The spatial attention is selectable: ``attention="cam"`` is Ego-RNN's
   class activation map (the paper's "details of this spatial attention module can be found at [4]"),
   ``"channel"`` the paper's eq. 1 channel-weighted sum (:class:`ChannelWeightedAttention`),
   ``"none"`` the plain ConvLSTM. No second-order pooling in this stage.
2. The flow network: the ordinary :class:`FlowStream` (model ``flow``) on one 5-frame stack.
3. :class:`STANet` (``stanet``): both networks with their classifiers unused, per-time-step features
   concatenated, and a new :class:`AttentionalPooling` classifier over the T time steps
   (score_k = sum_p (X a_{k,p})^T (X b_p) / T, X in R^{T x F}).

Per-step features (documented choice, ``rgb_steps``):

- RGB, ``"convlstm"`` (default): the ConvLSTM cell state c_t of every step, average-pooled over the
  h x w locations (B, T, hidden). Stage 1's classifier reads exactly this vector at t = T, so the
  features the stage-3 classifier sees are the trained representation of stage 1 (and each c_t
  already integrates the attended frames up to t, so the temporal pooling weighs partial summaries).
- RGB, ``"attended"``: the attended backbone features of every frame, sum_p a_t(p) f_pre,t(p) (the
  attention-weighted average of the map the attention is applied to; B, T, C_backbone). They bypass
  the ConvLSTM, i.e. the temporal attention alone models time.
- Flow: the pooled backbone feature of each stack before the flow dropout (what the joint
  two-stream model uses), (B, S, C_flow). Stack s is assigned to the RGB steps t with
  floor(t * S / T) = s (time-aligned by relative position). With the paper's single stack per clip
  (random at train, centred at test) every step gets the same flow vector, i.e. the flow feature is
  broadcast over time; with S evenly spaced stacks at evaluation each step gets its nearest stack.

The concatenation is [flow, rgb] per step (flow first, as :class:`TwoStream`). Checkpoints of stage 1
(``stanet_rgb``) load into ``model.rgb`` and of stage 2 (``flow``) into ``model.flow``
(``init.from_run: {rgb: RUN1, flow: RUN2}``); their classifiers stay as modules (so the state dicts
load) but take no part in ``STANet.forward``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from egoattn.errors import ConfigError
from egoattn.models.attention import apply_attention, cam_attention
from egoattn.models.backbones import Backbone, build_backbone
from egoattn.models.egornn import EgoRNN, split_time
from egoattn.models.flow_stream import FlowStream, flow as build_flow
from egoattn.models.pooling import AttentionalPooling
from egoattn.models.stanet_attention import ChannelWeightedAttention

ATTENTIONS = ("cam", "channel", "none")
RGB_STEPS = ("convlstm", "attended")


class STANetRGB(EgoRNN):
    """Ego-RNN with a selectable spatial attention; ``forward_features`` also returns per-step features.

    Outputs of ``forward_features``: ``features`` (B, hidden) pooled c_T (what the classifier reads),
    ``step_features`` (B, T, hidden) pooled c_t, ``attended_features`` (B, T, C) pooled attended
    frames, and with attention ``attention`` (B, T, h, w) summing to 1 over locations.
    """

    def __init__(self, backbone: Backbone, num_classes: int, attention: Literal["cam", "channel", "none"] = "cam",
                 correlation: Literal["diagonal", "row_sum"] = "diagonal", temperature: float = 1.0,
                 hidden: int = 512, dropout: float = 0.7, input_proj: int | None = None) -> None:
        if attention not in ATTENTIONS:
            raise ConfigError(f"attention must be one of {ATTENTIONS}, got {attention!r}")
        super().__init__(backbone, num_classes, attention=attention != "none", hidden=hidden, dropout=dropout,
                         input_proj=input_proj)
        self.attention_kind = attention
        self.channel_attention = (ChannelWeightedAttention(correlation, temperature)
                                  if attention == "channel" else None)

    def forward_features(self, frame_features: dict[str, Tensor]) -> dict[str, Tensor]:
        f_bn = frame_features["f_bn"]
        batch = f_bn.shape[0]
        f_bn = f_bn.flatten(0, 1)
        out: dict[str, Tensor] = {}
        if self.attention_kind == "none":
            x = f_bn
            pooled = f_bn.mean(dim=(2, 3))
        else:
            f_pre = frame_features["f_pre"].flatten(0, 1)
            if self.attention_kind == "cam":
                # CAM from the *current* ImageNet fc, as Ego-RNN (a cached f_bn follows the fc).
                attention, _, class_idx = cam_attention(f_bn, self.backbone.fc)
                out["cam_class"] = split_time(class_idx, batch)
                x = apply_attention(f_pre, attention)
            else:
                assert self.channel_attention is not None
                result = self.channel_attention(f_bn, apply_to=f_pre)
                attention, x = result["attention"], result["features"]
            out["attention"] = split_time(attention, batch)
            pooled = x.sum(dim=(2, 3))  # = sum_p a(p) f_pre(p): attention sums to 1
        out["attended_features"] = split_time(pooled, batch)
        if self.input_proj is not None:
            x = self.input_proj(x)
        _, cells, (_, c_last) = self.convlstm(split_time(x, batch))
        out["step_features"] = cells.mean(dim=(3, 4))
        out["features"] = c_last.mean(dim=(2, 3))
        return out


def align_stacks(stacks: Tensor, steps: int) -> Tensor:
    """(B, S, C) per-stack features -> (B, steps, C): step t takes stack floor(t * S / steps)."""
    if stacks.ndim != 3:
        raise ValueError(f"expected (B, S, C) stack features, got shape {tuple(stacks.shape)}")
    index = torch.div(torch.arange(steps, device=stacks.device) * stacks.shape[1], steps, rounding_mode="floor")
    return stacks.index_select(1, index)


class STANet(nn.Module):
    """STANet stage 3: [flow, RGB] features per time step -> second-order attentional pooling -> logits.

    ``forward(rgb=(B, T, 3, H, W) | frame_features=..., flow=(B, S, 2L, H, W))`` returns ``logits``,
    ``step_features`` (B, T, F) (the pooled sequence X), ``features`` (B, F) (its mean over time),
    ``temporal_saliency`` (B, P, T) (the bottom-up maps X b_p) and the RGB network's ``attention``.
    """

    input_keys = ("rgb", "flow")

    def __init__(self, rgb: STANetRGB, flow: FlowStream, num_classes: int, rank: int = 1,
                 rgb_steps: Literal["convlstm", "attended"] = "convlstm", dropout: float = 0.0) -> None:
        super().__init__()
        if rgb_steps not in RGB_STEPS:
            raise ConfigError(f"rgb_steps must be one of {RGB_STEPS}, got {rgb_steps!r}")
        self.rgb = rgb
        self.flow = flow
        self.rgb_steps = rgb_steps
        self.num_classes = num_classes
        rgb_dim = rgb.convlstm.hidden if rgb_steps == "convlstm" else rgb.backbone.out_channels
        self.in_features = flow.backbone.out_channels + rgb_dim
        self.dropout = nn.Dropout(dropout)
        self.classifier = AttentionalPooling(self.in_features, num_classes, rank=rank)

    def encode_frames(self, rgb: Tensor) -> dict[str, Tensor]:
        return self.rgb.encode_frames(rgb)

    def forward(self, rgb: Tensor | None = None, flow: Tensor | None = None,
                frame_features: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        if flow is None:
            raise ValueError("STANet needs flow=")
        if (rgb is None) == (frame_features is None):
            raise ValueError("pass exactly one of rgb= or frame_features=")
        if frame_features is None:
            frame_features = self.rgb.encode_frames(rgb)
        rgb_out = self.rgb.forward_features(frame_features)
        rgb_seq = rgb_out["step_features"] if self.rgb_steps == "convlstm" else rgb_out["attended_features"]
        flow_seq = align_stacks(self.flow.stack_features(flow), rgb_seq.shape[1])
        x = torch.cat([flow_seq, rgb_seq], dim=2)
        out = {k: v for k, v in rgb_out.items() if k in ("attention", "cam_class")}
        out["step_features"] = x
        out["features"] = x.mean(dim=1)
        x = self.dropout(x)
        out["temporal_saliency"] = self.classifier.saliency(x)
        out["logits"] = self.classifier(x)
        return out


def stanet_rgb(num_classes: int, backbone: str = "resnet34", weights: str | Path | None = "none",
               attention: Literal["cam", "channel", "none"] = "cam",
               correlation: Literal["diagonal", "row_sum"] = "diagonal", temperature: float = 1.0,
               hidden: int = 512, dropout: float = 0.7, input_proj: int | None = None) -> STANetRGB:
    """STANet stage-1 RGB network: Ego-RNN with ``attention`` = "cam" | "channel" | "none".

    ``correlation`` and ``temperature`` configure the channel-weighted attention (see
    :mod:`egoattn.models.stanet_attention`); ``input_proj`` as in :func:`egornn` (CPU runs).
    """
    return STANetRGB(build_backbone(backbone, weights), num_classes, attention=attention, correlation=correlation,
                     temperature=temperature, hidden=hidden, dropout=dropout, input_proj=input_proj)


def stanet(num_classes: int, rank: int = 1, rgb_steps: Literal["convlstm", "attended"] = "convlstm",
           dropout: float = 0.0, rgb_options: dict[str, Any] | None = None,
           flow_options: dict[str, Any] | None = None) -> STANet:
    """STANet stage 3: ``rgb_options`` go to :func:`stanet_rgb`, ``flow_options`` to the flow builder.

    ``rank`` is P of the low-rank second-order pooling (1 in the paper's eq. 2). ``dropout`` on the
    per-step features before the pooling defaults to 0 (the paper names none).
    """
    rgb = stanet_rgb(num_classes, **(rgb_options or {}))
    flow_model = build_flow(num_classes, **(flow_options or {}))
    return STANet(rgb, flow_model, num_classes, rank=rank, rgb_steps=rgb_steps, dropout=dropout)
