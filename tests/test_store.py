"""Manifest, class list, safe paths and the per-clip zip store."""

import zipfile

import numpy as np
import pytest

from egoattn.data.clipstore import ClipReader, ClipWriter
from egoattn.data.manifest import (
    ClipRecord, read_classes, read_manifest, resolve_inside, split_label, split_records,
    write_classes, write_manifest,
)
from egoattn.errors import BadInputError


def _record(i: int, label: str = "take_cup", subject: str = "S1") -> ClipRecord:
    verb, noun = split_label(label)
    return ClipRecord(f"c{i}", f"clips/c{i}.zip", label, verb, noun, subject, 0, 8, 15.0, 8)


def test_manifest_round_trip_and_label_check(tmp_path):
    recs = [_record(0), _record(1, "put_cup", "S2")]
    write_manifest(tmp_path / "manifest.csv", recs)
    assert read_manifest(tmp_path / "manifest.csv", ["take_cup", "put_cup"]) == recs
    with pytest.raises(BadInputError, match=r"manifest.csv:3: label 'put_cup' is not in classes.txt"):
        read_manifest(tmp_path / "manifest.csv", ["take_cup"])


def test_split_label_at_first_underscore():
    assert split_label("take_peanut_butter") == ("take", "peanut_butter")


@pytest.mark.parametrize("text, problem", [
    ("take_cup\ntake_cup\n", "duplicate class name"),
    ("take cup\n", "whitespace"),
    ("take,cup\n", "comma"),
    ("\n\n", "no classes"),
])
def test_bad_class_lists(tmp_path, text, problem):
    (tmp_path / "classes.txt").write_text(text)
    with pytest.raises(BadInputError, match=problem):
        read_classes(tmp_path / "classes.txt")


def test_unicode_class_names_are_allowed(tmp_path):
    write_classes(tmp_path / "classes.txt", ["öffnen_glas", "take_cup"])
    assert read_classes(tmp_path / "classes.txt") == ["öffnen_glas", "take_cup"]


def test_paths_escaping_the_root_are_refused(tmp_path):
    assert resolve_inside(tmp_path, "clips/a.zip") == (tmp_path / "clips/a.zip").resolve()
    for bad in ("../x.zip", "/etc/passwd", "clips/../../x.zip"):
        with pytest.raises(BadInputError, match="escapes the dataset root"):
            resolve_inside(tmp_path, bad)
    assert resolve_inside(tmp_path, "../x.zip", allow_outside=True) == (tmp_path.parent / "x.zip").resolve()


def test_splits():
    recs = [_record(i, subject=s) for i, s in enumerate(["S1", "S2", "S3", "S4", "S2"])]
    train, test = split_records(recs, "gtea61")
    assert {r.subject for r in train} == {"S1", "S3", "S4"} and [r.clip_id for r in test] == ["c1", "c4"]
    train, test = split_records(recs, "loso:S3")
    assert len(train) == 4 and [r.subject for r in test] == ["S3"]
    with pytest.raises(BadInputError, match="unknown split"):
        split_records(recs, "nope")
    with pytest.raises(BadInputError, match="empty side"):
        split_records(recs, "loso:S9")


def test_clip_store_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (5, 24, 32, 3), dtype=np.uint8)
    rgb[:] = rgb.mean(axis=(1, 2), keepdims=True).astype(np.uint8)  # flat colours survive JPEG
    flow = rng.integers(0, 255, (4, 24, 32, 2), dtype=np.uint8)
    motion = rng.integers(0, 255, (5, 24, 32), dtype=np.uint8)
    kp = rng.random((5, 21, 3)).astype(np.float32)
    with ClipWriter(tmp_path / "c.zip", "c", fps=15) as w:
        w.add_rgb(rgb)
        w.add_flow("flow", flow, bound=20, method="dis")
        w.add_gray("motion", motion)
        w.add_array("keypoints", kp)
    r = ClipReader(tmp_path / "c.zip")
    assert r.num_frames == 5 and r.meta["height"] == 24 and r.has("flow") and not r.has("warp")
    assert np.abs(r.read_rgb([4, 0]).astype(int) - rgb[[4, 0]].astype(int)).max() <= 2
    np.testing.assert_array_equal(r.read_flow("flow", [3, 1]), flow[[3, 1]])  # PNG is lossless
    np.testing.assert_array_equal(r.read_gray("motion", [2]), motion[[2]])
    np.testing.assert_array_equal(r.read_array("keypoints"), kp)
    with pytest.raises(BadInputError, match=r"flow frame indices \[4\] out of range"):
        r.read_flow("flow", [4])
    with pytest.raises(BadInputError, match="no 'warp' modality"):
        r.read_flow("warp", [0])


def test_clip_writer_rejects_count_mismatch_and_writes_nothing(tmp_path):
    rgb = np.zeros((5, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="motion has 4 frames, expected 5"):
        with ClipWriter(tmp_path / "c.zip", "c", fps=15) as w:
            w.add_rgb(rgb)
            w.add_gray("motion", np.zeros((4, 8, 8), np.uint8))
            w.close()
    assert list(tmp_path.iterdir()) == []


def test_corrupt_or_missing_clip_is_named(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"not a zip at all")
    with pytest.raises(BadInputError, match=r"bad.zip: corrupt prepared clip"):
        ClipReader(tmp_path / "bad.zip").num_frames
    with pytest.raises(BadInputError, match=r"none.zip: prepared clip not found"):
        ClipReader(tmp_path / "none.zip").num_frames
    with ClipWriter(tmp_path / "c.zip", "c", fps=15) as w:
        w.add_rgb(np.zeros((2, 8, 8, 3), np.uint8))
    with zipfile.ZipFile(tmp_path / "c.zip", "a") as zf:  # a frame that is not an image
        zf.writestr("rgb/000005.jpg", b"garbage")
    r = ClipReader(tmp_path / "c.zip")
    r._meta = {**r.meta, "num_frames": 6}
    with pytest.raises(BadInputError, match=r"undecodable image 'rgb/000005.jpg'"):
        r.read_rgb([5])


def test_bad_input_error_survives_pickling_and_worker_reraise():
    import pickle

    e = pickle.loads(pickle.dumps(BadInputError("a.mp4", "truncated")))
    assert str(e) == "a.mp4: truncated" and e.problem == "truncated"
    assert str(BadInputError("a.mp4: truncated")) == "a.mp4: truncated"  # how DataLoader workers re-raise
