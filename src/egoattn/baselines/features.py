"""Handcrafted pooled motion features (seed 000 Table II baselines, in the spirit of Ryoo et al.'s
pooled motion features) from a prepared dataset's stored flow or warp-flow images.

Per flow frame (the uint8 x/y images decoded back to pixels with the clip's bound), per cell of an
optional 2x2 spatial grid, one histogram per kind:

- ``hof``: flow orientation, 8 bins centred on 0, 45, ..., 315 degrees (bin 0 = +x, rightwards;
  bin 2 = +y, downwards in the image), each moving pixel voting its magnitude / bound; plus a 9th
  zero-motion bin = the fraction of pixels moving less than ``min_motion`` px.
- ``hmag``: flow magnitude, the fraction of pixels in each of 8 bins with edges
  0, 0.25, 0.5, 1, 2, 4, 8, 16, inf px.
- ``mbh``: motion boundary histograms: for flow x and flow y separately, the orientation histogram
  (8 bins as hof, magnitude-weighted, / bound) of the component's spatial gradient (Sobel), 16 bins.

The per-frame histograms are pooled over a temporal pyramid (``levels`` 1, 2, 4: the whole clip,
halves, quarters; ``pool`` mean, max or both) and concatenated. Each clip uses at most
``max_flows`` flow frames, evenly spaced (all of a short clip).

Features are computed once per dataset for every clip of its manifest (any split can reuse them)
and cached per kind in ``<cache_dir>/<source>-<kind>-<key>.npz``, the key hashing the options and
the manifest, so a changed option or a re-prepared dataset is never served stale features.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from egoattn.data.clipstore import ClipReader
from egoattn.data.dataset import load_prepared
from egoattn.data.flow import uint8_to_flow
from egoattn.data.manifest import ClipRecord, resolve_inside
from egoattn.data.samplers import uniform_indices
from egoattn.errors import BadInputError, ConfigError
from egoattn.fileio import atomic_path

KINDS = ("hof", "hmag", "mbh")
SOURCES = ("flow", "warp")
POOLS = ("mean", "max", "mean+max")
ORIENTATION_BINS = 8
MAGNITUDE_EDGES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, np.inf)
CACHE_VERSION = 1


@dataclass(frozen=True)
class FeatureSpec:
    """Which features and how they are pooled; ``name`` is what a result is called (e.g. warp:hof+mbh)."""

    kinds: tuple[str, ...] = ("hof",)
    source: str = "flow"
    levels: tuple[int, ...] = (1, 2, 4)
    grid: int = 1  # 1: whole frame; 2: 2x2 cells
    pool: str = "mean"
    min_motion: float = 0.5  # px; slower pixels count in hof's zero-motion bin
    max_flows: int = 64

    def __post_init__(self) -> None:
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ConfigError(f"unknown feature kind(s) {bad} (choose from {', '.join(KINDS)}, joined by '+')"
                              if bad else "no feature kind given")
        if len(set(self.kinds)) != len(self.kinds):
            raise ConfigError(f"feature kinds repeat: {'+'.join(self.kinds)}")
        if self.source not in SOURCES:
            raise ConfigError(f"feature source must be 'flow' or 'warp', got {self.source!r}")
        if not self.levels or any(int(n) < 1 for n in self.levels):
            raise ConfigError(f"temporal pyramid levels must be positive integers, got {self.levels}")
        if self.grid not in (1, 2):
            raise ConfigError(f"grid must be 1 (whole frame) or 2 (2x2 cells), got {self.grid}")
        if self.pool not in POOLS:
            raise ConfigError(f"pool must be one of {POOLS}, got {self.pool!r}")
        if self.min_motion < 0:
            raise ConfigError(f"min_motion must be >= 0, got {self.min_motion}")
        if self.max_flows < 1:
            raise ConfigError(f"max_flows must be >= 1, got {self.max_flows}")

    @property
    def name(self) -> str:
        kinds = "+".join(self.kinds)
        return kinds if self.source == "flow" else f"{self.source}:{kinds}"

    def only(self, kind: str) -> "FeatureSpec":
        return replace(self, kinds=(kind,))


def parse_features(name: str, **options: object) -> FeatureSpec:
    """``hof``, ``hof+mbh``, ``warp:hof+hmag`` (source ``flow`` by default) -> a FeatureSpec."""
    text = name.strip().lower()
    source, sep, kinds = text.partition(":")
    if not sep:
        source, kinds = "flow", text
    return FeatureSpec(kinds=tuple(k.strip() for k in kinds.split("+") if k.strip()), source=source, **options)


# --- per-frame histograms ---------------------------------------------------------------------------

def orientation_bins(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Bin index 0..7 of the direction (dx, dy); bins centred on multiples of 45 degrees, 0 = +x."""
    angle = np.arctan2(dy, dx)  # -pi..pi, image y axis pointing down
    step = 2 * np.pi / ORIENTATION_BINS
    return (np.floor((angle + step / 2) / step).astype(np.int64)) % ORIENTATION_BINS


