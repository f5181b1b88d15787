"""The canonical dataset description: manifest.csv (one row per clip) and classes.txt.

Class ids always come from the explicit classes.txt, never from folder sorting, so a class missing
for one subject cannot shift the labels of the others.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from egoattn.errors import BadInputError
from egoattn.fileio import write_text_atomic

MANIFEST_FIELDS = ("clip_id", "path", "label", "verb", "noun", "subject", "start", "end", "fps", "num_frames")
BAD_CLASS_NAME = re.compile(r"[\s,/\\]")  # whitespace, comma, slash: not allowed in class names


@dataclass(frozen=True)
class ClipRecord:
    """One clip of a prepared dataset. `path` is relative to the dataset root."""

    clip_id: str
    path: str
    label: str
    verb: str
    noun: str
    subject: str
    start: int  # first source frame (inclusive)
    end: int  # last source frame (exclusive)
    fps: float
    num_frames: int


def split_label(label: str) -> tuple[str, str]:
    """verb_noun(s) -> (verb, nouns), split at the first underscore (the GTEA convention)."""
    verb, _, noun = label.partition("_")
    return verb, noun


def check_class_name(name: str, where: str | Path | None = None) -> str:
    """A class name must be non-empty and free of whitespace, commas and path separators."""
    if not name:
        raise BadInputError(where, "empty class name")
    if BAD_CLASS_NAME.search(name):
        raise BadInputError(where, f"class name {name!r} contains whitespace, a comma or a slash")
    return name


def read_classes(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "classes.txt not found")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise BadInputError(path, "no classes listed")
    seen: set[str] = set()
    for i, name in enumerate(names):
        check_class_name(name, f"{path}:{i + 1}")
        if name in seen:
            raise BadInputError(path, f"duplicate class name {name!r} at line {i + 1}")
        seen.add(name)
    return names


def write_classes(path: str | Path, classes: Sequence[str]) -> None:
    for name in classes:
        check_class_name(name, path)
    if len(set(classes)) != len(classes):
        raise BadInputError(path, "duplicate class names")
    write_text_atomic(path, "".join(f"{c}\n" for c in classes))


def read_manifest(path: str | Path, classes: Sequence[str] | None = None) -> list[ClipRecord]:
    """Read manifest.csv; with `classes`, every label must be one of them."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "manifest.csv not found")
    known = set(classes) if classes is not None else None
    records: list[ClipRecord] = []
    ids: set[str] = set()
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(MANIFEST_FIELDS) - set(reader.fieldnames or ())
        if missing:
            raise BadInputError(path, f"missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            try:
                rec = ClipRecord(
                    clip_id=row["clip_id"], path=row["path"], label=row["label"], verb=row["verb"],
                    noun=row["noun"], subject=row["subject"], start=int(row["start"]), end=int(row["end"]),
                    fps=float(row["fps"]), num_frames=int(row["num_frames"]),
                )
            except (TypeError, ValueError) as e:
                raise BadInputError(where, f"malformed row ({e})") from None
            if known is not None and rec.label not in known:
                raise BadInputError(where, f"label {rec.label!r} is not in classes.txt")
            if rec.clip_id in ids:
                raise BadInputError(where, f"duplicate clip_id {rec.clip_id!r}")
            ids.add(rec.clip_id)
            records.append(rec)
    return records


def write_manifest(path: str | Path, records: Iterable[ClipRecord]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    for rec in records:
        writer.writerow(dataclasses.asdict(rec))
    write_text_atomic(path, buf.getvalue())


def resolve_inside(root: str | Path, relpath: str, allow_outside: bool = False) -> Path:
    """Join a manifest path to the dataset root, refusing paths that escape it (../, absolute)."""
    root = Path(root).resolve()
    candidate = (root / relpath).resolve()
    if not allow_outside and root != candidate and root not in candidate.parents:
        raise BadInputError(relpath, f"path escapes the dataset root {root} (pass allow_outside to permit)")
    return candidate


# --- splits -------------------------------------------------------------------------------------

def _subject_number(subject: str) -> int:
    digits = re.sub(r"\D", "", subject)
    if not digits:
        raise BadInputError(None, f"subject {subject!r} has no number (needed by the fpvo split)")
    return int(digits)


def split_records(records: Sequence[ClipRecord], split: str) -> tuple[list[ClipRecord], list[ClipRecord]]:
    """Return (train, test) clips for a named split.

    - `gtea61`: train S1, S3, S4; test S2 (the fixed GTEA61 split).
    - `loso:SUBJECT`: leave one subject out (test on SUBJECT, train on the rest).
    - `fpvo`: FPV-O protocol of seed 000 (train subjects 4-12, validate on 1-3).
    - `all`: every clip in both (for prediction or feature extraction only).
    """
    if split == "gtea61":
        test_subjects = {"S2"}
        train = [r for r in records if r.subject in {"S1", "S3", "S4"}]
        test = [r for r in records if r.subject in test_subjects]
    elif split.startswith("loso:"):
        held = split.split(":", 1)[1]
        train = [r for r in records if r.subject != held]
        test = [r for r in records if r.subject == held]
    elif split == "fpvo":
        train = [r for r in records if 4 <= _subject_number(r.subject) <= 12]
        test = [r for r in records if 1 <= _subject_number(r.subject) <= 3]
    elif split == "all":
        train, test = list(records), list(records)
    else:
        raise BadInputError(None, f"unknown split {split!r} (gtea61, loso:SUBJECT, fpvo, all)")
    if not train or not test:
        subjects = sorted({r.subject for r in records})
        raise BadInputError(None, f"split {split!r} leaves an empty side; subjects present: {subjects}")
    return train, test
