"""`egoattn prepare --check PATH`: list what is wrong with a prepared dataset or a source layout.

The layout is detected: a prepared dataset (manifest.csv + clips/), a synthetic source (synth.json),
a GTEA61 frame layout (frames/ or processed_frames[2]/), or class folders of videos. Nothing is
changed; every finding is a `Problem(path, kind, message)` with kind one of PROBLEM_KINDS.
"""

from __future__ import annotations

import csv
import json
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2

from egoattn.data.clipstore import FLOW_KINDS
from egoattn.data.manifest import BAD_CLASS_NAME, MANIFEST_FIELDS
from egoattn.data.sources import (
    VIDEO_EXTS, detect_gtea_layout, gtea_flow_dirs, gtea_instances, gtea_rgb_dir, is_duplicate,
    is_hidden, list_frames, natural_key,
)
from egoattn.errors import BadInputError

PROBLEM_KINDS = (
    "unreadable",  # an image or video that cannot be decoded
    "missing_frames",  # gaps in the frame numbering, or an empty frame folder
    "count_mismatch",  # frames vs flow vs motion-map counts disagree
    "duplicate",  # 'name (1).png' copies
    "stray",  # .DS_Store, hidden files, leftover temporary files, files of an unexpected type
    "unknown_label",  # a label not in classes.txt
    "bad_class_name",  # class names with commas, whitespace or slashes
    "corrupt_clip",  # a prepared clip zip that does not open or fails its CRC check
    "missing_file",  # a file the manifest or layout names but that does not exist
    "malformed",  # a manifest / classes file that cannot be parsed
)


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str
    message: str


def detect_layout(path: Path) -> str:
    """prepared | synthetic | gtea61 | videos."""
    path = Path(path)
    if not path.is_dir():
        raise BadInputError(path, "not a folder")
    if (path / "manifest.csv").is_file() and (path / "clips").is_dir():
        return "prepared"
    if (path / "synth.json").is_file():
        return "synthetic"
    if detect_gtea_layout(path) is not None:
        return "gtea61"
    return "videos"


def check_dataset(path: str | Path) -> list[Problem]:
    """Everything wrong with the dataset at `path` (prepared or source layout); [] if nothing."""
    path = Path(path)
    layout = detect_layout(path)
    if layout == "prepared":
        return _check_prepared(path)
    if layout == "synthetic":
        return _check_synthetic(path)
    if layout == "gtea61":
        return _check_gtea(path)
    return _check_videos(path)


# --- helpers -------------------------------------------------------------------------------------

def _class_name_problems(names: list[tuple[str, str]]) -> list[Problem]:
    """names: (class name, where)."""
    return [Problem(where, "bad_class_name", f"class name {name!r} contains a comma, whitespace or a slash")
            for name, where in names if not name or BAD_CLASS_NAME.search(name)]


def _read_class_lines(path: Path) -> tuple[list[str], list[Problem]]:
    if not path.is_file():
        return [], [Problem(str(path), "missing_file", "classes.txt not found")]
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    problems = _class_name_problems([(n, f"{path}:{i + 1}") for i, n in enumerate(names)])
    for name, count in Counter(names).items():
        if count > 1:
            problems.append(Problem(str(path), "malformed", f"class {name!r} is listed {count} times"))
    return names, problems


def _stray_walk(root: Path) -> list[Problem]:
    """Hidden files (.DS_Store ...) and leftover temporary files anywhere under root."""
    out = []
    for p in sorted(root.rglob("*"), key=lambda p: natural_key(str(p))):
        if is_hidden(p) and not p.name.startswith(".prepare"):
            out.append(Problem(str(p), "stray", "hidden or temporary file (not data; ignored by prepare)"))
    return out


def _unreadable_images(files: list[Path]) -> list[Problem]:
    out = []
    for p in files:
        if p.stat().st_size == 0 or cv2.imread(str(p), cv2.IMREAD_UNCHANGED) is None:
            out.append(Problem(str(p), "unreadable", "image cannot be decoded (empty, truncated or not an image)"))
    return out


