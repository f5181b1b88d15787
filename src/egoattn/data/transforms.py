"""Clip transforms: random parameters drawn once per clip, applied to every frame and modality.

A clip is a dict of numpy arrays keyed by modality (the loader's keys, see ARCHITECTURE.md):

    rgb, order_rgb         (..., H, W, 3) uint8       images, bilinear
    flow, warp, flow_pair  (..., H, W, 2) uint8       x/y flow images, bilinear; x inverted on flip
    motion                 (..., H, W) uint8          motion maps, bilinear
    mask                   (..., H, W) uint8          masks, nearest neighbour
    keypoints              (T, J, 3) float32          x, y in pixels of the current frame, confidence
    frame_size             (H, W)                     the current frame size (kept up to date; lets
                                                      keypoints be transformed without images)

Other keys (label, clip_id, frame_indices, order_label) pass through. Every transform is called as
`t(clip, rng)`; `rng=None` gives the deterministic test-time behaviour (no flip, centre crop).

Cost: every spatial step works on uint8, and the loader's tensors stay uint8 (`ToTensorClip`);
`Normalize` is the one float conversion, applied to the batch on its device (the same float32
operations as numpy, so the same values). A float32 clip is 4x the bytes to send from a worker
process: on 2 cores that transfer alone capped a loader at about 300-400 clips of 10x3x160x160.

Pixel convention: integer coordinates are pixel centres, as in cv2.resize, so a point maps through
a crop box (x0, y0, w, h) resized to (W', H') as x' = (x - x0 + 0.5) * W' / w - 0.5.
Flow images are resized as images (flow values are not rescaled), as the references do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch

Clip = dict[str, Any]

IMAGE_KEYS = ("rgb", "order_rgb")
FLOW_KEYS = ("flow", "warp", "flow_pair")
GRAY_KEYS = ("motion", "mask")
SPATIAL_KEYS = IMAGE_KEYS + FLOW_KEYS + GRAY_KEYS
# Masks: nearest neighbour with pixel-centre alignment (plain INTER_NEAREST shifts by up to a pixel).
_INTERPOLATION = {"mask": cv2.INTER_NEAREST_EXACT}  # everything else: cv2.INTER_LINEAR

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FLOW_MEAN = 0.449
FLOW_STD = 0.226


def frame_size(clip: Clip) -> tuple[int, int]:
    """(H, W) of the clip's frames, from its first image-like array or its `frame_size` entry."""
    for key in SPATIAL_KEYS:
        if key in clip:
            arr = clip[key]
            return (arr.shape[-2], arr.shape[-1]) if key in GRAY_KEYS else (arr.shape[-3], arr.shape[-2])
    if "frame_size" in clip:
        h, w = clip["frame_size"]
        return int(h), int(w)
    raise ValueError("clip has no image-like modality and no 'frame_size' to transform")


def _resize_frames(arr: np.ndarray, size_wh: tuple[int, int], interpolation: int, gray: bool) -> np.ndarray:
    """cv2.resize of every frame, each written straight into one output array (no per-frame copies)."""
    lead = arr.shape[:-2] if gray else arr.shape[:-3]
    frames = arr.reshape((-1,) + arr.shape[len(lead):])
    out = np.empty((frames.shape[0], size_wh[1], size_wh[0]) + frames.shape[3:], arr.dtype)
    for f, o in zip(frames, out):
        r = cv2.resize(f, size_wh, dst=o, interpolation=interpolation)
        if r is not o and not np.shares_memory(r, o):  # cv2 allocated instead (should not happen)
            o[...] = r.reshape(o.shape)
    return out.reshape(lead + out.shape[1:])


