"""Draw attention maps over frames and write them as GIF, MP4 and a grid PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from PIL import Image

from egoattn.explain.scoring import upsample_map
from egoattn.fileio import atomic_path


def overlay(frame: np.ndarray, attention: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a JET-coloured attention map (any resolution, any range) over an RGB uint8 frame."""
    up = upsample_map(attention, frame.shape[:2])
    lo, hi = float(up.min()), float(up.max())
    norm = ((up - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(up)).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(norm, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(frame, 1 - alpha, heat, alpha, 0)


def put_label(frame: np.ndarray, text: str, scale: float = 0.4) -> np.ndarray:
    """Write `text` on a dark band at the top of a copy of the frame."""
    out = frame.copy()
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (min(out.shape[1], tw + 6), th + base + 4), (0, 0, 0), -1)
    cv2.putText(out, text, (3, th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def grid(rows: Sequence[Sequence[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile equally sized RGB frames: rows of columns, with a white gap."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) - pad, ncol * (w + pad) - pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            canvas[i * (h + pad): i * (h + pad) + h, j * (w + pad): j * (w + pad) + w] = img
    return canvas


def write_png(path: str | Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_gif(path: str | Path, frames: Sequence[np.ndarray], fps: float = 4.0) -> None:
    images = [Image.fromarray(f) for f in frames]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=int(1000 / fps), loop=0)


#: Bones to draw, by joint count: COCO-17 (face, arms, torso, legs) and the 21 hand keypoints
#: (wrist to each finger's base, then along the finger). Other layouts are drawn as joints only.
SKELETON_EDGES: dict[int, tuple[tuple[int, int], ...]] = {
    17: ((0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (5, 11), (6, 12),
         (11, 12), (11, 13), (13, 15), (12, 14), (14, 16)),
    21: tuple((0, b) for b in (1, 5, 9, 13, 17))
        + tuple((b + i, b + i + 1) for b in (1, 5, 9, 13, 17) for i in range(3)),
}


def draw_keypoints(frame: np.ndarray, keypoints: np.ndarray, radius: int = 2,
                   color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """A copy of an RGB uint8 frame with the present joints of ``keypoints`` (J, 3) (x, y in this frame's
    pixels, confidence; NaN / 0 = missing) and the bones between two present joints drawn on it."""
    out = frame.copy()
    kp = np.asarray(keypoints, dtype=np.float64)
    present = (kp[:, 2] > 0) & np.isfinite(kp[:, :2]).all(axis=1)
    xy = np.where(present[:, None], np.round(kp[:, :2]), 0).astype(np.int64)
    for a, b in SKELETON_EDGES.get(kp.shape[0], ()):
        if present[a] and present[b]:
            cv2.line(out, tuple(map(int, xy[a])), tuple(map(int, xy[b])), color, max(1, radius // 2 + 1), cv2.LINE_AA)
    for j in np.nonzero(present)[0]:
        cv2.circle(out, tuple(map(int, xy[j])), radius, (255, 0, 0), -1, cv2.LINE_AA)
    return out
