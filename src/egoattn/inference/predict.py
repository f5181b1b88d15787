"""`egoattn predict`: action labels for raw videos, one clip or a timeline of windows.

The video is streamed (`iter_decoded`): each sampled frame is converted and cropped on arrival (the
others are decoded and dropped unconverted) and kept only while a window in flight still needs it (a ring buffer of at most a few windows' sampled frames), so memory does not
grow with the video's length. Each window gets the recipe's frame sampler and test transform, so a
clip gives the same logits as `egoattn evaluate` gives on the same frames.

Windows that overlap (stride < window) share frames: a model that encodes each frame on its own
(`encode_frames`, the part `--cache-features` caches) encodes a shared frame once (`SharedFrames`), and
the later window reads its features. With half-overlapping windows that halves the backbone's work.

Decoding and cropping run in a background thread, at most `PREFETCH_WINDOWS` finished windows ahead
of the model (a bounded queue: memory stays flat), so they overlap the model's forward pass instead of
adding to it (PyAV, OpenCV and torch release the GIL in their kernels). Crops stay uint8 until the
model's device; there one window is converted and normalised at once.

Pre-processing of one frame: when its short side is larger than the recipe's `resize`, it is first
shrunk to that short side, anti-aliased, exactly as `egoattn prepare` shrinks source videos: by the
decoder while it converts the frame to RGB (`FrameToRGB`; frames given as arrays: cv2 INTER_AREA).
The transform's bilinear Resize is then a no-op. Then the test transform: Resize (short side),
CenterCrop(size), Normalize with the backbone's mean/std.

`--overlay` writes a second, also streamed, pass over the video: every frame with the label of the
window whose centre is nearest and the attention of that window's nearest sampled frame.
"""

from __future__ import annotations

import bisect
import csv
import io
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence, TypeVar

import cv2
import numpy as np
import torch
from torch import nn

from egoattn.data.samplers import ConsecutiveSampler, UniformSampler
from egoattn.data.transforms import CenterCrop, Compose, Normalize, Resize, ToTensorClip, to_float
from egoattn.data.video import FrameToRGB, iter_decoded, iter_frames, probe_video, short_side_size, write_video
from egoattn.errors import BadInputError, ConfigError, EgoattnError
from egoattn.fileio import write_json, write_text_atomic
from egoattn.models.precision import autocast_at
from egoattn.training.config import Precision

#: File endings taken from a directory of videos (a file named explicitly may have any ending).
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".3gp")
#: Modalities a model needs that cannot be made from decoded frames alone here (optical flow).
FLOW_MODALITIES = ("flow", "warp", "flow_pair")
#: Finished windows (uint8 crops) the decoding thread may hold ahead of the model.
PREFETCH_WINDOWS = 2


