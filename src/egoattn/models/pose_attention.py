"""Pose-driven attention (Das et al.; seed 002): a pose embedding decides where and when to look.

All three models share :class:`PoseEncoder`, a 3-layer LSTM over the normalised keypoint sequence (the
papers pretrain it on the action labels - model ``pose_lstm`` - then load it with ``pose_weights=`` and
freeze it with ``freeze_pose=True``). Inputs are the loader's keys: ``rgb`` (B, T, 3, H, W) and
``keypoints`` (B, T, J, D + 1) (x, y in crop pixels, confidence; 0 or NaN = missing).

- :class:`SeparableSTAttention` (ICCV 2019): over 3D-CNN features g (B, C, t, h, w) of torchvision's video
  ResNets (r3d_18, mc3_18, r2plus1d_18) or S3D - or, as a CPU option, of a per-frame 2D backbone stacked over
  time (:class:`FrameFeatureVolume`, t = T; offline only EfficientNet-Lite0 has pretrained weights) - a
  spatial gate alpha = sigmoid(W2 tanh(W1 h)) in R^{h*w} (not normalised, shared by the t steps) and temporal
  weights beta = softmax(V2 tanh(V1 h)) in R^t; g_s = alpha * g and g_t = beta * g, each global-average-pooled
  over (t, h, w), concatenated (2C) -> dropout 0.5 -> Linear(2C, K). Regulariser, returned as ``reg_loss``
  (already weighted, add it to the loss): alpha_reg * sum_j (1 - alpha_j)^2 + beta_reg * sum_t beta_t^2,
  averaged over the batch (weights 1e-5). The first term keeps the gate from closing everywhere, the second
  keeps the temporal softmax from collapsing on one step (the form of Song et al.'s STA-LSTM regularisers that
  Das et al. build on).
  Outputs per input frame for display and scoring (``egoattn explain``): ``attention`` (B, T, h, w) = alpha
  normalised over locations (the same map at every frame, as alpha is shared by the t steps) and
  ``temporal_weights`` (B, T) = beta of the feature step covering each frame, shared among that step's frames
  (sums to 1 over T); ``step_weights`` (B, t) is beta itself.
- :class:`PartAttention` (WACV 2019): per frame, a 2D backbone's feature map; features of boxes around
  joint groups ("parts": hands, body) by ``torchvision.ops.roi_align``, average-pooled and averaged over
  time -> F_p; alpha = softmax_p(W tanh(W' h)); F = sum_p alpha_p F_p -> dropout 0.5 -> Linear(C, K).
  Its spatial map ``attention`` (B, T, h, w) on the feature grid spreads each part's weight uniformly over
  its box (:func:`part_attention_map`), so the pointing game of ``egoattn explain`` can score it.
- :class:`TemporalGranularityAttention` (WACV 2020): segment features at granularities G in (2, 3, 4)
  (equal segments of the T frames); per granularity a softmax over its segments from the pose embedding
  of each segment (the shared encoder run on that segment's keypoints), then a softmax over granularities
  from the whole sequence's embedding; F = sum_G b_G sum_i a_{G,i} S_{G,i} -> dropout -> Linear(C, K).
  Segment features: mean of per-frame pooled features (2D backbone) or the video backbone run on each
  segment's frames (3D backbone, as the paper's I3D per segment).

Video backbone weights: ``"none"`` (default), ``"kinetics"`` (torchvision's Kinetics-400 weights from the
hub: needs internet the first time; offline it is a clear error) or a state-dict file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import torch
import torchvision
from torch import Tensor, nn
from torchvision.ops import roi_align

from egoattn.data.keypoints import LAYOUTS, keypoint_mask, normalize_keypoints
from egoattn.errors import BadInputError, ConfigError, EgoattnError
from egoattn.models.backbones import Backbone, _torch_load, build_backbone, list_backbones
from egoattn.models.egornn import check_frames, split_time

KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)
VIDEO_BACKBONES = {  # name -> torchvision weights enum, feature channels
    "r3d_18": ("R3D_18_Weights", 512),
    "mc3_18": ("MC3_18_Weights", 512),
    "r2plus1d_18": ("R2Plus1D_18_Weights", 512),
    "s3d": ("S3D_Weights", 1024),
}


# ------------------------------------------------------------------------------------------ pose encoder


class PoseEncoder(nn.Module):
    """3-layer LSTM over keypoints -> last hidden state ``h``; ``classifier`` for pretraining on labels.

    Input per step: the normalised coordinates of the J joints (missing joints set to exactly 0) AND the
    J-entry presence mask (1 present, 0 missing), concatenated: J * (D + 1) features. Missing joints are
    masked, never read as a joint at the origin: their coordinates do not reach the network at all and
    the mask tells it they are absent. Normalisation: :func:`egoattn.data.keypoints.normalize_keypoints`.
    """

    def __init__(self, num_joints: int, dims: int = 2, hidden: int = 512, layers: int = 3,
                 num_classes: int | None = None, layout: str | None = None, center: str = "mean",
                 scale: str = "box", reference: str = "first") -> None:
        super().__init__()
        self.num_joints, self.dims, self.hidden = num_joints, dims, hidden
        self.norm = dict(layout=layout, center=center, scale=scale, reference=reference)
        normalize_keypoints(torch.zeros(1, num_joints, dims + 1), **self.norm)  # fail early on bad options
        self.lstm = nn.LSTM(num_joints * (dims + 1), hidden, num_layers=layers, batch_first=True)
        self.classifier = nn.Linear(hidden, num_classes) if num_classes else None
        self.frozen = False

    input_keys = ("keypoints",)

    def features(self, keypoints: Tensor) -> Tensor:
        """(B, T, J, D + 1) -> the LSTM input (B, T, J * (D + 1))."""
        if keypoints.ndim != 4 or keypoints.shape[2:] != (self.num_joints, self.dims + 1):
            raise ValueError(f"keypoints must be (B, T, {self.num_joints}, {self.dims + 1}), "
                             f"got {tuple(keypoints.shape)}")
        coords, mask = normalize_keypoints(keypoints, **self.norm)
        dtype = self.lstm.weight_ih_l0.dtype
        return torch.cat([coords.flatten(2), mask.flatten(2)], dim=-1).to(dtype)

    def encode(self, keypoints: Tensor) -> tuple[Tensor, Tensor]:
        """-> (h (B, hidden) last layer's last state, outputs (B, T, hidden))."""
        outputs, (h, _) = self.lstm(self.features(keypoints))
        return h[-1], outputs

    def forward(self, keypoints: Tensor) -> dict[str, Tensor]:
        h, outputs = self.encode(keypoints)
        out = {"h": h, "outputs": outputs}
        if self.classifier is not None:
            out["logits"] = self.classifier(h)
        return out

    def freeze(self) -> "PoseEncoder":
        """No gradient and eval mode from now on (``train()`` keeps it in eval): a fixed pose embedding."""
        self.requires_grad_(False)
        self.frozen = True
        return self.eval()

    def train(self, mode: bool = True) -> "PoseEncoder":
        return super().train(mode and not self.frozen)


def load_pose_encoder(encoder: PoseEncoder, path: str | Path) -> None:
    """Load a pretrained encoder: a state dict of ``pose_lstm`` (or a Lightning checkpoint of it, or of a
    pose model holding ``pose_encoder.*``). The classifier is loaded when its shape matches."""
    sd = _torch_load(Path(path))
    sd = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}
    if any(k.startswith("pose_encoder.") for k in sd):
        sd = {k[len("pose_encoder."):]: v for k, v in sd.items() if k.startswith("pose_encoder.")}
    own = encoder.state_dict()
    lstm = {k: v for k, v in sd.items() if k.startswith("lstm.")}
    missing = [k for k in own if k.startswith("lstm.") and k not in lstm]
    wrong = [k for k, v in lstm.items() if k not in own or own[k].shape != v.shape]
    if missing or wrong:
        raise BadInputError(path, f"not a pose encoder with {encoder.num_joints} joints x {encoder.dims + 1} "
                                  f"inputs and hidden {encoder.hidden} (missing {missing[:3]}, mismatched {wrong[:3]})")
    extra = {k: v for k, v in sd.items() if k.startswith("classifier.") and k in own and own[k].shape == v.shape}
    encoder.load_state_dict({**lstm, **extra}, strict=False)


