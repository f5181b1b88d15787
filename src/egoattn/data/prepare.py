"""`egoattn prepare`: any source format -> the canonical prepared layout (see ARCHITECTURE.md).

    OUT/classes.txt, OUT/manifest.csv (path = clips/<clip_id>.zip), OUT/prepare.json (the options),
    OUT/skipped.csv (path,problem of the bad inputs skipped with --skip-bad), OUT/clips/<clip_id>.zip

Frames are resized so their short side is `short_side` (aspect kept; anti-aliased: video frames are
area-averaged by the decoder while it converts them to RGB, `video.FrameToRGB`, image frames with
cv2.INTER_AREA) and flow is computed on the resized frames. A clip needs at least MIN_FRAMES = 2 frames (one flow pair).

Resuming: a clip whose zip exists and opens cleanly is not prepared again, so an interrupted run is
simply started again. Each zip carries its manifest row (meta.json "record"), so manifest.csv and
classes.txt are rewritten at the end of every run from all finished clips of the source, including
those of earlier runs and of other shards. A run refuses an OUT prepared with different options.

Sharding (several machines, one shared OUT): `shard="K/N"` prepares every N-th clip of the clip ids
sorted by name, starting with the K-th (1-based). A shard run writes only its own files:
manifest-shard-K-of-N.csv, classes-shard-K-of-N.txt, prepare-shard-K-of-N.json,
skipped-shard-K-of-N.csv and its clips, so two machines never write the same file. Afterwards either
run `merge_shards(OUT)` (`egoattn prepare SOURCE OUT --merge`), which joins the shard manifests and
checks that all N are there, or run once more without a shard, which prepares whatever is missing
and writes the full manifest.

Concurrency: clip zips are written atomically (beside, then renamed), so a reader or a second writer
never sees half a clip; and a lock file (OUT/.prepare.lock, or OUT/.prepare-shard-K-of-N.lock) keeps
two runs of the same shard (or two unsharded runs) from working on one OUT at the same time. A lock
left by a killed process on this host is taken over; otherwise delete it by hand.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import socket
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from egoattn.data.clipstore import ClipWriter
from egoattn.data.manifest import ClipRecord, read_classes, read_manifest, split_label, write_classes, write_manifest
from egoattn.data.sources import SOURCE_FORMATS, SourceClip, list_source
from egoattn.data.workers import one_thread_per_worker, worker_context
from egoattn.errors import BadInputError, ConfigError
from egoattn.fileio import read_json, write_json, write_text_atomic

FLOW_CHOICES = ("dis", "tvl1", "farneback", "none")
MOTION_SOURCES = ("flow", "gt")
MIN_FRAMES = 2
_HINT = " (use --skip-bad to skip bad inputs)"
# Options that change the content of a clip: a resumed run must use the same ones.
_CONTENT_KEYS = ("format", "short_side", "flow", "warp", "motion", "bound", "motion_source", "recompute_flow",
                 "jpeg_quality")


@dataclass
class PrepareOptions:
    """Options of `egoattn prepare`; invalid values raise ConfigError at construction."""

    format: str = "synthetic"
    short_side: int = 256  # 0 = keep the source size
    flow: str = "dis"  # dis | tvl1 | farneback | none (none: no computed flow, warp flow or motion maps)
    warp: bool = True
    motion: bool = True
    bound: float = 20.0
    motion_source: str = "flow"  # flow: motion maps from warp flow (as for real data); gt: synthetic ground truth
    recompute_flow: bool = False  # ignore flow / motion maps that a GTEA61 source already has
    segments: Path | None = None
    split_dir: Path | None = None
    classes: Path | None = None  # explicit class list (one per line); default: the source's own or the sorted union
    frame_fps: float = 30.0  # frame-folder sources carry no frame rate
    workers: int = 0  # 0 = one per core; 1 = in this process
    shard: str | None = None  # "K/N"
    skip_bad: bool = False
    jpeg_quality: int = 90
    progress: bool = True

    def __post_init__(self) -> None:
        if self.format not in SOURCE_FORMATS:
            raise ConfigError(f"unknown format {self.format!r}; choose one of {', '.join(SOURCE_FORMATS)}")
        if self.flow not in FLOW_CHOICES:
            raise ConfigError(f"unknown flow method {self.flow!r}; choose one of {', '.join(FLOW_CHOICES)}")
        if self.motion_source not in MOTION_SOURCES:
            raise ConfigError(f"unknown motion_source {self.motion_source!r}; choose one of {MOTION_SOURCES}")
        if self.motion_source == "gt" and self.format != "synthetic":
            raise ConfigError("motion_source='gt' needs the synthetic format (only it has ground-truth motion)")
        if not isinstance(self.short_side, int) or self.short_side < 0 or 0 < self.short_side < 8:
            raise ConfigError(f"short_side must be 0 (keep) or at least 8 pixels, got {self.short_side!r}")
        if not self.bound > 0:
            raise ConfigError(f"bound must be positive, got {self.bound}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if not self.frame_fps > 0:
            raise ConfigError(f"frame_fps must be positive, got {self.frame_fps}")
        self.shard_index  # validates the shard string

    @property
    def shard_index(self) -> tuple[int, int] | None:
        """(K, N) of "K/N", 1 <= K <= N."""
        if self.shard is None:
            return None
        try:
            k_str, n_str = self.shard.split("/")
            k, n = int(k_str), int(n_str)
        except ValueError:
            raise ConfigError(f"shard must look like K/N (e.g. 1/4), got {self.shard!r}") from None
        if not 1 <= k <= n:
            raise ConfigError(f"shard {self.shard!r}: need 1 <= K <= N")
        return k, n

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class PrepareReport:
    prepared: int = 0  # clips written by this run
    skipped: int = 0  # clips already finished by an earlier run (or another shard)
    bad: list[tuple[str, str]] = field(default_factory=list)  # (path, problem) skipped with skip_bad
    seconds: float = 0.0
    records: list[ClipRecord] = field(default_factory=list)  # the manifest rows written


# --- one clip ------------------------------------------------------------------------------------

def target_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(new_height, new_width) with the short side = short_side, aspect kept (0 = unchanged)."""
    from egoattn.data.video import short_side_size

    return (height, width) if short_side == 0 else short_side_size(height, width, short_side)