def _frame_folder(folder: Path, what: str) -> tuple[list[Path], list[Problem]]:
    listing = list_frames(folder)
    problems = [Problem(str(d), "duplicate", "duplicate copy of a frame (left out by prepare)")
                for d in listing.duplicates]
    problems += [Problem(str(o), "stray", f"unexpected file in a {what} folder") for o in listing.others
                 if not o.is_dir() or o.name not in ("rgb", "mmaps")]
    if not listing.files:
        problems.append(Problem(str(folder), "missing_frames", f"no {what} images"))
    elif listing.gaps():
        g = listing.gaps()
        problems.append(Problem(str(folder), "missing_frames",
                                f"{len(g)} {what} frame(s) missing from the numbering: {g[:10]}"))
    problems += _unreadable_images(listing.files)
    return listing.files, problems


# --- layouts -------------------------------------------------------------------------------------

def _check_gtea(root: Path) -> list[Problem]:
    layout = detect_gtea_layout(root)
    assert layout is not None
    problems = _stray_walk(root)
    classes_file = root / "classes.txt"
    known = None
    if classes_file.is_file():
        names, p = _read_class_lines(classes_file)
        known, problems = set(names), problems + p
    class_names = sorted({cls for _, cls, _ in gtea_instances(layout)})
    problems += _class_name_problems([(c, str(layout.frames / "*" / c)) for c in class_names])
    for subject, cls, inst in gtea_instances(layout):
        if known is not None and cls not in known:
            problems.append(Problem(str(inst), "unknown_label", f"class {cls!r} is not in {classes_file}"))
        rgb, p = _frame_folder(gtea_rgb_dir(inst), "rgb")
        problems += p
        n = len(rgb)
        fx, fy = gtea_flow_dirs(layout, inst)
        if fx is not None:
            counts = {}
            for d, name in ((fx, "flow_x"), (fy, "flow_y")):
                if not d.is_dir():
                    problems.append(Problem(str(d), "missing_file", f"{name} folder missing for this instance"))
                    continue
                files, p = _frame_folder(d, name)
                problems += p
                counts[name] = len(files)
            for name, c in counts.items():
                if c not in (n - 1, n):
                    problems.append(Problem(str(fx if name == "flow_x" else fy), "count_mismatch",
                                            f"{c} {name} images for {n} rgb frames (expected {n - 1})"))
            if len(counts) == 2 and counts["flow_x"] != counts["flow_y"]:
                problems.append(Problem(str(fx), "count_mismatch",
                                        f"{counts['flow_x']} flow_x vs {counts['flow_y']} flow_y images"))
        mdir = inst / "mmaps"
        if mdir.is_dir():
            maps, p = _frame_folder(mdir, "mmaps")
            problems += [q for q in p if q.kind != "missing_frames"]
            if len(maps) != n:
                problems.append(Problem(str(mdir), "count_mismatch", f"{len(maps)} motion maps for {n} rgb frames"))
    return problems


def _check_videos(root: Path) -> list[Problem]:
    from egoattn.data.video import probe_video

    problems = _stray_walk(root)
    classes = [d for d in sorted(root.iterdir()) if d.is_dir() and not is_hidden(d)]
    if not classes:
        return problems + [Problem(str(root), "missing_file", "no class folders")]
    problems += _class_name_problems([(d.name, str(d)) for d in classes])
    for d in classes:
        for v in sorted(d.iterdir(), key=lambda p: natural_key(p.name)):
            if is_hidden(v):
                continue
            if v.is_dir() or v.suffix.lower() not in VIDEO_EXTS:
                problems.append(Problem(str(v), "stray", "not a video file"))
            elif is_duplicate(v):
                problems.append(Problem(str(v), "duplicate", "duplicate copy of a video (left out by prepare)"))
            else:
                try:
                    probe_video(v)
                except BadInputError as e:
                    problems.append(Problem(str(v), "unreadable", e.problem))
    return problems


def _check_synthetic(root: Path) -> list[Problem]:
    from egoattn.data.video import probe_video

    problems = _stray_walk(root)
    names, p = _read_class_lines(root / "classes.txt")
    problems += p
    rows, p = _manifest_rows(root / "manifest.csv", set(names))
    problems += p
    for row in rows:
        video, gt = root / row["path"], root / "gt" / f"{row['clip_id']}.npz"
        if not video.is_file():
            problems.append(Problem(str(video), "missing_file", "video named in manifest.csv not found"))
            continue
        try:
            info = probe_video(video)
        except BadInputError as e:
            problems.append(Problem(str(video), "unreadable", e.problem))
            continue
        if not gt.is_file():
            problems.append(Problem(str(gt), "missing_file", "ground truth not found"))
        elif info.num_frames:
            try:
                import numpy as np

                with np.load(gt, allow_pickle=False) as z:
                    for key in ("mask", "motion", "keypoints"):
                        if key in z.files and len(z[key]) != info.num_frames:
                            problems.append(Problem(str(gt), "count_mismatch",
                                                    f"{key} has {len(z[key])} frames, the video {info.num_frames}"))
            except (OSError, ValueError, zipfile.BadZipFile) as e:
                problems.append(Problem(str(gt), "unreadable", f"cannot read ground truth ({e})"))
    return problems


