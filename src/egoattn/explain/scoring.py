"""Score spatial attention against ground-truth masks: pointing game and mass inside the mask.

A map of any resolution (h, w) is upsampled bilinearly to the mask's (H, W) before scoring, so
scores of models with different feature strides are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def upsample_map(attention: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) map -> (H, W) float32, bilinear (cv2 takes (width, height))."""
    return cv2.resize(attention.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def peak_location(attention: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """Pixel (y, x) of the map's maximum in a frame of `size`: the centre of the winning cell.

    The bilinear upsampling of a coarse map peaks at a cell centre, so this is the upsampled map's
    maximum without the ties that clamping creates along the borders.
    """
    h, w = attention.shape
    i, j = np.unravel_index(int(np.argmax(attention)), attention.shape)
    return int((i + 0.5) * size[0] / h), int((j + 0.5) * size[1] / w)


def pointing_hit(attention: np.ndarray, mask: np.ndarray) -> bool:
    """Is the maximum of the map inside the mask? (Zhang et al.'s pointing game.)"""
    y, x = peak_location(attention, mask.shape)
    return bool(mask[y, x] > 0)


def mass_inside(attention: np.ndarray, mask: np.ndarray) -> float:
    """Share of the (upsampled, non-negative) attention mass that falls inside the mask."""
    up = np.clip(upsample_map(attention, mask.shape), 0, None)
    total = float(up.sum())
    return float((up * (mask > 0)).sum() / total) if total > 0 else 0.0


def centre_prior(size: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    """A Gaussian at the frame centre, sigma as a fraction of each side: the baseline to beat."""
    h, w = size
    y = (np.arange(h) - (h - 1) / 2) / (sigma * h)
    x = (np.arange(w) - (w - 1) / 2) / (sigma * w)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)


@dataclass
class AttentionScore:
    """Running totals of the pointing game and mass inside the mask over scored frames."""

    hits: int = 0
    frames: int = 0
    mass: float = 0.0

    def add(self, attention: np.ndarray, mask: np.ndarray) -> None:
        if not (mask > 0).any():
            return  # nothing to point at on this frame
        self.hits += pointing_hit(attention, mask)
        self.mass += mass_inside(attention, mask)
        self.frames += 1

    def as_dict(self) -> dict[str, float]:
        n = max(self.frames, 1)
        return {"pointing_game": self.hits / n, "mass_inside": self.mass / n, "frames": self.frames}
