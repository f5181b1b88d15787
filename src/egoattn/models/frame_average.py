"""Frame-average baseline: per-frame pooled backbone features, mean over time, dropout, Linear.

Blind to frame order by construction (a mean over time), which is the point of the baseline: whatever
Ego-RNN gains over it comes from attention and temporal modelling.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from egoattn.models.backbones import Backbone, build_backbone
from egoattn.models.egornn import check_frames, split_time


class FrameAverage(nn.Module):
    input_keys = ("rgb",)

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.out_channels, num_classes))
        self.num_classes = num_classes

    def encode_frames(self, rgb: Tensor) -> dict[str, Tensor]:
        """Backbone on all B*T frames -> ``pooled`` (B, T, Cf)."""
        check_frames(rgb, "rgb", self.backbone.in_channels)
        f_bn = self.backbone(rgb.flatten(0, 1))["f_bn"]
        return {"pooled": split_time(f_bn.mean(dim=(2, 3)), rgb.shape[0])}

    def forward_features(self, frame_features: dict[str, Tensor]) -> Tensor:
        return frame_features["pooled"].mean(dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(features)

    def forward(self, rgb: Tensor | None = None, frame_features: dict[str, Tensor] | None = None
                ) -> dict[str, Tensor]:
        if (rgb is None) == (frame_features is None):
            raise ValueError("pass exactly one of rgb= or frame_features=")
        features = self.forward_features(frame_features if frame_features is not None else self.encode_frames(rgb))
        return {"logits": self.forward_head(features), "features": features}


def frame_average(num_classes: int, backbone: str = "resnet34", weights: str | Path | None = "none",
                  dropout: float = 0.5) -> FrameAverage:
    return FrameAverage(build_backbone(backbone, weights), num_classes, dropout)