def _resize(img: np.ndarray, hw: tuple[int, int], interp: int = cv2.INTER_AREA) -> np.ndarray:
    if img.shape[:2] == hw:
        return img
    return cv2.resize(img, (hw[1], hw[0]), interpolation=interp)


def _read_image(path: Path, flags: int) -> np.ndarray:
    img = cv2.imread(str(path), flags)
    if img is None:
        raise BadInputError(path, "unreadable image (empty, truncated or not an image)")
    return img


def _load_frames(clip: SourceClip, short_side: int) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resized RGB frames (T, H, W, 3), fps and the source (height, width)."""
    frames: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    hw: tuple[int, int] | None = None
    if clip.video is not None:
        from egoattn.data.video import FrameToRGB, iter_decoded, probe_video

        fps = clip.fps or probe_video(clip.video).fps
        to_rgb = FrameToRGB(short_side or None)  # shrinks in the decoder, as `egoattn predict` does
        for f in iter_decoded(clip.video, clip.start, clip.end):
            if size is None:
                size = (f.height, f.width)
                hw = target_size(*size, short_side)
            frames.append(_resize(to_rgb(f), hw))  # a no-op unless frames are upscaled
        if clip.end is not None and len(frames) < clip.end - clip.start:
            raise BadInputError(clip.video, f"decoded only {len(frames)} frames of segment [{clip.start}, {clip.end})")
    else:
        fps = clip.fps or 30.0
        for p in clip.frames:
            f = cv2.cvtColor(_read_image(p, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            if size is None:
                size = f.shape[:2]
                hw = target_size(*size, short_side)
            elif f.shape[:2] != size:
                raise BadInputError(p, f"frame size {f.shape[1]}x{f.shape[0]} differs from the clip's {size[1]}x{size[0]}")
            frames.append(_resize(f, hw))
    if len(frames) < MIN_FRAMES:
        raise BadInputError(clip.source_path, f"clip has {len(frames)} frame(s); at least {MIN_FRAMES} are needed "
                                              "(flow needs a pair of frames)")
    return np.stack(frames), float(fps), size  # type: ignore[return-value]


def _load_existing_flow(clip: SourceClip, src_hw: tuple[int, int], hw: tuple[int, int], bound: float) -> np.ndarray:
    """Stored 8-bit flow images, resized; displacements rescaled to the new pixel size."""
    scale = (hw[1] / src_hw[1], hw[0] / src_hw[0])  # x, y
    out = []
    for px, py in zip(clip.flow_x, clip.flow_y):
        pair = []
        for p, s in ((px, scale[0]), (py, scale[1])):
            u8 = _read_image(p, cv2.IMREAD_GRAYSCALE)
            if u8.shape != tuple(src_hw):
                u8 = cv2.resize(u8, (src_hw[1], src_hw[0]), interpolation=cv2.INTER_AREA)
            f = _resize(u8, hw).astype(np.float32) * (2 * bound / 255.0) - bound
            pair.append(np.rint((np.clip(f * s, -bound, bound) + bound) * (255.0 / (2 * bound))).astype(np.uint8))
        out.append(np.stack(pair, axis=-1))
    return np.stack(out)


def _load_existing_motion(clip: SourceClip, hw: tuple[int, int]) -> np.ndarray:
    maps = []
    for p in clip.motion:
        m = _read_image(p, cv2.IMREAD_GRAYSCALE)  # type: ignore[arg-type]
        if m.max() <= 1:  # some mmaps are stored as 0/1
            m = m * 255
        maps.append(_resize(m.astype(np.uint8), hw))
    return np.stack(maps)


def compute_flows(frames: np.ndarray, method: str, warp: bool, motion: bool, bound: float) -> dict[str, Any]:
    """Indirection over egoattn.data.flow.clip_flows (tests replace it)."""
    from egoattn.data.flow import clip_flows

    return clip_flows(frames, method=method, warp=warp, motion=motion, bound=bound)


def _synthetic_gt(clip: SourceClip, n: int, src_hw: tuple[int, int], hw: tuple[int, int]) -> dict[str, Any]:
    try:
        with np.load(clip.gt, allow_pickle=False) as z:  # type: ignore[arg-type]
            gt = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise BadInputError(clip.gt, f"unreadable ground truth ({e})") from None
    end = clip.start + n
    out: dict[str, Any] = {}
    sx, sy = hw[1] / src_hw[1], hw[0] / src_hw[0]
    for key in ("mask", "motion", "keypoints", "privacy_boxes"):
        if key not in gt:
            continue
        a = gt[key][clip.start:end]
        if len(a) != n:
            raise BadInputError(clip.gt, f"{key} has {len(gt[key])} frames, the video segment needs {end}")
        if key in ("mask", "motion"):
            interp = cv2.INTER_NEAREST if key == "mask" else cv2.INTER_AREA
            out[key] = np.stack([_resize(np.ascontiguousarray(m, dtype=np.uint8), hw, interp) for m in a])
        elif key == "keypoints":
            kp = a.astype(np.float32).copy()
            kp[..., 0] *= sx
            kp[..., 1] *= sy
            out[key] = kp
        else:
            boxes = a.astype(np.float32) * np.array([sx, sy, sx, sy], np.float32)
            out[key] = [[[round(float(v), 2) for v in box] for box in frame] for frame in boxes]
    return out


def prepare_clip(clip: SourceClip, out: Path, options: PrepareOptions) -> ClipRecord:
    """Decode, resize, add flow / warp / motion (and the synthetic ground truth), write clips/<id>.zip."""
    if clip.problem is not None:
        raise BadInputError(clip.source_path, clip.problem)
    frames, fps, src_hw = _load_frames(clip, options.short_side)
    n, hw = len(frames), frames.shape[1:3]
    mods: dict[str, Any] = {}
    if clip.flow_x and not options.recompute_flow:
        mods["warp"] = _load_existing_flow(clip, src_hw, hw, options.bound)
    if clip.motion and not options.recompute_flow:
        mods["motion"] = _load_existing_motion(clip, hw)
    gt = _synthetic_gt(clip, n, src_hw, hw) if clip.gt is not None else {}
    if options.motion_source == "gt":
        if "motion" not in gt:
            raise BadInputError(clip.gt or clip.source_path, "motion_source='gt' but the ground truth has no motion")
        mods["motion"] = gt["motion"]
    if options.flow != "none":
        want_warp = options.warp and "warp" not in mods
        want_motion = options.motion and "motion" not in mods
        flows = compute_flows(frames, options.flow, want_warp, want_motion, options.bound)
        mods["flow"] = flows["flow"]
        if want_warp:
            mods["warp"] = flows["warp"]
        if want_motion:
            mods["motion"] = flows["motion"]
    verb, noun = split_label(clip.label)
    end = (clip.start + n) if clip.video is not None else n
    record = ClipRecord(clip_id=clip.clip_id, path=f"clips/{clip.clip_id}.zip", label=clip.label, verb=verb,
                        noun=noun, subject=clip.subject, start=clip.start, end=end, fps=fps, num_frames=n)
    writer = ClipWriter(out / record.path, clip.clip_id, fps, jpeg_quality=options.jpeg_quality)
    writer.add_rgb(frames)
    for kind in ("flow", "warp"):
        if kind in mods:
            method = options.flow if kind == "flow" or clip.flow_x == () or options.recompute_flow else "source"
            writer.add_flow(kind, mods[kind], options.bound, method)
    if "motion" in mods:
        writer.add_gray("motion", mods["motion"])
    if "mask" in gt:
        writer.add_gray("mask", gt["mask"])
    if "keypoints" in gt:
        writer.add_array("keypoints", gt["keypoints"])
    if "privacy_boxes" in gt:
        writer.add_json("privacy", gt["privacy_boxes"])
    writer.meta["record"] = dataclasses.asdict(record)
    writer.meta["source"] = clip.source_path
    writer.close()
    return record


def finished_record(path: Path) -> ClipRecord | None:
    """The manifest row of a clip zip that opens cleanly and is complete, else None."""
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("meta.json"))
            n_rgb = sum(1 for name in zf.namelist() if name.startswith("rgb/"))
        record = ClipRecord(**meta["record"])
    except (OSError, KeyError, TypeError, ValueError, zipfile.BadZipFile):
        return None
    return record if n_rgb == record.num_frames == meta.get("num_frames") else None


# --- the whole dataset ---------------------------------------------------------------------------

def shard_of(clip_ids: list[str], k: int, n: int) -> set[str]:
    """Round-robin over the sorted clip ids: the K-th of N shards (1-based)."""
    return set(sorted(clip_ids)[k - 1::n])


def _suffix(options: PrepareOptions) -> str:
    s = options.shard_index
    return "" if s is None else f"-shard-{s[0]}-of-{s[1]}"


class _Lock:
    """An exclusive lock file; a lock of a dead process on this host is taken over."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> "_Lock":
        me = {"host": socket.gethostname(), "pid": os.getpid()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                if self._stale():
                    self.path.unlink(missing_ok=True)
                    continue
                raise BadInputError(self.path, "another `egoattn prepare` is writing this dataset "
                                               "(delete the lock file if no such process runs)") from None
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            return self
        raise BadInputError(self.path, "could not take the lock")

    def _stale(self) -> bool:
        try:
            owner = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        if owner.get("host") != socket.gethostname():
            return False
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _check_same_options(out: Path, options: PrepareOptions) -> None:
    mine = options.to_json()
    for path in sorted(out.glob("prepare*.json")):
        try:
            theirs = read_json(path).get("options", {})
        except (BadInputError, AttributeError):
            continue
        diff = [k for k in _CONTENT_KEYS if k in theirs and theirs[k] != mine[k]]
        if diff:
            changes = ", ".join(f"{k}: {theirs[k]!r} -> {mine[k]!r}" for k in diff)
            raise ConfigError(f"{out} was prepared with other options ({changes}); use a new output folder")


def _write_skipped(path: Path, bad: list[tuple[str, str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "problem"])
    w.writerows(bad)
    write_text_atomic(path, buf.getvalue())


def _work(task: tuple[SourceClip, str, PrepareOptions]) -> tuple[str, Any, Any]:
    clip, out, options = task
    try:
        return "ok", prepare_clip(clip, Path(out), options), None
    except BadInputError as e:
        return "bad", str(e.path) if e.path is not None else clip.source_path, e.problem


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("prepare"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)


def prepare_dataset(source: str | Path, out: str | Path, options: PrepareOptions | None = None) -> PrepareReport:
    """Prepare every clip of `source` into `out`; see the module docstring for resume, shards and locks."""
    options = options or PrepareOptions()
    t0 = time.monotonic()
    source, out = Path(source), Path(out)
    if not source.exists():
        raise BadInputError(source, "source not found")
    src = list_source(options.format, source, classes_file=options.classes, segments=options.segments,
                      split_dir=options.split_dir, frame_fps=options.frame_fps)
    ids = [c.clip_id for c in src.clips]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise BadInputError(source, f"duplicate clip ids {dup[:5]}")
    clips = src.clips
    if options.shard_index is not None:
        mine = shard_of(ids, *options.shard_index)
        clips = [c for c in clips if c.clip_id in mine]
    if not options.skip_bad:
        first_bad = next((c for c in clips if c.problem is not None), None)
        if first_bad is not None:
            raise BadInputError(first_bad.source_path, f"{first_bad.problem}{_HINT}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "clips").mkdir(exist_ok=True)
    suffix = _suffix(options)
    report = PrepareReport()
    with _Lock(out / f".prepare{suffix}.lock"):
        _check_same_options(out, options)
        done: dict[str, ClipRecord] = {}
        todo: list[SourceClip] = []
        for c in clips:
            rec = finished_record(out / "clips" / f"{c.clip_id}.zip")
            if rec is not None and c.problem is None:
                done[c.clip_id] = rec
            else:
                todo.append(c)
        report.skipped = len(done)
        workers = options.workers or os.cpu_count() or 1
        workers = max(1, min(workers, len(todo)))
        tasks = [(c, str(out), options) for c in todo]
        with _progress(options.progress) as bar:
            job = bar.add_task("prepare", total=len(clips), completed=len(done))
            if workers == 1:
                results = map(_work, tasks)
                pool = None
            else:
                # forkserver, not fork: a forked OpenCV thread pool can deadlock in the child
                pool = worker_context().Pool(workers, initializer=one_thread_per_worker)
                results = pool.imap_unordered(_work, tasks)
            try:
                for status, value, problem in results:
                    if status == "ok":
                        done[value.clip_id] = value
                        report.prepared += 1
                    elif options.skip_bad:
                        report.bad.append((value, problem))
                    else:
                        raise BadInputError(value, f"{problem}{_HINT}")
                    bar.advance(job)
            finally:
                if pool is not None:
                    pool.terminate()
                    pool.join()
        report.records = sorted(done.values(), key=lambda r: r.clip_id)
        report.seconds = time.monotonic() - t0
        write_classes(out / f"classes{suffix}.txt", src.classes)
        write_manifest(out / f"manifest{suffix}.csv", report.records)
        _write_skipped(out / f"skipped{suffix}.csv", report.bad)
        write_json(out / f"prepare{suffix}.json", {
            "source": str(source), "options": options.to_json(), "min_frames": MIN_FRAMES,
            "clips": len(report.records), "prepared": report.prepared, "already_done": report.skipped,
            "bad": len(report.bad), "seconds": round(report.seconds, 2), "warnings": src.warnings[:1000],
        })
    return report


def merge_shards(out: str | Path) -> PrepareReport:
    """Join the per-shard manifests of OUT into manifest.csv / classes.txt / prepare.json / skipped.csv."""
    out = Path(out)
    found: dict[int, dict[int, Path]] = {}
    for p in out.glob("manifest-shard-*-of-*.csv"):
        parts = p.stem.split("-")  # manifest, shard, K, of, N
        try:
            k, n = int(parts[2]), int(parts[4])
        except (IndexError, ValueError):
            continue
        found.setdefault(n, {})[k] = p
    if not found:
        raise BadInputError(out, "no manifest-shard-K-of-N.csv files to merge")
    if len(found) > 1:
        raise BadInputError(out, f"shard manifests of different shard counts {sorted(found)}; remove the stale ones")
    n, shards = next(iter(found.items()))
    missing = [k for k in range(1, n + 1) if k not in shards]
    if missing:
        raise BadInputError(out, f"shards {missing} of {n} have not finished (no manifest-shard-K-of-{n}.csv)")
    classes = read_classes(out / f"classes-shard-1-of-{n}.txt")
    records: dict[str, ClipRecord] = {}
    bad: list[tuple[str, str]] = []
    for k in range(1, n + 1):
        tag = f"-shard-{k}-of-{n}"
        if read_classes(out / f"classes{tag}.txt") != classes:
            raise BadInputError(out / f"classes{tag}.txt", "differs from the class list of shard 1")
        for r in read_manifest(out / f"manifest{tag}.csv", classes):
            if finished_record(out / r.path) is None:
                raise BadInputError(out / r.path, "listed in a shard manifest but missing or incomplete")
            records[r.clip_id] = r
        skipped = out / f"skipped{tag}.csv"
        if skipped.is_file():
            with skipped.open(newline="", encoding="utf-8") as f:
                bad += [(row["path"], row["problem"]) for row in csv.DictReader(f)]
    info = read_json(out / f"prepare-shard-1-of-{n}.json")
    info["options"]["shard"] = None
    info.update(clips=len(records), merged_from=n, bad=len(bad))
    report = PrepareReport(records=sorted(records.values(), key=lambda r: r.clip_id), bad=bad)
    write_classes(out / "classes.txt", classes)
    write_manifest(out / "manifest.csv", report.records)
    _write_skipped(out / "skipped.csv", bad)
    write_json(out / "prepare.json", info)
    return report