def crop_resize(clip: Clip, box: tuple[int, int, int, int], out_wh: tuple[int, int]) -> Clip:
    """Crop box (x0, y0, w, h) from every spatial modality and resize it to out_wh = (W', H')."""
    x0, y0, w, h = box
    height, width = frame_size(clip)
    if x0 < 0 or y0 < 0 or x0 + w > width or y0 + h > height or w < 1 or h < 1:
        raise ValueError(f"crop box {box} does not fit in a {width}x{height} frame")
    out = dict(clip)
    for key in SPATIAL_KEYS:
        if key not in clip:
            continue
        gray = key in GRAY_KEYS
        arr = clip[key][..., y0:y0 + h, x0:x0 + w] if gray else clip[key][..., y0:y0 + h, x0:x0 + w, :]
        if (w, h) != tuple(out_wh):
            arr = _resize_frames(arr, tuple(out_wh), _INTERPOLATION.get(key, cv2.INTER_LINEAR), gray)
        out[key] = np.ascontiguousarray(arr)
    if "keypoints" in clip:
        kp = np.array(clip["keypoints"], dtype=np.float32, copy=True)
        kp[..., 0] = (kp[..., 0] - x0 + 0.5) * (out_wh[0] / w) - 0.5
        kp[..., 1] = (kp[..., 1] - y0 + 0.5) * (out_wh[1] / h) - 0.5
        out["keypoints"] = kp
    out["frame_size"] = (int(out_wh[1]), int(out_wh[0]))
    return out


def _flip_frames(arr: np.ndarray, gray: bool) -> np.ndarray:
    """A mirrored, C-contiguous copy of (..., H, W[, C]) frames (cv2.flip per frame: a numpy reversed-axis
    copy with a small channel axis is about 25x slower)."""
    lead = arr.shape[:-2] if gray else arr.shape[:-3]
    frames = arr.reshape((-1,) + arr.shape[len(lead):])
    out = np.empty(frames.shape, arr.dtype)
    for f, o in zip(frames, out):
        r = cv2.flip(f, 1, dst=o)
        if r is not o and not np.shares_memory(r, o):  # cv2 allocated instead (should not happen)
            o[...] = r.reshape(o.shape)
    return out.reshape(arr.shape)


def hflip(clip: Clip) -> Clip:
    """Mirror every spatial modality; x-flow images become 255 - v, keypoint x becomes W - 1 - x."""
    _, width = frame_size(clip)
    out = dict(clip)
    for key in SPATIAL_KEYS:
        if key not in clip:
            continue
        arr = clip[key]
        if arr.dtype != np.uint8:
            raise ValueError(f"flip before Normalize: {key} is {arr.dtype}, expected uint8")
        arr = _flip_frames(arr, key in GRAY_KEYS)
        if key in FLOW_KEYS:
            arr[..., 0] = 255 - arr[..., 0]
        out[key] = arr
    if "keypoints" in clip:
        kp = np.array(clip["keypoints"], dtype=np.float32, copy=True)
        kp[..., 0] = (width - 1) - kp[..., 0]
        out["keypoints"] = kp
    return out


@dataclass(frozen=True)
class Resize:
    """Resize so the short side is `short_side` pixels (aspect ratio kept)."""

    short_side: int = 256

    def __call__(self, clip: Clip, rng: np.random.Generator | None = None) -> Clip:
        h, w = frame_size(clip)
        scale = self.short_side / min(h, w)
        out_wh = (max(1, round(w * scale)), max(1, round(h * scale)))
        if out_wh == (w, h):
            return dict(clip, frame_size=(h, w))
        return crop_resize(clip, (0, 0, w, h), out_wh)


@dataclass(frozen=True)
class CenterCrop:
    """A `size` x `size` crop at the centre (no resizing); the frame must be at least that large."""

    size: int = 224

    def __call__(self, clip: Clip, rng: np.random.Generator | None = None) -> Clip:
        h, w = frame_size(clip)
        if h < self.size or w < self.size:
            raise ValueError(f"centre crop {self.size} is larger than the {w}x{h} frame (resize first)")
        x0, y0 = (w - self.size) // 2, (h - self.size) // 2
        return crop_resize(clip, (x0, y0, self.size, self.size), (self.size, self.size))


@dataclass(frozen=True)
class ResizeFlow:
    """Resize the flow modalities (after the crop, so they show the same box) to `size` x `size`: a
    two-stream model whose flow stream was trained at another input size than its RGB stream."""

    size: int = 224

    def __call__(self, clip: Clip, rng: np.random.Generator | None = None) -> Clip:
        out = dict(clip)
        for key in FLOW_KEYS:
            if key in clip and clip[key].shape[-3:-1] != (self.size, self.size):
                out[key] = _resize_frames(clip[key], (self.size, self.size), cv2.INTER_LINEAR, gray=False)
        return out


