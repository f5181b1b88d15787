"""One prepared clip = one uncompressed zip file holding every modality of the clip.

Layout inside `clips/<clip_id>.zip` (a standard zip: `unzip -l` shows it):

    meta.json              {"clip_id", "num_frames", "fps", "height", "width", "modalities": [...]}
    rgb/000000.jpg ...     RGB frames: JPEG, or PNG (rgb/000000.png) when meta.json has
                           "rgb_format": "png" (lossless, e.g. privacy-protected frames)
    flow/x_000000.png ...  optical flow frame i -> i+1 as 8-bit images (dense_flow convention,
    flow/y_000000.png ...  +-bound px mapped to 0..255); num_frames - 1 of them
    warp/x_000000.png ...  the same for camera-compensated warp flow
    motion/000000.png ...  motion map per frame (0 static .. 255 moving, camera motion removed)
    mask/000000.png ...    active-object mask per frame (synthetic ground truth)
    keypoints.npy          (num_frames, J, 3) float32: x, y (pixels of the stored frames), confidence
    privacy.json           optional privacy-sensitive object boxes per frame

One file per clip makes a clip's write atomic (written beside, then renamed) and lets a loader read
only the frames a sampler picked.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from egoattn.errors import BadInputError
from egoattn.fileio import atomic_path

FLOW_KINDS = ("flow", "warp")
GRAY_KINDS = ("motion", "mask")
RGB_FORMATS = ("jpg", "png")


def rgb_member(i: int, rgb_format: str = "jpg") -> str:
    """Name of RGB frame i inside a clip zip; a clip without meta "rgb_format" is "jpg"."""
    if rgb_format not in RGB_FORMATS:
        raise ValueError(f"rgb_format must be one of {RGB_FORMATS}, got {rgb_format!r}")
    return f"rgb/{i:06d}.{rgb_format}"


def encode_rgb(frame: np.ndarray, rgb_format: str = "jpg", jpeg_quality: int = 90) -> bytes:
    """One (H, W, 3) uint8 RGB frame as the bytes of a JPEG (lossy) or PNG (lossless) member."""
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if rgb_format == "jpg" else []
    ok, buf = cv2.imencode(f".{rgb_format}", bgr, params)
    if not ok:
        raise ValueError(f"could not encode {rgb_format} image of shape {frame.shape}")
    return buf.tobytes()


def _frame_name(kind: str, i: int, axis: str = "") -> str:
    if kind == "rgb":
        return rgb_member(i)
    if kind in FLOW_KINDS:
        return f"{kind}/{axis}_{i:06d}.png"
    if kind in GRAY_KINDS:
        return f"{kind}/{i:06d}.png"
    raise ValueError(f"unknown modality {kind!r}")


class ClipWriter:
    """Collect a clip's modalities, then `close()` writes the zip atomically.

    Use as a context manager: on an exception nothing is written and an existing clip is kept.
    """

    def __init__(self, path: str | Path, clip_id: str, fps: float, jpeg_quality: int = 90,
                 rgb_format: str = "jpg") -> None:
        self.path = Path(path)
        self.meta: dict[str, Any] = {"clip_id": clip_id, "fps": float(fps), "modalities": []}
        if rgb_format != "jpg":
            rgb_member(0, rgb_format)  # validates
            self.meta["rgb_format"] = rgb_format
        self.jpeg_quality = jpeg_quality
        self.rgb_format = rgb_format
        self._members: dict[str, bytes] = {}
        self._counts: dict[str, int] = {}

    def _encode(self, ext: str, img: np.ndarray, params: Sequence[int] = ()) -> bytes:
        ok, buf = cv2.imencode(ext, img, list(params))
        if not ok:
            raise ValueError(f"could not encode {ext} image of shape {img.shape}")
        return buf.tobytes()

    def add_rgb(self, frames: np.ndarray) -> None:
        """frames: (T, H, W, 3) uint8 RGB."""
        self._check(frames, 4)
        for i, f in enumerate(frames):
            self._members[rgb_member(i, self.rgb_format)] = encode_rgb(f, self.rgb_format, self.jpeg_quality)
        self._counts["rgb"] = len(frames)
        self.meta["num_frames"] = len(frames)
        self.meta["height"], self.meta["width"] = int(frames.shape[1]), int(frames.shape[2])

    def add_flow(self, kind: str, flow_u8: np.ndarray, bound: float, method: str) -> None:
        """flow_u8: (T-1, H, W, 2) uint8 x/y images (see egoattn.data.flow.flow_to_uint8)."""
        if kind not in FLOW_KINDS:
            raise ValueError(f"flow kind must be one of {FLOW_KINDS}")
        self._check(flow_u8, 4)
        for i, f in enumerate(flow_u8):
            self._members[_frame_name(kind, i, "x")] = self._encode(".png", np.ascontiguousarray(f[..., 0]))
            self._members[_frame_name(kind, i, "y")] = self._encode(".png", np.ascontiguousarray(f[..., 1]))
        self._counts[kind] = len(flow_u8)
        self.meta[f"{kind}_info"] = {"bound": float(bound), "method": method}

    def add_gray(self, kind: str, images: np.ndarray) -> None:
        """images: (T, H, W) uint8, for `motion` maps or `mask`s."""
        if kind not in GRAY_KINDS:
            raise ValueError(f"gray kind must be one of {GRAY_KINDS}")
        self._check(images, 3)
        for i, f in enumerate(images):
            self._members[_frame_name(kind, i)] = self._encode(".png", f)
        self._counts[kind] = len(images)

    def add_array(self, name: str, array: np.ndarray) -> None:
        """Store a numeric array (e.g. keypoints (T, J, 3)) as `<name>.npy`."""
        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        self._members[f"{name}.npy"] = buf.getvalue()
        self._counts[name] = len(array)

    def add_json(self, name: str, obj: Any) -> None:
        self._members[f"{name}.json"] = json.dumps(obj).encode()
        self._counts[name] = len(obj) if hasattr(obj, "__len__") else 1

    @staticmethod
    def _check(arr: np.ndarray, ndim: int) -> None:
        if arr.dtype != np.uint8 or arr.ndim != ndim:
            raise ValueError(f"expected a uint8 array with {ndim} dims, got {arr.dtype} {arr.shape}")

    def close(self) -> None:
        if "rgb" not in self._counts:
            raise ValueError("a clip needs its rgb frames")
        n = self._counts["rgb"]
        for kind, count in self._counts.items():
            expected = n - 1 if kind in FLOW_KINDS else n
            if kind != "privacy" and count != expected:
                raise ValueError(f"{self.path}: {kind} has {count} frames, expected {expected} for {n} rgb frames")
        self.meta["modalities"] = sorted(self._counts)
        with atomic_path(self.path) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr("meta.json", json.dumps(self.meta, indent=1))
                for name, data in self._members.items():
                    zf.writestr(name, data)

    def __enter__(self) -> "ClipWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


class ClipReader:
    """Random access to a prepared clip's frames. Opens the zip lazily (safe across DataLoader forks)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        self._meta: dict[str, Any] | None = None

    @property
    def zip(self) -> zipfile.ZipFile:
        if self._zip is None:
            try:
                self._zip = zipfile.ZipFile(self.path)
            except FileNotFoundError:
                raise BadInputError(self.path, "prepared clip not found") from None
            except zipfile.BadZipFile as e:
                raise BadInputError(self.path, f"corrupt prepared clip ({e})") from None
        return self._zip

    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            self._meta = json.loads(self._read("meta.json"))
        return self._meta

    @property
    def num_frames(self) -> int:
        return int(self.meta["num_frames"])

    def has(self, modality: str) -> bool:
        return modality in self.meta["modalities"]

    def _read(self, name: str) -> bytes:
        try:
            return self.zip.read(name)
        except KeyError:
            raise BadInputError(self.path, f"missing member {name!r}") from None
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise BadInputError(self.path, f"corrupt member {name!r} ({e})") from None

    def _decode(self, name: str, flags: int) -> np.ndarray:
        img = cv2.imdecode(np.frombuffer(self._read(name), np.uint8), flags)
        if img is None:
            raise BadInputError(self.path, f"undecodable image {name!r}")
        return img

    def _check_indices(self, kind: str, indices: Sequence[int], count: int) -> None:
        if not self.has(kind):
            raise BadInputError(self.path, f"clip has no {kind!r} modality (has {self.meta['modalities']})")
        bad = [i for i in indices if not 0 <= i < count]
        if bad:
            raise BadInputError(self.path, f"{kind} frame indices {bad[:5]} out of range 0..{count - 1}")

    def read_rgb(self, indices: Sequence[int]) -> np.ndarray:
        """(n, H, W, 3) uint8 RGB."""
        self._check_indices("rgb", indices, self.num_frames)
        fmt = self.meta.get("rgb_format", "jpg")
        return np.stack([cv2.cvtColor(self._decode(rgb_member(i, fmt), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                         for i in indices])

    def read_flow(self, kind: str, indices: Sequence[int]) -> np.ndarray:
        """(n, H, W, 2) uint8 x/y flow images; index i is the flow from frame i to i+1."""
        self._check_indices(kind, indices, self.num_frames - 1)
        out = [np.stack([self._decode(_frame_name(kind, i, a), cv2.IMREAD_GRAYSCALE) for a in "xy"], axis=-1)
               for i in indices]
        return np.stack(out)

    def read_gray(self, kind: str, indices: Sequence[int]) -> np.ndarray:
        """(n, H, W) uint8 motion maps or masks."""
        self._check_indices(kind, indices, self.num_frames)
        return np.stack([self._decode(_frame_name(kind, i), cv2.IMREAD_GRAYSCALE) for i in indices])

    def read_array(self, name: str) -> np.ndarray:
        if not self.has(name):
            raise BadInputError(self.path, f"clip has no {name!r} array")
        return np.load(io.BytesIO(self._read(f"{name}.npy")), allow_pickle=False)

    def read_json(self, name: str) -> Any:
        return json.loads(self._read(f"{name}.json"))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def __getstate__(self) -> dict[str, Any]:
        # A zip handle must not cross a process boundary; each worker opens its own.
        return {"path": self.path, "_zip": None, "_meta": self._meta}
