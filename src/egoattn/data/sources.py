"""Readers of the source formats that `egoattn prepare` accepts; each returns clips + a class list.

Formats (`list_source(fmt, root, ...)`):

- `synthetic`: the output of `egoattn synth` (manifest.csv, classes.txt, videos/, gt/).
- `gtea61` / `gtea61-course`: frame folders, one layout reader for both (detected from the folders):
    reference (Ego-RNN README / prepareGTEA61Dataset.py):
        ROOT/frames/<subject>/<class>/<instance>/[rgb/]image_00001.jpg
        ROOT/flow_x/<subject>/<class>/<instance>/flow_x_00001.jpg, ROOT/flow_y/... (same nesting)
    course (the processed GTEA61 used by the student repos of seeds 001/004):
        ROOT/processed_frames2/<subject>/<class>/<instance>/rgb/rgb0001.png, .../mmaps/map0001.png
        ROOT/flow_x_processed/<subject>/<class>/<instance>/flow_x_00001.png, ROOT/flow_y_processed/...
  The flows of these datasets are warp flows (dense_flow), so they are stored as the `warp`
  modality; mmaps are stored as `motion` maps.
- `videos`: class folders of videos (UCF101/HMDB51 style) ROOT/<class>/<video>. Optional UCF101
  split files in `split_dir` (classInd.txt, trainlist01.txt, testlist01.txt): the subject of each
  video becomes "train" or "test", so the split is `loso:test`; videos listed in neither are left out.
  Without split files the subject is the UCF group id (v_X_g08_c01 -> "g08"), else "S1".
- `segments`: long videos plus a CSV with columns video,start,end,label[,subject]; `video` is relative
  to ROOT; start/end are 0-based FRAME indices, end exclusive (integers; seconds are not accepted).

Class ids always come from a list: an explicit classes file if given, else the SORTED UNION of the
labels over all subjects (never one subject's folder order), so a class missing for one subject
cannot shift the others. Problems of a single clip (missing flow frames, a segment past the video's
end, an unknown label) are recorded in `SourceClip.problem`, so that `--skip-bad` can skip that clip
and prepare the rest; structural problems (no such folder, malformed CSV header) raise at once.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from egoattn.data.manifest import read_classes, read_manifest
from egoattn.errors import BadInputError

SOURCE_FORMATS = ("synthetic", "gtea61", "gtea61-course", "videos", "segments")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv")
DEFAULT_FRAME_FPS = 30.0  # frame folders carry no frame rate; GTEA was filmed at 30 fps

_FRAME_DIRS = ("processed_frames2", "processed_frames", "frames")
_FLOW_DIRS = (("flow_x_processed", "flow_y_processed"), ("flow_x", "flow_y"))
_DUPLICATE = re.compile(r" \(\d+\)$")  # "rgb0001 (1).png": a copy made by a file manager
_NUMBER = re.compile(r"(\d+)")
_GROUP = re.compile(r"_(g\d+)_", re.IGNORECASE)


class SourceWarning(UserWarning):
    """A quirk of the source that was worked around (a duplicate file left out, a motion map filled in)."""


@dataclass(frozen=True)
class SourceClip:
    """One clip to prepare. Either `video` (+ start/end frames) or `frames` (image files) is set."""

    clip_id: str
    label: str
    subject: str
    video: Path | None = None
    frames: tuple[Path, ...] = ()
    start: int = 0
    end: int | None = None  # exclusive; None = to the end of the video
    fps: float | None = None  # None = read from the video
    gt: Path | None = None  # synthetic ground truth (.npz)
    flow_x: tuple[Path, ...] = ()  # existing (warp) flow images of a frame-folder source
    flow_y: tuple[Path, ...] = ()
    motion: tuple[Path | None, ...] = ()  # existing motion maps (None = missing, filled from a neighbour)
    problem: str | None = None  # known defect: preparing this clip raises BadInputError(where, problem)
    where: str = ""  # the file or CSV line the problem is about

    @property
    def source_path(self) -> str:
        """The file a user would look at for this clip."""
        if self.where:
            return self.where
        if self.video is not None:
            return str(self.video)
        return str(self.frames[0].parent) if self.frames else self.clip_id


@dataclass
class Source:
    clips: list[SourceClip]
    classes: list[str]
    format: str
    warnings: list[str] = field(default_factory=list)


# --- file listing helpers (shared with check.py) -------------------------------------------------

def natural_key(name: str) -> list:
    """Sort key so that frame_2 comes before frame_10."""
    return [int(t) if t.isdigit() else t.lower() for t in _NUMBER.split(name)]


def is_hidden(path: Path) -> bool:
    """.DS_Store, ._resource forks, .thumbnails: never data."""
    return path.name.startswith(".")


def is_duplicate(path: Path) -> bool:
    """'name (1).png'-style copies."""
    return bool(_DUPLICATE.search(path.stem))


def frame_number(path: Path) -> int | None:
    nums = _NUMBER.findall(path.stem)
    return int(nums[-1]) if nums else None


@dataclass
class FrameListing:
    files: list[Path]  # naturally sorted, duplicates and hidden files excluded
    duplicates: list[Path]
    hidden: list[Path]
    others: list[Path]  # non-image files

    def gaps(self) -> list[int]:
        """Frame numbers missing between the first and the last file."""
        nums = sorted(n for n in (frame_number(p) for p in self.files) if n is not None)
        if not nums:
            return []
        present = set(nums)
        return [n for n in range(nums[0], nums[-1] + 1) if n not in present]


def list_frames(folder: Path, exts: Sequence[str] = IMAGE_EXTS) -> FrameListing:
    listing = FrameListing([], [], [], [])
    if not folder.is_dir():
        return listing
    for p in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
        if is_hidden(p):
            listing.hidden.append(p)
        elif p.is_dir() or p.suffix.lower() not in exts:
            listing.others.append(p)
        elif is_duplicate(p):
            listing.duplicates.append(p)
        else:
            listing.files.append(p)
    return listing


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders, naturally sorted."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and not is_hidden(p)), key=lambda p: natural_key(p.name))


def safe_label(name: str) -> str:
    """A folder name as a class name: commas become '+', whitespace '-' (GTEA61 has 'stir_spoon,cup')."""
    return re.sub(r"\s+", "-", name.strip()).replace(",", "+").replace("/", "-").replace("\\", "-")


def safe_id(*parts: str) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9_+.=-]+", "-", p).strip("-") for p in parts)


def _warn(messages: list[str], text: str) -> None:
    messages.append(text)
    warnings.warn(text, SourceWarning, stacklevel=3)


def _class_list(labels: Iterable[str], classes_file: Path | None) -> list[str]:
    """The explicit list if given (labels not in it are a per-clip problem), else the sorted union."""
    if classes_file is not None:
        return [safe_label(c) for c in read_classes(classes_file)]
    return sorted(set(labels))


def _mark_unknown(clips: list[SourceClip], classes: list[str], classes_file: Path | None) -> list[SourceClip]:
    known = set(classes)
    out = []
    for c in clips:
        if c.problem is None and c.label not in known:
            c = _replace(c, problem=f"label {c.label!r} is not in the class list {classes_file}")
        out.append(c)
    return out


def _unsafe_path(root: Path, relpath: str) -> str | None:
    """The problem of a path named in a source file that leaves the source folder (../, absolute), else None.

    The check is on the text, not on resolved links: a symlink the owner put into the source folder
    (a video on another disk) is fine; a manifest or CSV line pointing elsewhere is not.
    """
    base = os.path.abspath(root)
    target = os.path.normpath(os.path.join(base, relpath))
    if target != base and not target.startswith(base.rstrip(os.sep) + os.sep):
        return f"{relpath}: path escapes the source folder {base}"
    return None


def _replace(clip: SourceClip, **changes) -> SourceClip:
    import dataclasses

    return dataclasses.replace(clip, **changes)


# --- synthetic -----------------------------------------------------------------------------------

def list_synthetic(root: Path, classes_file: Path | None = None) -> Source:
    root = Path(root)
    classes = read_classes(classes_file or root / "classes.txt")
    records = read_manifest(root / "manifest.csv")
    clips = []
    for r in records:
        gt = root / "gt" / f"{r.clip_id}.npz"
        problem, where = _unsafe_path(root, r.path), f"{root / 'manifest.csv'}: clip {r.clip_id!r}"
        if problem is None and (not r.clip_id or r.clip_id.startswith(".") or any(c in r.clip_id for c in "/\\")):
            problem = f"clip id {r.clip_id!r} is not a plain file name (it names the clip's output file)"
        if problem is None and not gt.is_file():
            problem, where = "ground truth not found", str(gt)
        clips.append(SourceClip(
            clip_id=r.clip_id, label=r.label, subject=r.subject, video=root / r.path, start=r.start,
            end=r.end, fps=r.fps, gt=gt, problem=problem, where="" if problem is None else where,
        ))
    return Source(_mark_unknown(clips, classes, classes_file or root / "classes.txt"), classes, "synthetic")


# --- GTEA61 frame folders ------------------------------------------------------------------------

@dataclass
class GteaLayout:
    frames: Path  # ROOT/frames or ROOT/processed_frames[2]
    flow_x: Path | None
    flow_y: Path | None
    name: str  # "reference" or "course"


def detect_gtea_layout(root: Path) -> GteaLayout | None:
    root = Path(root)
    frames = next((root / d for d in _FRAME_DIRS if (root / d).is_dir()), None)
    if frames is None:
        return None
    fx = fy = None
    for dx, dy in _FLOW_DIRS:
        if (root / dx).is_dir() or (root / dy).is_dir():
            fx, fy = root / dx, root / dy
            break
    name = "reference" if frames.name == "frames" else "course"
    return GteaLayout(frames, fx, fy, name)


def gtea_instances(layout: GteaLayout) -> list[tuple[str, str, Path]]:
    """(subject, class folder name, instance folder) for every instance under the frames folder."""
    out = []
    for subject in subdirs(layout.frames):
        for cls in subdirs(subject):
            for inst in subdirs(cls):
                out.append((subject.name, cls.name, inst))
    return out


def gtea_rgb_dir(inst: Path) -> Path:
    return inst / "rgb" if (inst / "rgb").is_dir() else inst


def gtea_flow_dirs(layout: GteaLayout, inst: Path) -> tuple[Path | None, Path | None]:
    if layout.flow_x is None or layout.flow_y is None:
        return None, None
    rel = inst.relative_to(layout.frames)
    return layout.flow_x / rel, layout.flow_y / rel


def list_gtea61(root: Path, classes_file: Path | None = None, fps: float = DEFAULT_FRAME_FPS,
                require_course: bool = False) -> Source:
    root = Path(root)
    layout = detect_gtea_layout(root)
    if layout is None:
        raise BadInputError(root, f"not a GTEA61 layout: none of {list(_FRAME_DIRS)} found")
    if require_course and layout.name != "course":
        raise BadInputError(root, "format gtea61-course expects ROOT/processed_frames2 (or processed_frames)")
    notes: list[str] = []
    clips = []
    for subject, cls_name, inst in gtea_instances(layout):
        label = safe_label(cls_name)
        clip_id = safe_id(subject, label, inst.name)
        rgb = list_frames(gtea_rgb_dir(inst))
        for d in rgb.duplicates:
            _warn(notes, f"{d}: duplicate file left out")
        problem = where = None
        frames = tuple(rgb.files)
        if not frames:
            problem, where = "no frames found", str(gtea_rgb_dir(inst))
        elif rgb.gaps():
            problem, where = f"missing frames {rgb.gaps()[:10]}", str(gtea_rgb_dir(inst))
        fx_dir, fy_dir = gtea_flow_dirs(layout, inst)
        fx: tuple[Path, ...] = ()
        fy: tuple[Path, ...] = ()
        if problem is None and fx_dir is not None and (fx_dir.is_dir() or fy_dir.is_dir()):
            lx, ly = list_frames(fx_dir), list_frames(fy_dir)
            for d in lx.duplicates + ly.duplicates:
                _warn(notes, f"{d}: duplicate file left out")
            n = len(frames)
            if not lx.files or not ly.files:
                problem, where = "missing flow frames (flow_x or flow_y folder empty or absent)", str(fx_dir)
            elif lx.gaps() or ly.gaps():
                gx, gy = lx.gaps(), ly.gaps()
                problem = f"missing flow frames: flow_x {gx[:10]}, flow_y {gy[:10]}"
                where = str(fx_dir if gx else fy_dir)
            elif len(lx.files) != len(ly.files):
                problem, where = f"missing flow frames: {len(lx.files)} flow_x vs {len(ly.files)} flow_y", str(fx_dir)
            elif len(lx.files) not in (n - 1, n):
                what = "extra" if len(lx.files) > n else "missing"
                problem = f"{what} flow frames: {len(lx.files)} flow images for {n} rgb frames (expected {n - 1})"
                where = str(fx_dir)
            else:
                fx, fy = tuple(lx.files[: n - 1]), tuple(ly.files[: n - 1])
        motion: tuple[Path | None, ...] = ()
        mdir = inst / "mmaps"
        if problem is None and mdir.is_dir():
            motion = _match_motion_maps(frames, list_frames(mdir), notes)
        clips.append(SourceClip(
            clip_id=clip_id, label=label, subject=subject, frames=frames, fps=fps, flow_x=fx, flow_y=fy,
            motion=motion, problem=problem, where=where or "",
        ))
    if not clips:
        raise BadInputError(layout.frames, "no <subject>/<class>/<instance> folders found")
    classes = _class_list((c.label for c in clips), classes_file)
    return Source(_mark_unknown(clips, classes, classes_file), classes, "gtea61", notes)


def _match_motion_maps(frames: Sequence[Path], maps: FrameListing, notes: list[str]) -> tuple[Path | None, ...]:
    """Motion map per rgb frame, matched by frame number; a missing map is taken from its nearest neighbour
    (the course dataset lacks some mmaps; its loaders did the same)."""
    for d in maps.duplicates:
        _warn(notes, f"{d}: duplicate file left out")
    if not maps.files:
        return ()
    by_num = {frame_number(p): p for p in maps.files}
    out: list[Path | None] = [by_num.get(frame_number(f)) for f in frames]
    missing = sum(m is None for m in out)
    if missing == len(out):  # numbering does not line up: match by position
        out = [maps.files[min(i, len(maps.files) - 1)] for i in range(len(frames))]
        missing = max(0, len(frames) - len(maps.files))
    if missing:
        _warn(notes, f"{maps.files[0].parent}: {missing} motion maps missing, filled from the nearest frame")
        have = [i for i, m in enumerate(out) if m is not None]
        out = [m if m is not None else out[min(have, key=lambda j: abs(j - i))] for i, m in enumerate(out)]
    return tuple(out)


# --- class folders of videos ---------------------------------------------------------------------

def _read_ucf_split(split_dir: Path) -> tuple[dict[str, str], list[str] | None]:
    """{"Class/video.avi": "train"|"test"} from trainlist01.txt/testlist01.txt, and classInd.txt if present."""
    split_dir = Path(split_dir)
    train, test = split_dir / "trainlist01.txt", split_dir / "testlist01.txt"
    if not train.is_file() or not test.is_file():
        raise BadInputError(split_dir, "expected UCF101 split files trainlist01.txt and testlist01.txt")
    assign: dict[str, str] = {}
    for path, side in ((train, "train"), (test, "test")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                assign[line.split()[0].replace("\\", "/")] = side
    classes = None
    ind = split_dir / "classInd.txt"
    if ind.is_file():
        rows = [line.split() for line in ind.read_text(encoding="utf-8").splitlines() if line.strip()]
        try:
            classes = [safe_label(name) for _, name in sorted(rows, key=lambda r: int(r[0]))]
        except (ValueError, IndexError):
            raise BadInputError(ind, "expected lines '<id> <class>'") from None
    return assign, classes


def subject_of(video_name: str) -> str:
    m = _GROUP.search(video_name)
    return m.group(1).lower() if m else "S1"


def list_videos(root: Path, classes_file: Path | None = None, split_dir: Path | None = None) -> Source:
    root = Path(root)
    if not root.is_dir():
        raise BadInputError(root, "source folder not found")
    assign, split_classes = _read_ucf_split(split_dir) if split_dir is not None else ({}, None)
    notes: list[str] = []
    clips = []
    for cls in subdirs(root):
        for video in sorted(cls.iterdir(), key=lambda p: natural_key(p.name)):
            if is_hidden(video) or video.is_dir() or video.suffix.lower() not in VIDEO_EXTS:
                continue
            if is_duplicate(video):
                _warn(notes, f"{video}: duplicate file left out")
                continue
            subject = subject_of(video.stem)
            if split_dir is not None:
                side = assign.get(f"{cls.name}/{video.name}")
                if side is None:
                    continue
                subject = side
            label = safe_label(cls.name)
            clips.append(SourceClip(clip_id=safe_id(label, video.stem), label=label, subject=subject, video=video))
    if not clips:
        raise BadInputError(root, f"no videos ({', '.join(VIDEO_EXTS)}) in <class>/ folders")
    if classes_file is None and split_classes is not None:
        classes = split_classes
    else:
        classes = _class_list((c.label for c in clips), classes_file)
    return Source(_mark_unknown(clips, classes, classes_file or split_dir), classes, "videos", notes)


# --- segments of long videos ---------------------------------------------------------------------

SEGMENT_FIELDS = ("video", "start", "end", "label")


def list_segments(root: Path, csv_path: Path | None = None, classes_file: Path | None = None) -> Source:
    """Segments CSV: video,start,end,label[,subject]; start/end are frame indices (end exclusive)."""
    from egoattn.data.video import probe_video

    root = Path(root)
    csv_path = Path(csv_path) if csv_path is not None else root / "segments.csv"
    if not csv_path.is_file():
        raise BadInputError(csv_path, "segments CSV not found (pass --segments)")
    frames_in: dict[Path, int | str] = {}
    clips = []
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(SEGMENT_FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise BadInputError(csv_path, f"missing columns {sorted(missing)} (need video,start,end,label[,subject])")
        for line, row in enumerate(reader, start=2):
            where = f"{csv_path}:{line}"
            video = root / (row["video"] or "").strip()
            label = safe_label(row["label"] or "")
            subject = (row.get("subject") or "S1").strip() or "S1"
            problem = _unsafe_path(root, (row["video"] or "").strip())
            try:
                start, end = int(row["start"]), int(row["end"])
            except (TypeError, ValueError):
                start, end = 0, 0
                problem = problem or f"start/end must be integer frame indices, got {row['start']!r}, {row['end']!r}"
            if problem is None and start < 0:
                problem = f"segment start {start} is negative"
            if problem is None and end <= start:
                problem = f"segment end {end} is not after its start {start}"
            if problem is None and not label:
                problem = "empty label"
            if problem is None:
                if video not in frames_in:
                    try:
                        frames_in[video] = probe_video(video).num_frames
                    except BadInputError as e:
                        frames_in[video] = e.problem
                n = frames_in[video]
                if isinstance(n, str):
                    problem = f"video {video}: {n}"
                elif end > n:
                    problem = f"segment [{start}, {end}) goes beyond the end of {video.name} ({n} frames)"
            clip_id = safe_id(video.stem, str(start), str(end))
            clips.append(SourceClip(clip_id=clip_id, label=label, subject=subject, video=video, start=start,
                                    end=end, problem=problem, where=where))
    if not clips:
        raise BadInputError(csv_path, "no segments listed")
    ids = [c.clip_id for c in clips]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise BadInputError(csv_path, f"duplicate segments {dup[:5]}")
    classes = _class_list((c.label for c in clips if c.problem is None), classes_file)
    return Source(_mark_unknown(clips, classes, classes_file), classes, "segments")


def list_source(fmt: str, root: str | Path, classes_file: Path | None = None, segments: Path | None = None,
                split_dir: Path | None = None, frame_fps: float = DEFAULT_FRAME_FPS) -> Source:
    """Dispatch to the reader of `fmt` (one of SOURCE_FORMATS)."""
    root = Path(root)
    if fmt == "synthetic":
        return list_synthetic(root, classes_file)
    if fmt in ("gtea61", "gtea61-course"):
        return list_gtea61(root, classes_file, fps=frame_fps, require_course=fmt == "gtea61-course")
    if fmt == "videos":
        return list_videos(root, classes_file, split_dir)
    if fmt == "segments":
        return list_segments(root, segments, classes_file)
    raise BadInputError(None, f"unknown source format {fmt!r} (one of {', '.join(SOURCE_FORMATS)})")