CORNER_POSITIONS = ("c", "tl", "tr", "bl", "br")


@dataclass(frozen=True)
class MultiScaleCornerCrop:
    """Ego-RNN's crop: a square of side scale * short side at the centre or a corner, resized to `size`.

    Scale and position are drawn once per clip; rng=None gives scale 1 at the centre.
    """

    size: int = 224
    scales: tuple[float, ...] = (1.0, 0.875, 0.75, 0.65625)
    positions: tuple[str, ...] = CORNER_POSITIONS

    def __post_init__(self) -> None:
        bad = set(self.positions) - set(CORNER_POSITIONS)
        if bad or not self.positions or not self.scales:
            raise ValueError(f"positions must be a non-empty subset of {CORNER_POSITIONS}, got {self.positions}")

    def box(self, height: int, width: int, scale: float, position: str) -> tuple[int, int, int, int]:
        side = max(1, int(min(height, width) * scale))
        x0 = {"c": (width - side) // 2, "tl": 0, "bl": 0, "tr": width - side, "br": width - side}[position]
        y0 = {"c": (height - side) // 2, "tl": 0, "tr": 0, "bl": height - side, "br": height - side}[position]
        return x0, y0, side, side

    def __call__(self, clip: Clip, rng: np.random.Generator | None = None) -> Clip:
        h, w = frame_size(clip)
        if rng is None:
            scale, position = 1.0, "c"
        else:
            scale = self.scales[int(rng.integers(len(self.scales)))]
            position = self.positions[int(rng.integers(len(self.positions)))]
        return crop_resize(clip, self.box(h, w, scale, position), (self.size, self.size))


@dataclass(frozen=True)
class RandomHorizontalFlip:
    """Flip the whole clip with probability p (never without an rng)."""

    p: float = 0.5

    def __call__(self, clip: Clip, rng: np.random.Generator | None = None) -> Clip:
        if rng is None or not rng.random() < self.p:
            return clip
        return hflip(clip)


def to_float(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (..., C, H, W) -> contiguous float32 (x / 255 - mean[c]) / std[c] on x's device.

    One conversion pass (which also makes a permuted view contiguous) and three in-place passes: the
    same float32 operations in the same order as numpy's ``(x.astype(float32) / 255 - mean) / std``, so
    the same values. A single mean/std value applies to every channel (flow stacks).
    """
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    out.copy_(x)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return out.div_(255.0).sub_(m).div_(s)


@dataclass(frozen=True)
class ToTensorClip:
    """numpy -> torch in the loader's layout, still uint8: channels first; flow stacks (S, L, H, W, 2) ->
    (S, 2L, H, W) interleaved x1, y1, x2, y2, ...; label/order_label/frame_indices -> int64. Drops
    `frame_size`. Images are channels-first views of the channels-last frames, not copies: the collate's
    stack copies them into the batch, and `Normalize` writes its float32 output contiguous."""

    def __call__(self, clip: Clip, rng: np.random.Generator | None = None) -> Clip:
        out: Clip = {}
        for key, value in clip.items():
            if key == "frame_size":
                continue
            if key in IMAGE_KEYS or key == "flow_pair":
                out[key] = torch.from_numpy(_torch_strides(value)).movedim(-1, -3)
            elif key in ("flow", "warp"):
                s, l, h, w, c = value.shape
                stacked = np.ascontiguousarray(value.transpose(0, 1, 4, 2, 3)).reshape(s, l * c, h, w)
                out[key] = torch.from_numpy(stacked)
            elif key in GRAY_KEYS:
                out[key] = torch.from_numpy(_torch_strides(value))
            elif key == "keypoints":
                out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
            elif key in ("label", "order_label"):
                out[key] = torch.tensor(int(value), dtype=torch.int64)
            elif key == "frame_indices":
                out[key] = torch.as_tensor(np.asarray(value), dtype=torch.int64)
            else:
                out[key] = value
        return out


def _torch_strides(arr: np.ndarray) -> np.ndarray:
    """torch.from_numpy takes no negative strides (flipped views): copy those, pass the rest unchanged."""
    return np.ascontiguousarray(arr) if any(st < 0 for st in arr.strides) else arr


@dataclass(frozen=True)
class Normalize:
    """The loader's uint8 tensors -> float32 model inputs and targets, on whatever device they are on:
    ImageNet-style mean/std for images (rgb, order_rgb), (v/255 - 0.449)/0.226 for flow images, motion
    v/255, mask (v > 0) as 0/1. Works on one clip (T, C, H, W) or a batch (B, T, C, H, W) alike.

    Applied after the batch reaches its device (EgoDataModule.on_after_batch_transfer, evaluate, explain,
    the feature cache), not in the loader's workers: uint8 clips are 4x fewer bytes to move from the
    workers and to the GPU, and the conversion there is nearly free. Anything but uint8 in those keys is
    an error (normalising twice would silently shift every input).
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    flow_mean: float = FLOW_MEAN
    flow_std: float = FLOW_STD

    @classmethod
    def for_model(cls, model: torch.nn.Module) -> "Normalize":
        """With the mean/std of the model's first RGB backbone (a module with 3-tuples `mean` and `std`,
        e.g. the bundled EfficientNet-Lite0's 0.5 / 0.5); ImageNet's when it has none."""
        for module in model.modules():
            mean, std = getattr(module, "mean", None), getattr(module, "std", None)
            if isinstance(mean, tuple) and isinstance(std, tuple) and len(mean) == 3 and len(std) == 3:
                return cls(tuple(float(m) for m in mean), tuple(float(v) for v in std))  # type: ignore[arg-type]
        return cls()

    def __call__(self, batch: Clip, rng: np.random.Generator | None = None) -> Clip:
        out = dict(batch)
        for key in (*IMAGE_KEYS, *FLOW_KEYS, *GRAY_KEYS):
            if key not in batch:
                continue
            x = batch[key]
            if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
                raise ValueError(f"Normalize expects the loader's uint8 tensor for {key!r}, got "
                                 f"{getattr(x, 'dtype', type(x).__name__)} (already normalised?)")
            if key in IMAGE_KEYS:
                out[key] = to_float(x, self.mean, self.std)
            elif key in FLOW_KEYS:
                out[key] = to_float(x, (self.flow_mean,), (self.flow_std,))
            elif key == "motion":
                out[key] = x.float().div_(255.0)
            else:
                out[key] = (x > 0).float()
        return out


@dataclass(frozen=True)
class Compose:
    """Apply transforms in order, handing each the same per-clip rng."""

    transforms: Sequence[Callable[[Clip, np.random.Generator | None], Clip]] = field(default_factory=tuple)

    def __call__(self, clip: Clip, rng: np.random.Generator | None = None) -> Clip:
        for t in self.transforms:
            clip = t(clip, rng)
        return clip


def _flow_resize(size: int, flow_size: int | None) -> tuple[ResizeFlow, ...]:
    return (ResizeFlow(flow_size),) if flow_size and flow_size != size else ()


def train_transform(size: int = 224, resize: int = 256, flow_size: int | None = None) -> Compose:
    """Ego-RNN training augmentation: resize short side, random flip, multi-scale corner crop to
    `size` (flow then to `flow_size`, if given), to uint8 tensors (`Normalize` follows on the device)."""
    return Compose((Resize(resize), RandomHorizontalFlip(0.5), MultiScaleCornerCrop(size),
                    *_flow_resize(size, flow_size), ToTensorClip()))


def test_transform(size: int = 224, resize: int = 256, flow_size: int | None = None) -> Compose:
    """Ego-RNN test pre-processing: resize short side, centre crop `size` (flow then to `flow_size`, if
    given), to uint8 tensors (`Normalize` follows on the device)."""
    return Compose((Resize(resize), CenterCrop(size), *_flow_resize(size, flow_size), ToTensorClip()))


test_transform.__test__ = False  # type: ignore[attr-defined]  # not a pytest test when imported
