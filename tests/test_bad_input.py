"""Bad inputs: a BadInputError naming the file and the problem; with skip_bad a row in skipped.csv
while the good clips are still prepared."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import av
import numpy as np
import pytest

import paths

from egoattn.data.prepare import PrepareOptions, prepare_dataset
from egoattn.data.video import write_video
from egoattn.errors import BadInputError
from test_prepare import make_gtea

REAL = paths.REAL / "videos"


def small_video(path: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, rng.integers(0, 256, (n, 48, 64, 3), np.uint8), fps=15.0)
    return path


def undecodable_mp4(path: Path) -> Path:
    """A well-formed MP4 index whose frame data is zeroed: it opens, but no frame decodes."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=15, options={"threads": "1"})
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for _ in range(8):
            for p in s.encode(av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), np.uint8), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    data = bytearray(path.read_bytes())
    i = data.find(b"mdat") + 4
    data[i:] = bytes(len(data) - i)
    path.write_bytes(bytes(data))
    return path


# --- each case: build a source with one good and one bad clip -> (source, options, bad path, problem regex)

def case_zero_byte(tmp):
    small_video(tmp / "src" / "good" / "ok.mp4")
    bad = tmp / "src" / "bad" / "empty.mp4"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"")
    return tmp / "src", {"format": "videos"}, bad, "zero-byte file"


def case_truncated(tmp):
    small_video(tmp / "src" / "good" / "ok.mp4")
    bad = tmp / "src" / "bad" / "cut.avi"
    bad.parent.mkdir(parents=True)
    data = (REAL / "test.avi").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return tmp / "src", {"format": "videos"}, bad, "truncated video"


def case_not_a_video(tmp):
    small_video(tmp / "src" / "good" / "ok.mp4")
    bad = tmp / "src" / "bad" / "notes.mp4"
    bad.parent.mkdir(parents=True)
    bad.write_text("these are my notes, not a video\n" * 10)
    return tmp / "src", {"format": "videos"}, bad, "not a video file"


def case_no_decodable_frame(tmp):
    small_video(tmp / "src" / "good" / "ok.mp4")
    (tmp / "src" / "bad").mkdir(parents=True)
    bad = undecodable_mp4(tmp / "src" / "bad" / "zeroed.mp4")
    return tmp / "src", {"format": "videos"}, bad, r"corrupt video: decoding failed after 0 frames"


def _segments(tmp, rows: str, classes: str | None = None):
    small_video(tmp / "src" / "long.mp4", n=8)
    csv_path = tmp / "src" / "segments.csv"
    csv_path.write_text("video,start,end,label,subject\nlong.mp4,0,4,take_cup,S1\n" + rows)
    extra = {"format": "segments"}
    if classes is not None:
        (tmp / "classes.txt").write_text(classes)
        extra["classes"] = tmp / "classes.txt"
    return tmp / "src", extra, csv_path


def case_too_short(tmp):
    src, extra, csv_path = _segments(tmp, "long.mp4,3,4,take_cup,S1\n")
    return src, extra, f"{csv_path}:3", r"1 frame\(s\); at least 2 are needed"


def case_beyond_end(tmp):
    src, extra, csv_path = _segments(tmp, "long.mp4,4,50,take_cup,S1\n")
    return src, extra, f"{csv_path}:3", r"segment \[4, 50\) goes beyond the end of long.mp4 \(8 frames\)"


def case_end_before_start(tmp):
    src, extra, csv_path = _segments(tmp, "long.mp4,6,3,take_cup,S1\n")
    return src, extra, f"{csv_path}:3", "segment end 3 is not after its start 6"


def case_unknown_label(tmp):
    src, extra, csv_path = _segments(tmp, "long.mp4,4,8,juggle_cup,S1\n", classes="take_cup\nput_cup\n")
    return src, extra, f"{csv_path}:3", "label 'juggle_cup' is not in the class list"


def case_missing_flow_frame(tmp):
    root = make_gtea(tmp / "src", subjects={"S1": ["open_jam", "take_bread"]})
    flow_dir = root / "flow_x_processed" / "S1" / "take_bread" / "1"
    (flow_dir / "flow_x_00002.png").unlink()
    return root, {"format": "gtea61"}, flow_dir, r"missing flow frames: flow_x \[2\]"


CASES = {f.__name__[5:]: f for f in (case_zero_byte, case_truncated, case_not_a_video, case_no_decodable_frame,
                                     case_too_short, case_beyond_end, case_end_before_start, case_unknown_label,
                                     case_missing_flow_frame)}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_named_and_skippable(tmp_path, name):
    source, extra, bad_path, problem = CASES[name](tmp_path)
    options = dict(short_side=32, flow="none", workers=1, progress=False, **extra)
    with pytest.raises(BadInputError, match=problem) as err:
        prepare_dataset(source, tmp_path / "out", PrepareOptions(**options))
    assert str(bad_path) in str(err.value)

    report = prepare_dataset(source, tmp_path / "out2", PrepareOptions(skip_bad=True, **options))
    assert report.prepared == 1 and len(report.records) == 1  # the good clip
    with (tmp_path / "out2" / "skipped.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["path"] == str(bad_path)
    assert re.search(problem, rows[0]["problem"])
    manifest = (tmp_path / "out2" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 2  # header + the good clip


def test_clips_prepared_before_a_bad_one_stay(tmp_path):
    """Without skip_bad the run stops at the bad video; clips finished before it stay on disk."""
    src = tmp_path / "src"
    small_video(src / "a_good" / "ok.mp4")  # class folders are processed in sorted order
    (src / "b_bad").mkdir()
    undecodable_mp4(src / "b_bad" / "zeroed.mp4")
    with pytest.raises(BadInputError, match="zeroed.mp4"):
        prepare_dataset(src, tmp_path / "out", PrepareOptions(format="videos", short_side=32, flow="none",
                                                              workers=1, progress=False))
    assert [p.name for p in (tmp_path / "out" / "clips").iterdir()] == ["a_good_ok.zip"]


def test_segments_csv_must_use_frame_indices(tmp_path):
    src, extra, csv_path = _segments(tmp_path, "long.mp4,0.5,2.5,take_cup,S1\n")
    with pytest.raises(BadInputError, match=r"segments.csv:3: start/end must be integer frame indices"):
        prepare_dataset(src, tmp_path / "out", PrepareOptions(flow="none", workers=1, progress=False, **extra))
