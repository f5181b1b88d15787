"""Two-stream Ego-RNN: an RGB :class:`EgoRNN` (``.rgb``) and a :class:`FlowStream` (``.flow``).

- ``fusion="joint"`` (the paper): concat(flow feature before its dropout, RGB pooled c_T) -> dropout 0.5
  -> Linear(Cflow + Crgb, K) (flow first, as the reference ``twoStreamModel``).
- ``fusion="late"``: the 0.5 / 0.5 average of the two models' logits (no new parameters).

The sub-models are ordinary models, so stage checkpoints load with ``model.rgb.load_state_dict(...)``
and ``model.flow.load_state_dict(...)``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from egoattn.errors import ConfigError
from egoattn.models.egornn import EgoRNN, egornn
from egoattn.models.flow_stream import FlowStream, flow as build_flow


class TwoStream(nn.Module):
    input_keys = ("rgb", "flow")

    def __init__(self, rgb: EgoRNN, flow: FlowStream, num_classes: int,
                 fusion: Literal["joint", "late"] = "joint", dropout: float = 0.5) -> None:
        super().__init__()
        if fusion not in ("joint", "late"):
            raise ConfigError(f"fusion must be 'joint' or 'late', got {fusion!r}")
        self.rgb = rgb
        self.flow = flow
        self.fusion = fusion
        self.num_classes = num_classes
        if fusion == "joint":
            in_features = flow.backbone.out_channels + rgb.convlstm.hidden
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
        else:
            self.classifier = None

    @torch.no_grad()
    def classifier_from_streams(self) -> None:
        """Joint classifier = the late fusion of the streams' own: weight [W_flow, W_rgb] / 2, bias
        (b_flow + b_rgb) / 2, so (in eval mode) its logits equal the mean of the two streams' logits and
        joint training starts from the late-fusion accuracy instead of chance."""
        if self.classifier is None:
            raise ConfigError("classifier_from_streams: a late-fusion model has no joint classifier")
        joint, rgb, flow = self.classifier[-1], self.rgb.classifier[-1], self.flow.classifier[-1]
        joint.weight.copy_(0.5 * torch.cat([flow.weight, rgb.weight], dim=1))
        joint.bias.copy_(0.5 * (flow.bias + rgb.bias))

    def encode_frames(self, rgb: Tensor) -> dict[str, Tensor]:
        return self.rgb.encode_frames(rgb)

    def forward(self, rgb: Tensor | None = None, flow: Tensor | None = None,
                frame_features: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        if flow is None:
            raise ValueError("the two-stream model needs flow=")
        if (rgb is None) == (frame_features is None):
            raise ValueError("pass exactly one of rgb= or frame_features=")
        if frame_features is None:
            frame_features = self.rgb.encode_frames(rgb)
        if self.fusion == "late":
            rgb_out = self.rgb(frame_features=frame_features)
            flow_out = self.flow(flow)
            out = {k: v for k, v in rgb_out.items() if k in ("attention", "cam_class", "ms_logits")}
            out["rgb_logits"], out["flow_logits"] = rgb_out["logits"], flow_out["logits"]
            out["logits"] = 0.5 * (rgb_out["logits"] + flow_out["logits"])
            return out
        out = self.rgb.forward_features(frame_features)
        features = torch.cat([self.flow.forward_features(flow), out.pop("features")], dim=1)
        out["features"] = features
        out["logits"] = self.classifier(features)
        return out


def twostream(num_classes: int, fusion: Literal["joint", "late"] = "joint", dropout: float = 0.5,
              rgb_options: dict[str, Any] | None = None, flow_options: dict[str, Any] | None = None) -> TwoStream:
    """Two-stream model; ``rgb_options`` go to :func:`egornn`, ``flow_options`` to the flow builder."""
    rgb = egornn(num_classes, **(rgb_options or {}))
    flow_model = build_flow(num_classes, **(flow_options or {}))
    return TwoStream(rgb, flow_model, num_classes, fusion=fusion, dropout=dropout)