def _manifest_rows(path: Path, known: set[str]) -> tuple[list[dict], list[Problem]]:
    if not path.is_file():
        return [], [Problem(str(path), "missing_file", "manifest.csv not found")]
    problems: list[Problem] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(MANIFEST_FIELDS) - set(reader.fieldnames or ())
        if missing:
            return [], [Problem(str(path), "malformed", f"missing columns {sorted(missing)}")]
        rows = []
        for line, row in enumerate(reader, start=2):
            if row["label"] not in known:
                problems.append(Problem(f"{path}:{line}", "unknown_label",
                                        f"label {row['label']!r} is not in classes.txt"))
            rows.append(row)
    return rows, problems


def _check_clip_zip(path: Path, row: dict) -> list[Problem]:
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
            if bad is not None:
                return [Problem(str(path), "corrupt_clip", f"member {bad!r} fails its CRC check")]
            meta = json.loads(zf.read("meta.json"))
            names = zf.namelist()
    except FileNotFoundError:
        return [Problem(str(path), "missing_file", "clip named in manifest.csv not found")]
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, EOFError) as e:
        return [Problem(str(path), "corrupt_clip", f"cannot read the clip zip ({e})")]
    problems = []
    n = int(meta.get("num_frames", -1))
    if str(n) != str(row.get("num_frames")):
        problems.append(Problem(str(path), "count_mismatch", f"manifest says {row.get('num_frames')} frames, "
                                                              f"the clip has {n}"))
    for kind in meta.get("modalities", []):
        if kind == "rgb":
            count, expected = sum(x.startswith("rgb/") for x in names), n
        elif kind in FLOW_KINDS:
            count, expected = sum(x.startswith(f"{kind}/x_") for x in names), n - 1
            ys = sum(x.startswith(f"{kind}/y_") for x in names)
            if ys != count:
                problems.append(Problem(str(path), "count_mismatch", f"{kind}: {count} x vs {ys} y images"))
        elif kind in ("motion", "mask"):
            count, expected = sum(x.startswith(f"{kind}/") for x in names), n
        else:
            continue
        if count != expected:
            problems.append(Problem(str(path), "count_mismatch", f"{kind} has {count} images, expected {expected}"))
    return problems


def _check_prepared(root: Path) -> list[Problem]:
    problems = []
    for p in sorted((root / "clips").iterdir(), key=lambda p: natural_key(p.name)):
        if is_hidden(p) or p.suffix != ".zip":
            problems.append(Problem(str(p), "stray", "not a clip (a leftover temporary file or foreign file)"))
    for p in sorted(root.iterdir()):
        if is_hidden(p) and not p.name.startswith(".prepare"):
            problems.append(Problem(str(p), "stray", "hidden file"))
    names, p = _read_class_lines(root / "classes.txt")
    problems += p
    rows, p = _manifest_rows(root / "manifest.csv", set(names))
    problems += p
    listed = set()
    for row in rows:
        listed.add(Path(row["path"]).name)
        problems += _check_clip_zip(root / row["path"], row)
    for z in sorted((root / "clips").glob("*.zip")):
        if z.name not in listed and not is_hidden(z):
            problems.append(Problem(str(z), "stray", "clip not listed in manifest.csv"))
    return problems


def print_problems(path: str | Path, problems: list[Problem]) -> None:
    """A table of the problems and a one-line summary."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if problems:
        table = Table(title=f"problems in {path}", show_lines=False)
        table.add_column("kind", style="bold red")
        table.add_column("path", overflow="fold")
        table.add_column("problem", overflow="fold")
        for p in problems:
            table.add_row(p.kind, p.path, p.message)
        console.print(table)
        counts = Counter(p.kind for p in problems)
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        console.print(f"{len(problems)} problem(s) in {path} ({summary})")
    else:
        console.print(f"no problems found in {path}")


__all__ = ["Problem", "PROBLEM_KINDS", "check_dataset", "detect_layout", "print_problems"]
