"""Ego-RNN (Sudhakaran & Lanz 2018): per-frame CAM attention + ConvLSTM, classifier on the final cell state.

Per frame (all B*T frames in one batched backbone call): f_bn, f_pre and the ImageNet fc give the CAM
attention a (softmax over locations); x_t = f_pre * a feeds a ConvLSTM; the final *cell* state c_T is
average-pooled -> dropout 0.7 -> Linear(hidden, K). With ``attention=False`` ("ConvLSTM" in the papers)
x_t is the ordinary feature map f_bn.

Options beyond the paper:
- ``ms_head`` ("cls" | "reg"): SparNet motion-segmentation head on the per-frame features
  (``ms_input="features"``: f_bn, as the reference; ``"attended"``: f_pre * a, as seed 001) -> ``ms_logits``.
- ``order_head``: OPN order prediction on the pooled backbone features of ``order_rgb`` -> ``order_logits``.
- ``input_proj`` (int or None): a 1x1 convolution reducing the backbone channels before the ConvLSTM.
  Default None is the faithful model; a small value (e.g. 64) makes CPU runs affordable, especially with
  EfficientNet-Lite0 (1280 channels) or ResNet-50 (2048).
- ``train_last_stage``: the backbone's last stage trains (stage 2 fine-tunes layer4). ``encode_frames``
  then stops before it and returns ``trunk`` (the frozen part, cacheable); ``forward_features`` runs the
  last stage on it at every step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from torch import Tensor, nn

from egoattn.errors import ConfigError
from egoattn.models.attention import apply_attention, cam_attention
from egoattn.models.backbones import Backbone, build_backbone
from egoattn.models.convlstm import ConvLSTM
from egoattn.models.heads import MotionSegmentationHead, OrderPredictionHead


def split_time(x: Tensor, batch: int) -> Tensor:
    """(B*T, ...) -> (B, T, ...)."""
    return x.view(batch, x.shape[0] // batch, *x.shape[1:])


def check_frames(x: Tensor, key: str, channels: int) -> None:
    if x.ndim != 5 or x.shape[2] != channels:
        raise ValueError(f"{key} must be (B, T, {channels}, H, W), got {tuple(x.shape)}")


class RecurrentAttentionModel(nn.Module):
    """The trainable part shared by Ego-RNN and the two-in-one stream: attention, ConvLSTM, heads."""

    def __init__(self, backbone: Backbone, num_classes: int, attention: bool = True, hidden: int = 512,
                 dropout: float = 0.7, ms_head: Literal["cls", "reg"] | None = None,
                 ms_input: Literal["features", "attended"] = "features", ms_sigmoid: bool = False,
                 order_head: bool = False, input_proj: int | None = None, input_size: int = 224,
                 train_last_stage: bool = False) -> None:
        super().__init__()
        if ms_input not in ("features", "attended"):
            raise ConfigError(f"ms_input must be 'features' or 'attended', got {ms_input!r}")
        if ms_head not in (None, "cls", "reg"):
            raise ConfigError(f"ms_head must be None, 'cls' or 'reg', got {ms_head!r}")
        self.backbone = backbone
        self.use_attention = attention
        self.train_last_stage = train_last_stage
        self.ms_input = ms_input
        channels = backbone.out_channels
        self.input_proj = nn.Conv2d(channels, input_proj, kernel_size=1) if input_proj else None
        self.convlstm = ConvLSTM(input_proj or channels, hidden)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        hw = backbone.feature_size(input_size)
        self.ms_head = MotionSegmentationHead(channels, ms_head, hw, sigmoid=ms_sigmoid) if ms_head else None
        self.order_head = OrderPredictionHead(channels) if order_head else None
        self.num_classes = num_classes

    def forward_features(self, frame_features: dict[str, Tensor]) -> dict[str, Tensor]:
        """(B, T, ...) backbone outputs (or the ``trunk`` before its last stage) -> ``features`` (B, hidden)
        pooled c_T, ``attention``, ``ms_logits``."""
        if "trunk" in frame_features:
            trunk = frame_features["trunk"]
            frame_features = {k: split_time(v, trunk.shape[0]) for k, v in
                              self.backbone.forward_last_stage(trunk.flatten(0, 1)).items()}
        f_bn = frame_features["f_bn"]
        batch = f_bn.shape[0]
        f_bn = f_bn.flatten(0, 1)
        out: dict[str, Tensor] = {}
        if self.use_attention:
            # CAM from the *current* fc, so a cached f_bn still follows the fc as it trains.
            attention, _, class_idx = cam_attention(f_bn, self.backbone.fc)
            x = apply_attention(frame_features["f_pre"].flatten(0, 1), attention)
            out["attention"] = split_time(attention, batch)
            out["cam_class"] = split_time(class_idx, batch)
        else:
            x = f_bn
        if self.ms_head is not None:
            ms = self.ms_head(x if self.ms_input == "attended" else f_bn)
            out["ms_logits"] = split_time(ms, batch)
        if self.input_proj is not None:
            x = self.input_proj(x)
        _, _, (_, c_last) = self.convlstm(split_time(x, batch))
        out["features"] = c_last.mean(dim=(2, 3))
        return out

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(features)

    def order_logits(self, order_rgb: Tensor) -> Tensor:
        """(B, 4, 3, H, W) shuffled tuple -> (B, 12) permutation-class logits."""
        if self.order_head is None:
            raise ConfigError("this model was built without order_head=True")
        check_frames(order_rgb, "order_rgb", self.backbone.in_channels)
        f_bn = self.backbone(order_rgb.flatten(0, 1))["f_bn"]
        return self.order_head(split_time(f_bn.mean(dim=(2, 3)), order_rgb.shape[0]))

    def _finish(self, frame_features: dict[str, Tensor], order_rgb: Tensor | None) -> dict[str, Tensor]:
        out = self.forward_features(frame_features)
        out["logits"] = self.forward_head(out["features"])
        if order_rgb is not None and self.order_head is not None:
            out["order_logits"] = self.order_logits(order_rgb)
        return out


class EgoRNN(RecurrentAttentionModel):
    """Ego-RNN; ``forward(rgb=(B, T, 3, H, W))`` or ``forward(frame_features=encode_frames(rgb))``."""

    @property
    def input_keys(self) -> tuple[str, ...]:
        return ("rgb", "order_rgb") if self.order_head is not None else ("rgb",)

    def encode_frames(self, rgb: Tensor) -> dict[str, Tensor]:
        """The frozen part, on all B*T frames at once: the backbone -> f_bn, f_pre, logits as (B, T, ...);
        with ``train_last_stage``, the trunk before the last stage -> ``trunk`` (B, T, C, h, w)."""
        check_frames(rgb, "rgb", self.backbone.in_channels)
        if self.train_last_stage:
            return {"trunk": split_time(self.backbone.forward_trunk(rgb.flatten(0, 1)), rgb.shape[0])}
        out = self.backbone(rgb.flatten(0, 1))
        return {k: split_time(v, rgb.shape[0]) for k, v in out.items()}

    def forward(self, rgb: Tensor | None = None, frame_features: dict[str, Tensor] | None = None,
                order_rgb: Tensor | None = None) -> dict[str, Tensor]:
        if (rgb is None) == (frame_features is None):
            raise ValueError("pass exactly one of rgb= or frame_features=")
        if frame_features is None:
            frame_features = self.encode_frames(rgb)
        return self._finish(frame_features, order_rgb)


def egornn(num_classes: int, backbone: str = "resnet34", weights: str | Path | None = "none",
           attention: bool = True, hidden: int = 512, dropout: float = 0.7,
           ms_head: Literal["cls", "reg"] | None = None, ms_input: Literal["features", "attended"] = "features",
           ms_sigmoid: bool = False, order_head: bool = False, input_proj: int | None = None,
           input_size: int = 224, train_last_stage: bool = False) -> EgoRNN:
    """Ego-RNN ("ConvLSTM-attention"; ``attention=False`` is the "ConvLSTM" ablation).

    ``input_size`` is the frame size, needed only to size the motion-segmentation head's Linear.
    ``weights`` defaults to "none" (torchvision's convention); the paper uses "imagenet".
    """
    net = build_backbone(backbone, weights)
    return EgoRNN(net, num_classes, attention=attention, hidden=hidden, dropout=dropout, ms_head=ms_head,
                  ms_input=ms_input, ms_sigmoid=ms_sigmoid, order_head=order_head, input_proj=input_proj,
                  input_size=input_size, train_last_stage=train_last_stage)