def _cells(h: int, w: int, grid: int) -> list[tuple[slice, slice]]:
    ys, xs = np.linspace(0, h, grid + 1).round().astype(int), np.linspace(0, w, grid + 1).round().astype(int)
    return [(slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1])) for i in range(grid) for j in range(grid)]


def _orientation_histogram(dx: np.ndarray, dy: np.ndarray, scale: float,
                           moving: np.ndarray | None = None) -> np.ndarray:
    mag = np.hypot(dx, dy)
    if moving is not None:
        mag = np.where(moving, mag, 0.0)
    hist = np.bincount(orientation_bins(dx, dy).ravel(), weights=mag.ravel(), minlength=ORIENTATION_BINS)
    return hist / (mag.size * scale)


def hof(flow: np.ndarray, bound: float, min_motion: float = 0.5) -> np.ndarray:
    """(h, w, 2) flow in px -> 9 bins: 8 magnitude-weighted orientations (/ bound), zero-motion fraction."""
    dx, dy = flow[..., 0], flow[..., 1]
    moving = np.hypot(dx, dy) >= min_motion
    return np.append(_orientation_histogram(dx, dy, bound, moving), 1.0 - moving.mean())


def hmag(flow: np.ndarray) -> np.ndarray:
    """(h, w, 2) flow in px -> the fraction of pixels in each magnitude bin (MAGNITUDE_EDGES)."""
    hist, _ = np.histogram(np.hypot(flow[..., 0], flow[..., 1]), bins=np.asarray(MAGNITUDE_EDGES))
    return hist / max(1, flow[..., 0].size)


def mbh(flow: np.ndarray, bound: float) -> np.ndarray:
    """(h, w, 2) flow -> 16 bins: orientation histograms of the spatial gradients of flow x, then flow y."""
    out = []
    for c in range(2):
        comp = np.ascontiguousarray(flow[..., c], dtype=np.float32)
        gx = cv2.Sobel(comp, cv2.CV_32F, 1, 0, ksize=3) / 8.0  # / 8: Sobel weights -> px per px
        gy = cv2.Sobel(comp, cv2.CV_32F, 0, 1, ksize=3) / 8.0
        out.append(_orientation_histogram(gx, gy, bound))
    return np.concatenate(out)


def frame_histograms(flow: np.ndarray, kind: str, bound: float, grid: int = 1, min_motion: float = 0.5) -> np.ndarray:
    """One flow frame (h, w, 2) px -> the concatenated histograms of ``kind`` over the grid cells."""
    parts = []
    for ys, xs in _cells(flow.shape[0], flow.shape[1], grid):
        cell = flow[ys, xs]
        if kind == "hof":
            parts.append(hof(cell, bound, min_motion))
        elif kind == "hmag":
            parts.append(hmag(cell))
        elif kind == "mbh":
            parts.append(mbh(cell, bound))
        else:
            raise ConfigError(f"unknown feature kind {kind!r}")
    return np.concatenate(parts)