# --- pre-processing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preprocessing:
    """What a trained model expects: T frames picked by `sampler`, short side `resize`, centre crop
    `size`, pixels (x / 255 - mean) / std."""

    num_frames: int
    sampler: str
    resize: int
    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_recipe(cls, recipe: Any, model: nn.Module) -> "Preprocessing":
        d = recipe.data
        if d.sampler not in ("uniform", "consecutive"):
            raise ConfigError(f"recipe sampler {d.sampler!r}: predict supports 'uniform' and 'consecutive'")
        norm = Normalize.for_model(model)
        return cls(int(d.num_frames), d.sampler, int(d.resize), int(d.size), norm.mean, norm.std)

    @property
    def normalize(self) -> Normalize:
        return Normalize(self.mean, self.std)

    def frame_sampler(self) -> UniformSampler | ConsecutiveSampler:
        """The recipe's sampler; short clips repeat frames instead of failing."""
        cls = UniformSampler if self.sampler == "uniform" else ConsecutiveSampler
        return cls(self.num_frames, short_clip="repeat")

    def sample(self, num_frames: int) -> np.ndarray:
        """The test-time frame indices of a clip of `num_frames`."""
        return np.asarray(self.frame_sampler()(num_frames, None), dtype=np.int64)

    def transform(self) -> Compose:
        """The loader's test transform (ClipDataset dicts, uint8; `normalize` follows on the device)."""
        return Compose((Resize(self.resize), CenterCrop(self.size), ToTensorClip()))

    def shrink(self, frame: np.ndarray) -> np.ndarray:
        """Anti-aliased (INTER_AREA) downscale of an RGB array to short side `resize` (frames already that
        small pass unchanged). Video frames are shrunk while decoding instead (`FrameToRGB(resize)`)."""
        h, w = frame.shape[:2]
        if min(h, w) <= self.resize:
            return frame
        nh, nw = short_side_size(h, w, self.resize)
        return cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)

    def crop(self, frame: np.ndarray) -> np.ndarray:
        """One RGB uint8 frame (H, W, 3) of any size -> the (size, size, 3) uint8 crop the model sees."""
        clip = Compose((Resize(self.resize), CenterCrop(self.size)))({"rgb": self.shrink(frame)[None]}, None)
        return clip["rgb"][0]

    def crop_box(self, height: int, width: int) -> tuple[float, float, float, float]:
        """The crop as (x0, y0, w, h) in fractions of the original frame."""
        rh, rw = short_side_size(height, width, self.resize)
        x0, y0 = (rw - self.size) // 2, (rh - self.size) // 2
        return x0 / rw, y0 / rh, self.size / rw, self.size / rh

    def to_tensor(self, crops: Sequence[np.ndarray] | np.ndarray, device: torch.device | str | None = None
                  ) -> torch.Tensor:
        """(T, size, size, 3) uint8 crops -> normalised (T, 3, size, size) float32 on `device` (default CPU).

        The uint8 crops go to the device (4x fewer bytes than float32), where `to_float` converts the
        layout and dtype and normalises, as `Normalize` does to the loader's batches (identical values).
        """
        u8 = torch.from_numpy(np.ascontiguousarray(crops) if isinstance(crops, np.ndarray) else np.stack(crops))
        u8 = u8.to(device) if device is not None else u8
        return to_float(u8.permute(0, 3, 1, 2), self.mean, self.std)

    def to_json(self) -> dict[str, Any]:
        return {"num_frames": self.num_frames, "sampler": self.sampler, "resize": self.resize, "crop": "centre",
                "size": self.size, "mean": list(self.mean), "std": list(self.std),
                "pixel_scale": "x / 255 (RGB order)", "layout": "(1, T, 3, H, W)"}


# --- the model ------------------------------------------------------------------------------------

@dataclass
class ClipOutput:
    probs: np.ndarray  # (K,) float64, sums to 1
    logits: np.ndarray  # (K,) float32
    attention: np.ndarray | None  # (T, h, w) float32, each map sums to 1
    temporal_weights: np.ndarray | None  # (T,)


class Predictor:
    """A trained RGB model with its pre-processing: crops in, probabilities and attention out.

    `precision` runs the model under autocast (egoattn.models.precision.autocast_at): "bf16-mixed" pays
    off on CPUs with bfloat16 instructions and on GPUs; "32" (float32) is the default."""

    def __init__(self, model: nn.Module, classes: Sequence[str], prep: Preprocessing,
                 device: torch.device | str | None = None, precision: Precision = "32") -> None:
        from egoattn.evaluation.evaluate import default_device

        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.classes = list(classes)
        self.prep = prep
        self.precision = precision
        autocast_at(self.device, precision)  # an unknown precision fails here, not at the first clip

    @classmethod
    def from_loaded(cls, loaded: Any, device: torch.device | str | None = None,
                    precision: Precision = "32") -> "Predictor":
        """From a `LoadedRun` (egoattn.training.run.load_run); RGB models only."""
        mods = [m for m in loaded.recipe.data.modalities if m in FLOW_MODALITIES]
        if mods or "rgb" not in loaded.recipe.data.modalities:
            raise ConfigError(f"{loaded.run_dir}: predict on raw video supports RGB models; this run's model reads "
                              f"{list(loaded.recipe.data.modalities)} (optical flow is not computed here)")
        prep = Preprocessing.from_recipe(loaded.recipe, loaded.model)
        return cls(loaded.model, loaded.classes, prep, device, precision)

    @classmethod
    def from_run(cls, run: str | Path, which: str = "best", device: torch.device | str | None = None,
                 precision: Precision = "32") -> "Predictor":
        from egoattn.training.run import load_run

        return cls.from_loaded(load_run(run, which=which), device, precision)

    @torch.inference_mode()
    def __call__(self, crops: Sequence[np.ndarray] | np.ndarray) -> ClipOutput:
        """T uint8 crops (a list, or one (T, size, size, 3) array) -> one clip's output."""
        with autocast_at(self.device, self.precision):
            return self.clip_output(self.model(rgb=self.prep.to_tensor(crops, self.device)[None]))

    @torch.inference_mode()
    def window(self, crops: np.ndarray, frame_ids: np.ndarray, shared: "SharedFrames") -> ClipOutput:
        """One window of a video: like calling the predictor on `crops`, but frames (by absolute index)
        that `shared` encoded for an earlier window are not encoded again."""
        with autocast_at(self.device, self.precision):
            return self.clip_output(self.model(frame_features=shared.features(crops, frame_ids)))

    def shares_frames(self) -> bool:
        """Whether the model encodes each frame on its own (`encode_frames`) from RGB alone, so that windows
        can share the encoded frames."""
        return hasattr(self.model, "encode_frames") and tuple(getattr(self.model, "input_keys", ())) == ("rgb",)

    @staticmethod
    def clip_output(out: Any) -> ClipOutput:
        """A model's output for a batch of one clip -> ClipOutput (probabilities in float64)."""
        out = out if isinstance(out, dict) else {"logits": out}
        logits = out["logits"][0].float().cpu()
        probs = torch.softmax(logits.double(), dim=0).numpy()
        att = out.get("attention")
        tw = out.get("temporal_weights")
        return ClipOutput(probs=probs, logits=logits.numpy(),
                          attention=None if att is None else att[0].float().cpu().numpy(),
                          temporal_weights=None if tw is None else tw[0].float().cpu().numpy().reshape(-1))

    def top_k(self, probs: np.ndarray, k: int) -> list[tuple[str, float]]:
        order = np.argsort(-probs, kind="stable")[: max(1, k)]
        return [(self.classes[i], float(probs[i])) for i in order]