def _pose_encoder(num_joints: int | None, keypoint_dims: int, hidden: int, layers: int, num_classes: int,
                  layout: str | None, center: str, scale: str, reference: str, weights: str | Path | None,
                  freeze: bool) -> PoseEncoder:
    if num_joints is None:
        if layout is None:
            raise ConfigError("give num_joints= or a keypoint layout")
        num_joints = LAYOUTS[layout]["num_joints"]
    try:
        encoder = PoseEncoder(num_joints, keypoint_dims, hidden, layers, num_classes, layout, center, scale,
                              reference)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if weights is not None:
        load_pose_encoder(encoder, weights)
    if freeze:
        encoder.freeze()
    return encoder


def attention_mlp(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """W2 tanh(W1 h): the scoring network of every pose-driven attention here."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.Tanh(), nn.Linear(hidden, out_features))


# ------------------------------------------------------------------------------------------ video backbone


class VideoBackbone(nn.Module):
    """torchvision video network up to its last convolutional block: (B, 3, T, H, W) -> (B, C, t, h, w)."""

    def __init__(self, name: str = "r3d_18", weights: str | Path | None = "none") -> None:
        super().__init__()
        if name not in VIDEO_BACKBONES:
            raise ConfigError(f"unknown video backbone {name!r}; choose one of {', '.join(VIDEO_BACKBONES)}")
        self.name = name
        self.in_channels = 3
        self.out_channels = VIDEO_BACKBONES[name][1]
        self.mean, self.std = KINETICS_MEAN, KINETICS_STD  # run.py normalises rgb with these
        net = getattr(torchvision.models.video, name)(weights=None)
        if weights not in (None, "none"):
            net.load_state_dict(_video_state_dict(name, weights))
        if name == "s3d":
            self.features = net.features
        else:
            self.features = nn.Sequential(net.stem, net.layer1, net.layer2, net.layer3, net.layer4)

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def feature_shape(self, num_frames: int, size: int | tuple[int, int]) -> tuple[int, int, int]:
        """(t, h, w) of the features for a clip of this many frames and size (shape-only, on 'meta')."""
        h, w = (size, size) if isinstance(size, int) else size
        with torch.device("meta"):
            probe = VideoBackbone(self.name)
            out = probe(torch.empty(1, 3, num_frames, h, w))
        return tuple(out.shape[2:])  # type: ignore[return-value]


class FrameFeatureVolume(nn.Module):
    """A per-frame 2D backbone seen as a video network: (B, 3, T, H, W) -> f_bn stacked (B, C, T, h, w).

    Why: offline only the 2D EfficientNet-Lite0 has pretrained weights, and a random 3D CNN does not learn
    in a CPU budget; its frozen per-frame features give the separable attention a (T, h, w) volume to gate.
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.frames = backbone
        self.in_channels = 3
        self.out_channels = backbone.out_channels

    def forward(self, x: Tensor) -> Tensor:
        b, t = x.shape[0], x.shape[2]
        f = self.frames(x.transpose(1, 2).flatten(0, 1))["f_bn"]
        return f.view(b, t, *f.shape[1:]).transpose(1, 2)

    def feature_shape(self, num_frames: int, size: int | tuple[int, int]) -> tuple[int, int, int]:
        """(T, h, w) for a clip of this many frames and size (one zero frame through the net, in eval mode)."""
        h, w = (size, size) if isinstance(size, int) else size
        was_training = self.training
        self.eval()  # a probe must not move BatchNorm statistics
        with torch.no_grad():
            out = self.frames(torch.zeros(1, 3, h, w))["f_bn"]
        self.train(was_training)
        return (num_frames, int(out.shape[2]), int(out.shape[3]))


def _video_state_dict(name: str, weights: str | Path) -> dict[str, Tensor]:
    if weights == "kinetics":
        enum = getattr(torchvision.models.video, VIDEO_BACKBONES[name][0])
        try:
            return enum.KINETICS400_V1.get_state_dict(progress=False)
        except Exception as e:  # network, hub and cache errors all end here
            raise EgoattnError(f"could not download the Kinetics-400 weights of {name} ({type(e).__name__}: {e}); "
                               "without internet use weights='none' or the path of a local state-dict file") from e
    return _torch_load(Path(weights))


def _is_video_backbone(name: str) -> bool:
    if name in VIDEO_BACKBONES:
        return True
    if name in list_backbones():
        return False
    raise ConfigError(f"unknown backbone {name!r}; video backbones: {', '.join(VIDEO_BACKBONES)}; "
                      f"per-frame backbones: {', '.join(list_backbones())}")


def _check_pair(rgb: Tensor, keypoints: Tensor) -> None:
    check_frames(rgb, "rgb", 3)
    if keypoints.ndim != 4 or keypoints.shape[0] != rgb.shape[0]:
        raise ValueError(f"keypoints must be (B, T, J, D + 1) with the rgb batch size, got {tuple(keypoints.shape)}")


def _pose_outputs(encoder: PoseEncoder, keypoints: Tensor) -> dict[str, Tensor]:
    out = encoder(keypoints)
    return {"pose_logits": out["logits"]} if "logits" in out else {}


# ------------------------------------------------------------------------------------------ ICCV 2019


def frame_steps(num_frames: int, num_steps: int) -> Tensor:
    """(T,) index of the feature step covering each of T input frames: floor(f * t / T) (equal spans)."""
    return torch.arange(num_frames) * num_steps // num_frames


class SeparableSTAttention(nn.Module):
    """Separable spatio-temporal attention on 3D-CNN features, driven by the pose embedding."""

    input_keys = ("rgb", "keypoints")

    def __init__(self, backbone: VideoBackbone | FrameFeatureVolume, pose_encoder: PoseEncoder, num_classes: int,
                 grid: tuple[int, int, int], attention_hidden: int = 256, dropout: float = 0.5,
                 alpha_reg: float = 1e-5, beta_reg: float = 1e-5) -> None:
        super().__init__()
        self.backbone = backbone
        self.pose_encoder = pose_encoder
        self.grid = tuple(grid)
        t, h, w = self.grid
        self.spatial = attention_mlp(pose_encoder.hidden, attention_hidden, h * w)  # W1, W2
        self.temporal = attention_mlp(pose_encoder.hidden, attention_hidden, t)  # V1, V2
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * backbone.out_channels, num_classes))
        self.alpha_reg, self.beta_reg = alpha_reg, beta_reg
        self.num_classes = num_classes

    def gates(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Pose embedding (B, P) -> alpha (B, h, w) in (0, 1), beta (B, t) summing to 1."""
        t, hh, ww = self.grid
        alpha = torch.sigmoid(self.spatial(h)).view(-1, hh, ww)
        beta = self.temporal(h).softmax(dim=1)
        return alpha, beta

    def forward(self, rgb: Tensor, keypoints: Tensor) -> dict[str, Tensor]:
        _check_pair(rgb, keypoints)
        g = self.backbone(rgb.transpose(1, 2))  # (B, C, t, h, w)
        if tuple(g.shape[2:]) != self.grid:
            raise ValueError(f"video features are {tuple(g.shape[2:])} (t, h, w) but the attention was built for "
                             f"{self.grid}: build the model with this clip's num_frames and input_size")
        pose = self.pose_encoder(keypoints)
        alpha, beta = self.gates(pose["h"])
        g_s = (g * alpha[:, None, None]).mean(dim=(2, 3, 4))
        g_t = (g * beta[:, None, :, None, None]).mean(dim=(2, 3, 4))
        logits = self.classifier(torch.cat([g_s, g_t], dim=1))
        reg = (self.alpha_reg * (1 - alpha).pow(2).flatten(1).sum(1) + self.beta_reg * beta.pow(2).sum(1)).mean()
        steps, frames = self.grid[0], rgb.shape[1]
        step = frame_steps(frames, steps).to(beta.device)  # the feature step covering each input frame
        out = {
            "logits": logits,
            "spatial_gate": alpha.unsqueeze(1).expand(-1, steps, -1, -1),
            "step_weights": beta,
            # per input frame, for display and scoring: beta shared among the frames of its step (sums to 1)
            "temporal_weights": beta[:, step] / torch.bincount(step, minlength=steps)[step],
            # alpha normalised over locations, for display only (the model uses the unnormalised gate)
            "attention": (alpha / alpha.sum(dim=(1, 2), keepdim=True)).unsqueeze(1).expand(-1, frames, -1, -1),
            "reg_loss": reg,
        }
        if "logits" in pose:
            out["pose_logits"] = pose["logits"]
        return out


# ------------------------------------------------------------------------------------------ WACV 2019


def part_boxes(keypoints: Tensor, parts: Sequence[Sequence[int]], frame_size: tuple[int, int],
               margin: float = 0.1) -> Tensor:
    """(B, T, J, 3) keypoints -> (B, T, P, 4) boxes x0, y0, x1, y1 in pixels, clamped to the frame.

    A part's box is the bounding box of its present joints widened by ``margin`` x the frame's short side
    on every side (so a single joint, e.g. a wrist, gets a square of 2 x margin x short side). A part with
    no present joint in a frame gets the whole frame.
    """
    height, width = frame_size
    pad = margin * min(height, width)
    mask = keypoint_mask(keypoints)
    xy = keypoints[..., :2]
    boxes = []
    big = torch.finfo(xy.dtype).max
    for joints in parts:
        m, p = mask[..., list(joints)], xy[..., list(joints), :]
        lo = torch.where(m.unsqueeze(-1), p, torch.full_like(p, big)).amin(dim=-2) - pad
        hi = torch.where(m.unsqueeze(-1), p, torch.full_like(p, -big)).amax(dim=-2) + pad
        box = torch.cat([lo, hi], dim=-1)
        whole = box.new_tensor([0.0, 0.0, width - 1.0, height - 1.0]).expand_as(box)
        box = torch.where(m.any(dim=-1, keepdim=True), box, whole)
        boxes.append(box)
    box = torch.stack(boxes, dim=2)
    limit = box.new_tensor([width - 1.0, height - 1.0, width - 1.0, height - 1.0])
    return torch.minimum(box.clamp(min=0), limit)


def part_attention_map(boxes: Tensor, weights: Tensor, frame_size: tuple[int, int],
                       grid: tuple[int, int]) -> Tensor:
    """Boxes (B, T, P, 4) and part weights (B, P) -> (B, T, h, w): each part's weight spread uniformly over
    its box, as the share of the box in each cell of an h x w grid over the frame. Sums to 1 per frame.

    A box x0..x1 (pixel indices, as :func:`part_boxes` gives them) covers the pixels [x0, x1 + 1), so even a
    box clamped to one pixel column keeps its weight.
    """
    height, width = frame_size

    def share(lo: Tensor, hi: Tensor, size: int, cells: int) -> Tensor:
        edges = torch.linspace(0, size, cells + 1, device=lo.device, dtype=lo.dtype)
        inside = (torch.minimum(hi[..., None], edges[1:]) - torch.maximum(lo[..., None], edges[:-1])).clamp(min=0)
        return inside / (hi - lo)[..., None]  # (B, T, P, cells), sums to 1 when the box is inside the frame

    sx = share(boxes[..., 0], boxes[..., 2] + 1, width, grid[1])
    sy = share(boxes[..., 1], boxes[..., 3] + 1, height, grid[0])
    per_part = sy[..., :, None] * sx[..., None, :]  # (B, T, P, h, w)
    return (weights[:, None, :, None, None].to(per_part.dtype) * per_part).sum(dim=2)


class PartAttention(nn.Module):
    """Pose-driven attention over body-part features (hands, body) of a per-frame 2D backbone."""

    input_keys = ("rgb", "keypoints")

    def __init__(self, backbone: Backbone, pose_encoder: PoseEncoder, num_classes: int,
                 parts: Mapping[str, Sequence[int]], roi_size: int = 3, margin: float = 0.1,
                 attention_hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        bad = [n for n, joints in parts.items() if not joints or max(joints) >= pose_encoder.num_joints]
        if not parts or bad:
            raise ConfigError(f"parts must name joint indices < {pose_encoder.num_joints}; bad parts: {bad}")
        self.backbone = backbone
        self.pose_encoder = pose_encoder
        self.part_names = list(parts)
        self.parts = [tuple(int(j) for j in parts[n]) for n in self.part_names]
        self.roi_size, self.margin = roi_size, margin
        self.attention = attention_mlp(pose_encoder.hidden, attention_hidden, len(self.parts))  # W', W
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.out_channels, num_classes))
        self.num_classes = num_classes

    def part_features(self, rgb: Tensor, boxes: Tensor) -> Tensor:
        """Frames (B, T, 3, H, W), boxes (B, T, P, 4) -> per-part features averaged over time (B, P, C)."""
        return self.pool_parts(self.backbone(rgb.flatten(0, 1))["f_bn"], boxes, rgb.shape[-1])

    def pool_parts(self, f: Tensor, boxes: Tensor, frame_width: int) -> Tensor:
        """Feature maps (B*T, C, h, w) of frames ``frame_width`` wide -> part features (B, P, C)."""
        b, t, p = boxes.shape[:3]
        scale = f.shape[-1] / frame_width
        index = torch.arange(b * t, device=f.device, dtype=f.dtype).repeat_interleave(p)
        rois = torch.cat([index[:, None], boxes.reshape(-1, 4).to(f.dtype)], dim=1)
        crops = roi_align(f, rois, output_size=self.roi_size, spatial_scale=scale, sampling_ratio=2, aligned=True)
        return crops.mean(dim=(2, 3)).view(b, t, p, -1).mean(dim=1)

    def forward(self, rgb: Tensor, keypoints: Tensor) -> dict[str, Tensor]:
        _check_pair(rgb, keypoints)
        frame_size = tuple(rgb.shape[-2:])
        boxes = part_boxes(keypoints.float(), self.parts, frame_size, self.margin)
        f = self.backbone(rgb.flatten(0, 1))["f_bn"]  # (B*T, C, h, w)
        features = self.pool_parts(f, boxes, rgb.shape[-1])
        pose = self.pose_encoder(keypoints)
        weights = self.attention(pose["h"]).softmax(dim=1)  # (B, P)
        fused = (weights.unsqueeze(-1) * features).sum(dim=1)
        out = {"logits": self.classifier(fused), "part_weights": weights, "part_boxes": boxes,
               "attention": part_attention_map(boxes, weights, frame_size, tuple(f.shape[-2:]))}
        if "logits" in pose:
            out["pose_logits"] = pose["logits"]
        return out


# ------------------------------------------------------------------------------------------ WACV 2020


def segment_bounds(num_steps: int, segments: int) -> list[tuple[int, int]]:
    """Equal segments [floor(i T / G), floor((i + 1) T / G)) of T steps; every one non-empty (T >= G)."""
    if num_steps < segments:
        raise ValueError(f"{num_steps} frames cannot make {segments} temporal segments")
    edges = [(i * num_steps) // segments for i in range(segments + 1)]
    return list(zip(edges[:-1], edges[1:]))


class TemporalGranularityAttention(nn.Module):
    """Two-level pose-driven temporal attention: segments within a granularity, then granularities."""

    input_keys = ("rgb", "keypoints")

    def __init__(self, backbone: Backbone | VideoBackbone, pose_encoder: PoseEncoder, num_classes: int,
                 granularities: Sequence[int] = (2, 3, 4), attention_hidden: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        if not granularities or min(granularities) < 1 or len(set(granularities)) != len(granularities):
            raise ConfigError(f"granularities must be distinct positive integers, got {list(granularities)}")
        self.backbone = backbone
        self.video = isinstance(backbone, VideoBackbone)
        self.pose_encoder = pose_encoder
        self.granularities = [int(g) for g in granularities]
        self.segment_attention = nn.ModuleDict(
            {str(g): attention_mlp(pose_encoder.hidden, attention_hidden, 1) for g in self.granularities})
        self.granularity_attention = attention_mlp(pose_encoder.hidden, attention_hidden, len(self.granularities))
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.out_channels, num_classes))
        self.num_classes = num_classes

    def segment_features(self, rgb: Tensor, bounds: list[tuple[int, int]],
                         frame_features: Tensor | None) -> Tensor:
        """(B, G, C): per-frame features averaged within a segment, or the video net on each segment."""
        if self.video:
            return torch.stack([self.backbone(rgb[:, a:b].transpose(1, 2)).mean(dim=(2, 3, 4))
                                for a, b in bounds], dim=1)
        return torch.stack([frame_features[:, a:b].mean(dim=1) for a, b in bounds], dim=1)

    def forward(self, rgb: Tensor, keypoints: Tensor) -> dict[str, Tensor]:
        _check_pair(rgb, keypoints)
        steps = rgb.shape[1]
        if keypoints.shape[1] != steps:
            raise ValueError(f"keypoints have {keypoints.shape[1]} steps, rgb {steps}")
        frame_features = None
        if not self.video:
            f = self.backbone(rgb.flatten(0, 1))["f_bn"].mean(dim=(2, 3))
            frame_features = split_time(f, rgb.shape[0])
        out: dict[str, Tensor] = {}
        per_granularity = []
        for g in self.granularities:
            bounds = segment_bounds(steps, g)
            seg = self.segment_features(rgb, bounds, frame_features)  # (B, G, C)
            h_seg = torch.stack([self.pose_encoder.encode(keypoints[:, a:b])[0] for a, b in bounds], dim=1)
            a_g = self.segment_attention[str(g)](h_seg)[..., 0].softmax(dim=1)  # (B, G)
            out[f"segment_weights_{g}"] = a_g
            per_granularity.append((a_g.unsqueeze(-1) * seg).sum(dim=1))
        pose = self.pose_encoder(keypoints)
        b = self.granularity_attention(pose["h"]).softmax(dim=1)  # (B, number of granularities)
        fused = (b.unsqueeze(-1) * torch.stack(per_granularity, dim=1)).sum(dim=1)
        out["logits"] = self.classifier(fused)
        out["granularity_weights"] = b
        if "logits" in pose:
            out["pose_logits"] = pose["logits"]
        return out


# ------------------------------------------------------------------------------------------ builders

PoseNorm = Literal["mean", "joint"]


def pose_lstm(num_classes: int, num_joints: int | None = None, keypoint_dims: int = 2, layout: str | None = "hand21",
              hidden: int = 512, layers: int = 3, center: PoseNorm = "mean",
              scale: Literal["box", "torso", "none"] = "box", reference: Literal["first", "frame"] = "first"
              ) -> PoseEncoder:
    """The pose encoder alone with its classifier: pretraining on the action labels (``keypoints=``)."""
    return _pose_encoder(num_joints, keypoint_dims, hidden, layers, num_classes, layout, center, scale, reference,
                         None, False)


def pose_separable(num_classes: int, backbone: str = "r3d_18", weights: str | Path | None = "none",
                   num_frames: int = 16, input_size: int = 112, num_joints: int | None = None,
                   keypoint_dims: int = 2, layout: str | None = "hand21", pose_hidden: int = 512,
                   pose_layers: int = 3, pose_weights: str | Path | None = None, freeze_pose: bool = False,
                   center: PoseNorm = "mean", scale: Literal["box", "torso", "none"] = "box",
                   reference: Literal["first", "frame"] = "first", attention_hidden: int = 256,
                   dropout: float = 0.5, alpha_reg: float = 1e-5, beta_reg: float = 1e-5) -> SeparableSTAttention:
    """Separable spatio-temporal attention (ICCV 2019); the grid (t, h, w) follows num_frames/input_size.

    ``backbone`` a video network (the papers' 3D CNN) or a per-frame one (stacked over time, t = num_frames).
    """
    net: VideoBackbone | FrameFeatureVolume = (
        VideoBackbone(backbone, weights) if _is_video_backbone(backbone)
        else FrameFeatureVolume(build_backbone(backbone, weights)))
    encoder = _pose_encoder(num_joints, keypoint_dims, pose_hidden, pose_layers, num_classes, layout, center, scale,
                            reference, pose_weights, freeze_pose)
    return SeparableSTAttention(net, encoder, num_classes, net.feature_shape(num_frames, input_size),
                                attention_hidden, dropout, alpha_reg, beta_reg)


def pose_parts(num_classes: int, backbone: str = "resnet18", weights: str | Path | None = "none",
               num_joints: int | None = None, keypoint_dims: int = 2, layout: str | None = "hand21",
               parts: dict[str, list[int]] | None = None, roi_size: int = 3, margin: float = 0.1,
               pose_hidden: int = 512, pose_layers: int = 3, pose_weights: str | Path | None = None,
               freeze_pose: bool = False, center: PoseNorm = "mean", scale: Literal["box", "torso", "none"] = "box",
               reference: Literal["first", "frame"] = "first", attention_hidden: int = 256,
               dropout: float = 0.5) -> PartAttention:
    """Body-part attention (WACV 2019); ``parts`` {name: joint indices} defaults to the layout's parts."""
    if parts is None:
        if layout is None:
            raise ConfigError("pose_parts needs parts= or a keypoint layout with default parts")
        parts = {k: list(v) for k, v in LAYOUTS[layout]["parts"].items()}
    encoder = _pose_encoder(num_joints, keypoint_dims, pose_hidden, pose_layers, num_classes, layout, center, scale,
                            reference, pose_weights, freeze_pose)
    return PartAttention(build_backbone(backbone, weights), encoder, num_classes, parts, roi_size, margin,
                         attention_hidden, dropout)


def pose_granularity(num_classes: int, backbone: str = "resnet18", weights: str | Path | None = "none",
                     granularities: tuple[int, ...] = (2, 3, 4), num_joints: int | None = None,
                     keypoint_dims: int = 2, layout: str | None = "hand21", pose_hidden: int = 512,
                     pose_layers: int = 3, pose_weights: str | Path | None = None, freeze_pose: bool = False,
                     center: PoseNorm = "mean", scale: Literal["box", "torso", "none"] = "box",
                     reference: Literal["first", "frame"] = "first", attention_hidden: int = 256,
                     dropout: float = 0.5) -> TemporalGranularityAttention:
    """Temporal granularity attention (WACV 2020); ``backbone`` a per-frame or a video backbone name."""
    net: Any = VideoBackbone(backbone, weights) if _is_video_backbone(backbone) else build_backbone(backbone, weights)
    encoder = _pose_encoder(num_joints, keypoint_dims, pose_hidden, pose_layers, num_classes, layout, center, scale,
                            reference, pose_weights, freeze_pose)
    return TemporalGranularityAttention(net, encoder, num_classes, granularities, attention_hidden, dropout)
