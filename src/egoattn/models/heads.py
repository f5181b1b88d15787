"""Self-supervised heads: motion segmentation (SparNet, seeds 001/004) and order prediction (OPN, seed 001)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egoattn.errors import ConfigError

MS_KINDS = ("cls", "reg")
MS_LOSSES = {"cls": ("ce",), "reg": ("mse", "l1", "smooth_l1", "soft_margin", "kl")}
ORDER_PAIRS: tuple[tuple[int, int], ...] = ((0, 1), (1, 2), (2, 3), (0, 2), (1, 3), (0, 3))
ORDER_CLASSES = 12  # 4! / 2: a permutation and its reverse share a class


class MotionSegmentationHead(nn.Module):
    """Conv2d(C, 100, 1) -> flatten -> Linear(100*h*w, 2*h*w) ("cls") or Linear(100*h*w, h*w) ("reg").

    Input: per-frame features (N, C, h, w). Output: "cls" -> (N, 2, h, w) logits of static (0) / moving
    (1) per location; "reg" -> (N, h, w) motion scores, squashed to [0, 1] when ``sigmoid=True``.
    The Linear has a fixed input size, so ``hw`` must be the feature map size (7 x 7 at 224 input).
    """

    def __init__(self, in_channels: int, kind: Literal["cls", "reg"] = "cls", hw: tuple[int, int] = (7, 7),
                 sigmoid: bool = False, mid_channels: int = 100) -> None:
        super().__init__()
        if kind not in MS_KINDS:
            raise ConfigError(f"motion-segmentation head kind must be one of {MS_KINDS}, got {kind!r}")
        self.kind = kind
        self.hw = (int(hw[0]), int(hw[1]))
        self.sigmoid = sigmoid
        n = self.hw[0] * self.hw[1]
        self.conv = nn.Conv2d(in_channels, mid_channels, kernel_size=1)
        self.fc = nn.Linear(mid_channels * n, (2 if kind == "cls" else 1) * n)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != self.hw:
            raise ValueError(f"motion-segmentation head built for {self.hw[0]}x{self.hw[1]} features, got "
                             f"{x.shape[-2]}x{x.shape[-1]} (set the model's input_size to the frame size)")
        y = self.fc(self.conv(x).flatten(1))
        if self.kind == "cls":
            return y.view(-1, 2, *self.hw)
        y = y.view(-1, *self.hw)
        return torch.sigmoid(y) if self.sigmoid else y


def resize_motion_maps(motion_maps: Tensor, hw: tuple[int, int]) -> Tensor:
    """(..., H, W) maps in [0, 1] -> (..., h, w) by area averaging (the share of moving pixels per cell)."""
    lead = motion_maps.shape[:-2]
    flat = motion_maps.reshape(-1, 1, *motion_maps.shape[-2:]).float()
    return F.adaptive_avg_pool2d(flat, hw).view(*lead, *hw)


def motion_segmentation_loss(pred: Tensor, motion_maps: Tensor, kind: Literal["cls", "reg"] = "cls",
                             loss: str | None = None, threshold: float = 0.5) -> Tensor:
    """Loss of the motion-segmentation head against motion maps.

    pred: "cls" (B, T, 2, h, w) logits or "reg" (B, T, h, w) (any leading dims matching the maps);
    motion_maps: (B, T, H, W) in [0, 1], resized to h x w by area averaging.

    - "cls" / "ce": per-location 2-way cross-entropy against ``map > threshold`` (a cell is "moving"
      when more than ``threshold`` of it moves; the references used tau in {0, 0.01, 0.2, 0.4, 0.5}).
    - "reg": "mse", "l1", "smooth_l1" compare pred with the graded map (use the head's sigmoid);
      "soft_margin" treats pred as a raw score against +-1 targets (``map > threshold``);
      "kl" is KL(P || Q) with P the map normalised over the h*w locations (uniform when the frame has
      no motion) and Q = softmax of pred over the locations (pred as raw location logits),
      summed over locations and averaged over frames.
    """
    if kind not in MS_KINDS:
        raise ConfigError(f"motion-segmentation kind must be one of {MS_KINDS}, got {kind!r}")
    loss = loss or MS_LOSSES[kind][0]
    if loss not in MS_LOSSES[kind]:
        raise ConfigError(f"motion-segmentation loss {loss!r} is not available for kind={kind!r}; "
                          f"choose one of {MS_LOSSES[kind]}")
    hw = tuple(pred.shape[-2:])
    target = resize_motion_maps(motion_maps.to(pred.dtype), hw)
    lead = pred.shape[:-3] if kind == "cls" else pred.shape[:-2]
    if target.shape[:-2] != lead:
        raise ValueError(f"motion maps {tuple(motion_maps.shape)} do not match predictions {tuple(pred.shape)}")
    if kind == "cls":
        labels = (target > threshold).long().flatten(0, -3)  # (N, h, w)
        return F.cross_entropy(pred.flatten(0, -4), labels)
    if loss == "mse":
        return F.mse_loss(pred, target)
    if loss == "l1":
        return F.l1_loss(pred, target)
    if loss == "smooth_l1":
        return F.smooth_l1_loss(pred, target)
    if loss == "soft_margin":
        return F.soft_margin_loss(pred, (target > threshold).to(pred.dtype) * 2 - 1)
    # kl
    p = target.flatten(-2)
    total = p.sum(-1, keepdim=True)
    p = torch.where(total > 0, p / total.clamp_min(1e-12), torch.full_like(p, 1.0 / p.shape[-1]))
    log_q = torch.log_softmax(pred.flatten(-2), dim=-1)
    kl = F.kl_div(log_q, p, reduction="none").sum(-1)
    return kl.mean()


class OrderPredictionHead(nn.Module):
    """OPN head: shared fc6 per frame, shared fc7 per ordered pair, concat, 12-way classifier.

    Input (B, 4, F) per-frame features of a shuffled 4-tuple; output (B, 12) permutation-class logits.
    Pairs are concatenated as [frame i, frame j] in the order ``ORDER_PAIRS``.
    """

    def __init__(self, in_features: int, fc6: int = 1024, fc7: int = 512, num_classes: int = ORDER_CLASSES,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.fc6 = nn.Sequential(nn.Linear(in_features, fc6), nn.ReLU(), nn.Dropout(dropout))
        self.fc7 = nn.Sequential(nn.Linear(2 * fc6, fc7), nn.ReLU())
        self.classifier = nn.Linear(len(ORDER_PAIRS) * fc7, num_classes)

    def pair_features(self, x: Tensor) -> Tensor:
        """(B, 4, F) -> (B, 6, fc7): fc7 of each ordered pair, in ``ORDER_PAIRS`` order."""
        if x.ndim != 3 or x.shape[1] != 4:
            raise ValueError(f"order head expects (B, 4, F) features of a 4-frame tuple, got {tuple(x.shape)}")
        h = self.fc6(x)
        pairs = torch.stack([torch.cat([h[:, i], h[:, j]], dim=1) for i, j in ORDER_PAIRS], dim=1)
        return self.fc7(pairs)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pair_features(x).flatten(1))