def temporal_pyramid(per_frame: np.ndarray, levels: Sequence[int] = (1, 2, 4), pool: str = "mean") -> np.ndarray:
    """(F, D) per-frame histograms -> pooled over 1, 2, 4 ... equal segments, concatenated.

    A segment with no frame (fewer frames than segments) takes the frame at its position.
    """
    n = per_frame.shape[0]
    if n < 1:
        raise ValueError("no frames to pool")
    pools = ("mean", "max") if pool == "mean+max" else (pool,)
    out = []
    for level in levels:
        bounds = np.linspace(0, n, int(level) + 1)
        for s in range(int(level)):
            lo, hi = int(np.floor(bounds[s])), int(np.ceil(bounds[s + 1]))
            seg = per_frame[min(lo, n - 1): max(hi, lo + 1)]
            out += [seg.mean(axis=0) if p == "mean" else seg.max(axis=0) for p in pools]
    return np.concatenate(out).astype(np.float32)


def clip_features(reader: ClipReader, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Every kind of ``spec`` for one clip: {kind: pooled vector}."""
    num_flows = reader.num_frames - 1
    if num_flows < 1:
        raise BadInputError(reader.path, f"clip has {reader.num_frames} frame(s), so no optical flow")
    if not reader.has(spec.source):
        raise BadInputError(reader.path, f"clip has no {spec.source!r} flow (has {reader.meta['modalities']})")
    info = reader.meta.get(f"{spec.source}_info", {})
    bound = float(info.get("bound", 20.0))
    indices = np.unique(uniform_indices(num_flows + 1, min(spec.max_flows, num_flows)))
    flows = uint8_to_flow(reader.read_flow(spec.source, [int(i) for i in indices]), bound)
    out = {}
    for kind in spec.kinds:
        per_frame = np.stack([frame_histograms(f, kind, bound, spec.grid, spec.min_motion) for f in flows])
        out[kind] = temporal_pyramid(per_frame, spec.levels, spec.pool)
    return out


# --- dataset extraction with a cache -----------------------------------------------------------------

def cache_key(spec: FeatureSpec, kind: str, manifest: Path) -> str:
    """Hash of everything a kind's features depend on: its options and the manifest's content."""
    options = asdict(spec.only(kind))
    options["version"] = CACHE_VERSION
    digest = hashlib.sha1(json.dumps(options, sort_keys=True).encode())
    digest.update(manifest.read_bytes())
    return digest.hexdigest()[:12]


def _load_cache(path: Path, clip_ids: list[str]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if list(z["clip_ids"]) != clip_ids:
                return None
            return z["features"]
    except (OSError, ValueError, KeyError):
        return None  # a damaged cache is recomputed


def _save_cache(path: Path, clip_ids: list[str], features: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, clip_ids=np.asarray(clip_ids), features=features)


def extract_features(root: str | Path, spec: FeatureSpec, cache_dir: str | Path | None = None,
                     progress: bool = False) -> tuple[list[ClipRecord], np.ndarray]:
    """(records of the manifest, features (N, D)) for every clip of the prepared dataset ``root``.

    Kinds already in ``cache_dir`` are read from it; the others are computed in one pass over the
    clips and cached (``cache_dir=None``: no cache).
    """
    root = Path(root)
    _, records = load_prepared(root)
    if not records:
        raise BadInputError(root / "manifest.csv", "no clips")
    clip_ids = [r.clip_id for r in records]
    paths: dict[str, Path] = {}
    found: dict[str, np.ndarray] = {}
    for kind in spec.kinds:
        if cache_dir is not None:
            paths[kind] = Path(cache_dir) / f"{spec.source}-{kind}-{cache_key(spec, kind, root / 'manifest.csv')}.npz"
            cached = _load_cache(paths[kind], clip_ids)
            if cached is not None:
                found[kind] = cached
    missing = [k for k in spec.kinds if k not in found]
    if missing:
        todo = replace(spec, kinds=tuple(missing))
        rows: dict[str, list[np.ndarray]] = {k: [] for k in missing}
        iterator = _progress(records, f"{todo.name} features") if progress else records
        for rec in iterator:
            reader = ClipReader(resolve_inside(root, rec.path))
            try:
                values = clip_features(reader, todo)
            finally:
                reader.close()
            for k in missing:
                rows[k].append(values[k])
        for k in missing:
            found[k] = np.stack(rows[k]).astype(np.float32)
            if cache_dir is not None:
                _save_cache(paths[k], clip_ids, found[k])
    return records, np.concatenate([found[k] for k in spec.kinds], axis=1)


def _progress(items: list[ClipRecord], title: str):
    from rich.progress import track

    return track(items, description=title)