class SharedFrames:
    """`encode_frames` outputs by absolute frame index, for windows that overlap: each frame is encoded
    once, in the first window that samples it. `forget_before(i)` drops the frames no later window needs,
    so memory stays bounded by the frames of the windows in flight."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self.encoded: dict[int, dict[str, torch.Tensor]] = {}  # frame -> {key: (...) one frame's features}

    def features(self, crops: np.ndarray, frame_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """(T, size, size, 3) uint8 crops of frames `frame_ids` -> the model's frame_features (1, T, ...)."""
        ids = [int(i) for i in frame_ids]
        new: dict[int, int] = {}  # frame not encoded yet -> the first slot that holds it
        for slot, i in enumerate(ids):
            if i not in self.encoded and i not in new:
                new[i] = slot
        if new:
            p = self.predictor
            rgb = p.prep.to_tensor(crops[list(new.values())], p.device)[None]
            out = p.model.encode_frames(rgb)
            for j, i in enumerate(new):
                self.encoded[i] = {key: v[0, j] for key, v in out.items()}
        keys = self.encoded[ids[0]].keys()
        return {key: torch.stack([self.encoded[i][key] for i in ids])[None] for key in keys}

    def forget_before(self, frame: int) -> None:
        for i in [i for i in self.encoded if i < frame]:
            del self.encoded[i]


# --- windows --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WindowPlan:
    """Windows of `length` frames every `stride` frames; the last one ends at the last frame."""

    num_frames: int
    length: int
    stride: int

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.length < 1 or self.stride < 1:
            raise ValueError(f"bad window plan {self}")

    def __len__(self) -> int:
        if self.num_frames <= self.length:
            return 1
        regular = (self.num_frames - self.length) // self.stride + 1
        return regular + (1 if (regular - 1) * self.stride + self.length < self.num_frames else 0)

    def bounds(self, k: int) -> tuple[int, int]:
        """[start, end) frames of window k."""
        if self.num_frames <= self.length:
            return 0, self.num_frames
        start = min(k * self.stride, self.num_frames - self.length)
        return start, start + self.length


def window_plan(num_frames: int, fps: float, window: float | None, stride: float | None) -> WindowPlan:
    """Seconds -> frames. No window: the whole video is one clip."""
    if window is None:
        if stride is not None:
            raise ConfigError("--stride needs --window")
        return WindowPlan(num_frames, num_frames, num_frames)
    if window <= 0 or (stride is not None and stride <= 0):
        raise ConfigError(f"--window and --stride must be positive seconds, got {window} and {stride}")
    if fps <= 0:
        raise ConfigError("the video declares no frame rate, so windows in seconds cannot be placed")
    length = max(1, round(window * fps))
    step = max(1, round((stride if stride is not None else window) * fps))
    return WindowPlan(num_frames, length, step)


