"""Temporal stream (Ego-RNN flow network): a CNN on stacks of L flow frames (2L channels).

Input ``flow`` (B, S, 2L, H, W): S stacks (1 in training, e.g. 5 evenly spaced at evaluation). Each stack
-> backbone -> global average pool (``forward_features``, before dropout) -> dropout 0.5 -> Linear; the
logits of the S stacks are averaged (the reference's test-time averaging). The first convolution gets
the cross-modality init when the backbone weights are RGB ImageNet weights.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from egoattn.models.backbones import Backbone, build_backbone
from egoattn.models.egornn import check_frames, split_time


class FlowStream(nn.Module):
    input_keys = ("flow",)

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.out_channels, num_classes))
        self.num_classes = num_classes

    def stack_features(self, flow: Tensor) -> Tensor:
        """(B, S, 2L, H, W) -> pooled per-stack features (B, S, Cf)."""
        check_frames(flow, "flow", self.backbone.in_channels)
        f_bn = self.backbone(flow.flatten(0, 1))["f_bn"]
        return split_time(f_bn.mean(dim=(2, 3)), flow.shape[0])

    def forward_features(self, flow: Tensor) -> Tensor:
        """Pooled feature before dropout, averaged over stacks: (B, Cf)."""
        return self.stack_features(flow).mean(dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(features)

    def forward(self, flow: Tensor) -> dict[str, Tensor]:
        per_stack = self.stack_features(flow)
        return {"logits": self.forward_head(per_stack).mean(dim=1), "features": per_stack.mean(dim=1)}


def flow(num_classes: int, backbone: str = "resnet34", weights: str | Path | None = "none",
         in_channels: int = 10, dropout: float = 0.5) -> FlowStream:
    """Flow stream; ``in_channels`` = 2 x the stack length (5 flow frames -> 10)."""
    return FlowStream(build_backbone(backbone, weights, in_channels=in_channels), num_classes, dropout)
