"""egoattn prepare --check: each quirk of a source layout or a prepared dataset is reported with its kind."""

from __future__ import annotations

import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from egoattn.cli import app
from egoattn.data.check import Problem, check_dataset, detect_layout, print_problems
from egoattn.data.prepare import PrepareOptions, prepare_dataset
from test_prepare import H, W, frame_image, make_gtea


def kinds(problems: list[Problem]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in problems:
        out.setdefault(p.kind, []).append(Path(p.path.split(":")[0]).name)
    return out


def test_clean_gtea_layout_has_no_problems(tmp_path):
    root = make_gtea(tmp_path / "src")
    assert detect_layout(root) == "gtea61"
    assert check_dataset(root) == []


def test_gtea_quirks_reported_with_their_kind(tmp_path):
    root = make_gtea(tmp_path / "src")
    inst = root / "processed_frames2" / "S1" / "open_jam" / "1"
    (root / "processed_frames2" / ".DS_Store").write_bytes(b"\0")
    cv2.imwrite(str(inst / "rgb" / "rgb0002 (1).png"), frame_image(1))
    (inst / "rgb" / "rgb0003.png").unlink()  # a gap in the numbering
    (root / "processed_frames2" / "S2" / "take_bread" / "1" / "rgb" / "rgb0004.png").write_bytes(b"")
    (root / "flow_x_processed" / "S2" / "open_jam" / "1" / "flow_x_00001.png").unlink()
    bad_cls = root / "processed_frames2" / "S1" / "stir_spoon,cup" / "1" / "rgb"
    bad_cls.mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(bad_cls / f"rgb{i + 1:04d}.png"), frame_image(i))
    (root / "classes.txt").write_text("close_jam\nopen_jam\n")  # take_bread is missing
    found = kinds(check_dataset(root))
    assert found["stray"] == [".DS_Store"]
    assert found["duplicate"] == ["rgb0002 (1).png"]
    assert "rgb" in found["missing_frames"]  # S1/open_jam/1/rgb: frame 3 missing
    assert found["unreadable"] == ["rgb0004.png"]
    # S1/open_jam now has 4 rgb frames but 5 mmaps; S2/open_jam has 3 flow_x for 5 frames and 4 flow_y
    assert sorted(found["count_mismatch"]) == ["1", "1", "mmaps"]
    assert found["bad_class_name"] == ["stir_spoon,cup"]
    assert sorted(found["unknown_label"]) == ["1", "1", "1"]  # take_bread of S1 and S2, stir_spoon,cup
    assert found["missing_file"] == ["1", "1"]  # stir_spoon,cup has no flow_x / flow_y folders


def test_prepared_dataset_quirks(tmp_path):
    root = make_gtea(tmp_path / "src")
    out = tmp_path / "out"
    prepare_dataset(root, out, PrepareOptions(format="gtea61", short_side=24, flow="none", workers=1, progress=False))
    assert detect_layout(out) == "prepared"
    assert check_dataset(out) == []
    # a corrupt zip: flip bytes inside a stored member (CRC fails)
    z = out / "clips" / "S1_open_jam_1.zip"
    data = bytearray(z.read_bytes())
    i = data.find(b"JFIF") + 40
    data[i:i + 50] = bytes(50)
    z.write_bytes(bytes(data))
    # a truncated zip
    z2 = out / "clips" / "S2_open_jam_1.zip"
    z2.write_bytes(z2.read_bytes()[:500])
    (out / "clips" / ".S1_x.zip.tmp.zip").write_bytes(b"partial")
    (out / "classes.txt").write_text("close_jam\nopen jam\ntake_bread\n")
    found = kinds(check_dataset(out))
    assert sorted(found["corrupt_clip"]) == ["S1_open_jam_1.zip", "S2_open_jam_1.zip"]
    assert found["stray"] == [".S1_x.zip.tmp.zip"]
    assert found["bad_class_name"] == ["classes.txt"]
    assert found["unknown_label"] == ["manifest.csv", "manifest.csv"]  # the two open_jam rows


def test_prepared_count_mismatch(tmp_path):
    root = make_gtea(tmp_path / "src", subjects={"S1": ["open_jam"]})
    out = tmp_path / "out"
    prepare_dataset(root, out, PrepareOptions(format="gtea61", short_side=24, flow="none", workers=1, progress=False))
    z = out / "clips" / "S1_open_jam_1.zip"
    with zipfile.ZipFile(z) as src, zipfile.ZipFile(tmp_path / "new.zip", "w") as dst:
        for name in src.namelist():
            if name != "warp/y_000003.png":
                dst.writestr(name, src.read(name))
    (tmp_path / "new.zip").replace(z)
    problems = check_dataset(out)
    assert [p.kind for p in problems] == ["count_mismatch"]
    assert "warp: 4 x vs 3 y" in problems[0].message


def test_video_folders(tmp_path):
    from egoattn.data.video import write_video

    root = tmp_path / "videos"
    (root / "walk fast").mkdir(parents=True)
    write_video(root / "walk fast" / "v_walk_g01_c01.mp4", np.zeros((4, H, W, 3), np.uint8), fps=10)
    (root / "walk fast" / "v_walk_g01_c01 (1).mp4").write_bytes(b"")
    (root / "walk fast" / "broken.mp4").write_text("not a video")
    (root / "walk fast" / "readme.txt").write_text("hi")
    found = kinds(check_dataset(root))
    assert found == {"bad_class_name": ["walk fast"], "duplicate": ["v_walk_g01_c01 (1).mp4"],
                     "unreadable": ["broken.mp4"], "stray": ["readme.txt"]}


def test_print_problems_and_cli_exit_code(tmp_path, capsys):
    root = make_gtea(tmp_path / "src", subjects={"S1": ["open_jam"]})
    runner = CliRunner()
    assert runner.invoke(app, ["prepare", str(root), "--check"]).exit_code == 0
    (root / "processed_frames2" / ".DS_Store").write_bytes(b"\0")
    result = runner.invoke(app, ["prepare", str(root), "--check"])
    assert result.exit_code == 1
    print_problems(root, check_dataset(root))
    text = capsys.readouterr().out
    assert "stray" in text and "1 problem(s)" in text


@pytest.mark.parametrize("fmt", ["gtea61"])
def test_cli_prepare_shards_and_merge(tmp_path, fmt):
    root = make_gtea(tmp_path / "src")
    runner = CliRunner()
    base = ["prepare", str(root), str(tmp_path / "out"), "--format", fmt, "--short-side", "24", "--flow", "none",
            "--workers", "1"]
    for k in (1, 2):
        r = runner.invoke(app, base + ["--shard", f"{k}/2"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["prepare", str(root), str(tmp_path / "out"), "--merge"])
    assert r.exit_code == 0 and "merged: 5 clips" in r.output
    assert check_dataset(tmp_path / "out") == []
    r = runner.invoke(app, base + ["--flow", "raft"])
    assert r.exit_code == 2 and "unknown flow method" in r.output