@dataclass
class WindowPrediction:
    start_frame: int
    end_frame: int  # exclusive
    start: float  # seconds
    end: float
    top_k: list[tuple[str, float]]
    probs: np.ndarray
    frame_indices: np.ndarray  # absolute indices of the sampled frames
    attention: np.ndarray | None = None  # (T, h, w)
    temporal_weights: np.ndarray | None = None

    @property
    def label(self) -> str:
        return self.top_k[0][0]

    @property
    def score(self) -> float:
        return self.top_k[0][1]


@dataclass
class VideoPrediction:
    video: Path
    num_frames: int
    fps: float
    width: int
    height: int
    windows: list[WindowPrediction] = field(default_factory=list)
    overlay: Path | None = None
    timeline_csv: Path | None = None
    timeline_json: Path | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"video": str(self.video), "num_frames": self.num_frames, "fps": self.fps,
                               "size": [self.width, self.height]}
        if len(self.windows) == 1 and self.windows[0].end_frame - self.windows[0].start_frame == self.num_frames:
            out["top_k"] = [{"label": c, "prob": p} for c, p in self.windows[0].top_k]
        out["windows"] = len(self.windows)
        for key in ("overlay", "timeline_csv", "timeline_json"):
            if getattr(self, key) is not None:
                out[key] = str(getattr(self, key))
        return out

    def timeline(self) -> list[dict[str, Any]]:
        return [{"start": round(w.start, 3), "end": round(w.end, 3), "start_frame": w.start_frame,
                 "end_frame": w.end_frame, "label": w.label, "score": round(w.score, 6),
                 "top_k": [{"label": c, "prob": round(p, 6)} for c, p in w.top_k]} for w in self.windows]


_Item = TypeVar("_Item")
_DONE = object()


def prefetch(items: Iterator[_Item], depth: int) -> Iterator[_Item]:
    """Run the iterator `items` in a background thread, at most `depth` items ahead of the consumer.

    Its exceptions are re-raised in the consumer; when the consumer stops early (an error, a closed
    generator) the thread stops at its next item and closes `items` (releasing e.g. an open video).
    """
    ready: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, _DONE))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put((False, e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="egoattn-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, item = ready.get()
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        worker.join()


def window_crops(prep: Preprocessing, video: str | Path, plan: WindowPlan
                 ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Decode `video` once; yield (window k, its absolute frame indices, its (T, size, size, 3) uint8 crops)
    as soon as the window's last sampled frame is decoded.

    Only sampled frames are converted and cropped, each once (windows that share a frame share its
    crop), and only the crops of windows in flight are held (about (length / stride + 1) * T crops),
    whatever the video's length.
    """
    video = Path(video)
    to_rgb = FrameToRGB(prep.resize)
    waiting: dict[int, list[tuple[int, int]]] = {}  # frame index -> [(window, slot)]
    crops: dict[int, np.ndarray] = {}  # window -> (T, size, size, 3) uint8, filled as frames arrive
    missing: dict[int, int] = {}
    indices: dict[int, np.ndarray] = {}
    next_window, total = 0, len(plan)
    for i, frame in enumerate(iter_decoded(video)):
        while next_window < total and plan.bounds(next_window)[0] <= i:
            start, end = plan.bounds(next_window)
            idx = start + prep.sample(end - start)
            indices[next_window] = idx
            crops[next_window] = np.empty((len(idx), prep.size, prep.size, 3), np.uint8)
            missing[next_window] = len(idx)
            for slot, j in enumerate(idx.tolist()):
                waiting.setdefault(j, []).append((next_window, slot))
            next_window += 1
        if i not in waiting:
            continue
        crop = prep.crop(to_rgb(frame))
        del frame
        for k, slot in waiting.pop(i):
            crops[k][slot] = crop
            missing[k] -= 1
            if missing[k] == 0:
                del missing[k]
                yield k, indices.pop(k), crops.pop(k)
    if crops or next_window < total:
        raise BadInputError(video, f"the video ended before frame {min(waiting) if waiting else plan.num_frames} "
                                   f"that window {min(crops) if crops else next_window} needs")


def stream_windows(predictor: Predictor, video: str | Path, plan: WindowPlan, fps: float,
                   top_k: int = 5) -> Iterator[WindowPrediction]:
    """Decode `video` once and yield each window's prediction as soon as its last sampled frame arrives.

    Decoding and cropping (`window_crops`) run in a background thread at most `PREFETCH_WINDOWS`
    windows ahead, overlapping the model; memory stays bounded whatever the video's length. When windows
    overlap, frames they share are encoded once (`SharedFrames`).
    """
    shared = SharedFrames(predictor) if plan.stride < plan.length and predictor.shares_frames() else None
    for k, idx, crops in prefetch(window_crops(predictor.prep, video, plan), PREFETCH_WINDOWS):
        if shared is None:
            out = predictor(crops)
        else:
            out = predictor.window(crops, idx, shared)
            shared.forget_before(plan.bounds(k + 1)[0] if k + 1 < len(plan) else plan.num_frames)
        start, end = plan.bounds(k)
        yield WindowPrediction(
            start_frame=start, end_frame=end, start=start / fps if fps > 0 else 0.0,
            end=end / fps if fps > 0 else 0.0, top_k=predictor.top_k(out.probs, top_k), probs=out.probs,
            frame_indices=idx, attention=out.attention, temporal_weights=out.temporal_weights)


# --- overlay --------------------------------------------------------------------------------------

def _even(v: int) -> int:
    return max(2, v - (v % 2))


def overlay_frames(video: str | Path, windows: Sequence[WindowPrediction], prep: Preprocessing,
                   display_short_side: int = 360) -> Iterator[np.ndarray]:
    """Every frame of `video` (streamed), resized for display, with the nearest window's label and the
    attention of its nearest sampled frame drawn in the crop the model saw."""
    from egoattn.explain.overlay import overlay, put_label

    centres = [(w.start_frame + w.end_frame - 1) / 2 for w in windows]
    for i, frame in enumerate(iter_frames(video)):
        h, w = frame.shape[:2]
        scale = min(1.0, display_short_side / min(h, w))
        dw, dh = _even(round(w * scale)), _even(round(h * scale))
        disp = cv2.resize(frame, (dw, dh), interpolation=cv2.INTER_AREA)
        del frame
        pos = bisect.bisect_left(centres, i)
        k = min((c for c in (pos - 1, pos) if 0 <= c < len(windows)), key=lambda c: abs(centres[c] - i))
        win = windows[k]
        fx, fy, fw, fh = prep.crop_box(h, w)
        x0, y0 = round(fx * dw), round(fy * dh)
        x1, y1 = min(dw, x0 + max(1, round(fw * dw))), min(dh, y0 + max(1, round(fh * dh)))
        if win.attention is not None:
            slot = int(np.argmin(np.abs(win.frame_indices - i)))
            disp[y0:y1, x0:x1] = overlay(np.ascontiguousarray(disp[y0:y1, x0:x1]), win.attention[slot])
        cv2.rectangle(disp, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 1)
        text = f"{win.label} {win.score:.2f}  [{win.start:.1f}-{win.end:.1f} s]"
        yield put_label(disp, text, scale=max(0.4, min(dh, dw) / 600))


# --- one video, many videos -----------------------------------------------------------------------

def predict_video(predictor: Predictor, video: str | Path, window: float | None = None,
                  stride: float | None = None, top_k: int = 5, overlay: str | Path | None = None) -> VideoPrediction:
    """Top-k labels of one video (window=None: the whole video is one clip) or of each window."""
    video = Path(video)
    info = probe_video(video)
    plan = window_plan(info.num_frames, info.fps, window, stride)
    result = VideoPrediction(video=video, num_frames=info.num_frames, fps=info.fps, width=info.width,
                             height=info.height)
    result.windows = sorted(stream_windows(predictor, video, plan, info.fps, top_k), key=lambda w: w.start_frame)
    if overlay is not None:
        write_video(overlay, overlay_frames(video, result.windows, predictor.prep), fps=info.fps or 25.0)
        result.overlay = Path(overlay)
    return result


def list_videos(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given; directories expanded to their video files (by ending, sorted, not recursive)."""
    videos: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                           and not p.name.startswith("."))
            if not found:
                raise BadInputError(path, f"directory holds no video file ({', '.join(VIDEO_SUFFIXES)})")
            videos.extend(found)
        else:
            videos.append(path)
    return videos


def write_timeline(result: VideoPrediction, csv_path: Path, json_path: Path) -> None:
    rows = result.timeline()
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["start", "end", "label", "score"])
    for r in rows:
        writer.writerow([f"{r['start']:.3f}", f"{r['end']:.3f}", r["label"], f"{r['score']:.6f}"])
    write_text_atomic(csv_path, buf.getvalue())
    write_json(json_path, {"video": str(result.video), "fps": result.fps, "num_frames": result.num_frames,
                           "windows": rows})
    result.timeline_csv, result.timeline_json = csv_path, json_path


@dataclass
class PredictReport:
    results: list[VideoPrediction]
    failures: list[tuple[Path, str]]
    out: Path | None


def _unique_stems(videos: Sequence[Path]) -> list[str]:
    """Output names: the stem, or the file name when stems collide (test.mp4 / test.avi), then -2, -3..."""
    counts: dict[str, int] = {}
    for v in videos:
        counts[v.stem] = counts.get(v.stem, 0) + 1
    names, used = [], set()
    for v in videos:
        name = v.stem if counts[v.stem] == 1 else v.name
        unique, n = name, 1
        while unique in used:
            n += 1
            unique = f"{name}-{n}"
        used.add(unique)
        names.append(unique)
    return names


def predict_videos(run: str | Path | Predictor, videos: Sequence[str | Path], window: float | None = None,
                   stride: float | None = None, top_k: int = 5, overlay: str | Path | None = None,
                   out: str | Path | None = None, echo: Any = print, precision: Precision = "32") -> PredictReport:
    """Predict every video (files, or directories of videos); a bad video is reported and skipped.

    Writes OUT/predictions.json and, with a window, OUT/<video>.timeline.csv / .json (OUT defaults to
    ./predictions when a window is given). With several videos, --overlay X.mp4 becomes X-<video>.mp4.
    `precision` applies to a run directory; a Predictor keeps its own.
    """
    predictor = run if isinstance(run, Predictor) else Predictor.from_run(run, precision=precision)
    if top_k < 1:
        raise ConfigError(f"--top-k must be >= 1, got {top_k}")
    window_plan(10**6, 30.0, window, stride)  # option errors before any decoding
    paths = list_videos(videos)
    if out is None and window is not None:
        out = Path("predictions")
    out = Path(out) if out is not None else None
    stems = _unique_stems(paths)
    results: list[VideoPrediction] = []
    failures: list[tuple[Path, str]] = []
    for path, stem in zip(paths, stems):
        target = None
        if overlay is not None:
            o = Path(overlay)
            target = o if len(paths) == 1 else o.with_name(f"{o.stem}-{stem}{o.suffix or '.mp4'}")
        try:
            result = predict_video(predictor, path, window, stride, top_k, target)
        except EgoattnError as e:
            failures.append((path, str(e)))
            echo(f"FAILED {e}")
            continue
        if out is not None and window is not None:
            write_timeline(result, out / f"{stem}.timeline.csv", out / f"{stem}.timeline.json")
        results.append(result)
        _echo_result(result, echo)
    if out is not None:
        write_json(out / "predictions.json", {
            "preprocessing": predictor.prep.to_json(), "precision": predictor.precision, "window": window,
            "stride": stride,
            "videos": [r.summary() | ({"timeline": r.timeline()} if window is not None else {}) for r in results],
            "failures": [{"video": str(p), "error": e} for p, e in failures]})
    if failures:
        echo(f"{len(failures)} of {len(paths)} video(s) failed:")
        for p, e in failures:
            echo(f"  {e}")
    return PredictReport(results, failures, out)


def _echo_result(result: VideoPrediction, echo: Any) -> None:
    if len(result.windows) == 1:
        w = result.windows[0]
        labels = ", ".join(f"{c} {p:.3f}" for c, p in w.top_k)
        echo(f"{result.video}: {labels}")
    else:
        echo(f"{result.video}: {len(result.windows)} windows over {result.num_frames / max(result.fps, 1e-9):.1f} s"
             + (f" -> {result.timeline_csv}" if result.timeline_csv else ""))
        for w in result.windows[:20]:
            echo(f"  {w.start:8.2f} - {w.end:8.2f} s  {w.label} {w.score:.3f}")
        if len(result.windows) > 20:
            echo(f"  ... {len(result.windows) - 20} more windows")
    if result.overlay is not None:
        echo(f"  overlay: {result.overlay}")


__all__ = ["Preprocessing", "Predictor", "SharedFrames", "ClipOutput", "WindowPlan", "window_plan", "WindowPrediction",
           "VideoPrediction", "stream_windows", "window_crops", "prefetch", "overlay_frames", "predict_video", "predict_videos",
           "list_videos", "write_timeline", "PredictReport"]

