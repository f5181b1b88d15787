"""egoattn prepare: source layouts -> prepared clips, labels by the global class list, resume, shards."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

import paths

from egoattn.data import prepare as prep
from egoattn.data.clipstore import ClipReader
from egoattn.data.manifest import read_classes, read_manifest
from egoattn.data.prepare import PrepareOptions, merge_shards, prepare_dataset, target_size
from egoattn.data.sources import SourceWarning, natural_key
from egoattn.errors import BadInputError, ConfigError

REAL = paths.REAL / "videos"
H, W = 48, 64


# --- fixture builders (also used by test_bad_input.py and test_check.py) -------------------------

def frame_image(i: int, h: int = H, w: int = W) -> np.ndarray:
    """A textured frame with a bright square that moves 2 px right per frame (BGR uint8)."""
    rng = np.random.default_rng(0)
    img = (rng.integers(0, 60, (h, w, 1)) + np.zeros((1, 1, 3), int)).astype(np.uint8)
    x = 8 + 2 * i
    img[16:32, x:x + 12] = (40, 200, 250)
    return img


def make_gtea(root: Path, layout: str = "course", subjects: dict | None = None, n: int = 5,
              flow_value: tuple[int, int] = (191, 128), mmaps: bool = True) -> Path:
    """A tiny GTEA61 tree. course: processed_frames2/S/c/i/{rgb,mmaps} + flow_[xy]_processed;
    reference: frames/S/c/i/image_00000.jpg + flow_x/flow_y."""
    subjects = subjects or {"S1": ["close_jam", "open_jam", "take_bread"], "S2": ["open_jam", "take_bread"]}
    for subject, classes in subjects.items():
        for cls in classes:
            rel = Path(subject) / cls / "1"
            if layout == "course":
                rgb_dir = root / "processed_frames2" / rel / "rgb"
                fx, fy = root / "flow_x_processed" / rel, root / "flow_y_processed" / rel
                names = [f"rgb{i + 1:04d}.png" for i in range(n)]
            else:
                rgb_dir = root / "frames" / rel
                fx, fy = root / "flow_x" / rel, root / "flow_y" / rel
                names = [f"image_{i:05d}.jpg" for i in range(n)]
            for d in (rgb_dir, fx, fy):
                d.mkdir(parents=True, exist_ok=True)
            ext = ".png" if layout == "course" else ".jpg"
            for i, name in enumerate(names):
                cv2.imwrite(str(rgb_dir / name), frame_image(i))
            for i in range(n - 1):
                cv2.imwrite(str(fx / f"flow_x_{i + 1:05d}{ext}"), np.full((H, W), flow_value[0], np.uint8))
                cv2.imwrite(str(fy / f"flow_y_{i + 1:05d}{ext}"), np.full((H, W), flow_value[1], np.uint8))
            if layout == "course" and mmaps:
                mdir = rgb_dir.parent / "mmaps"
                mdir.mkdir(exist_ok=True)
                for i in range(n):
                    m = np.zeros((H, W), np.uint8)
                    m[16:32, 8 + 2 * i:20 + 2 * i] = 1  # 0/1 maps, as in some course copies
                    cv2.imwrite(str(mdir / f"map{i + 1:04d}.png"), m)
    return root


def opts(**kw) -> PrepareOptions:
    base = dict(format="gtea61", short_side=24, flow="none", workers=1, progress=False)
    base.update(kw)
    return PrepareOptions(**base)


def fake_flows(frames, method, warp, motion, bound):
    """Stand-in for clip_flows: constant flow (so tests do not depend on the flow module's speed)."""
    t, h, w = frames.shape[:3]
    out = {"flow": np.full((t - 1, h, w, 2), 128, np.uint8)}
    if warp:
        out["warp"] = np.full((t - 1, h, w, 2), 130, np.uint8)
    if motion:
        out["motion"] = np.full((t, h, w), 7, np.uint8)
    return out


# --- options -------------------------------------------------------------------------------------

def test_options_reject_unknown_values():
    with pytest.raises(ConfigError, match="format"):
        PrepareOptions(format="kinetics")
    with pytest.raises(ConfigError, match="flow"):
        PrepareOptions(flow="raft")
    with pytest.raises(ConfigError, match="K/N"):
        PrepareOptions(shard="2")
    with pytest.raises(ConfigError, match="1 <= K <= N"):
        PrepareOptions(shard="3/2")
    with pytest.raises(ConfigError, match="synthetic"):
        PrepareOptions(format="videos", motion_source="gt")
    assert PrepareOptions(shard="2/3").shard_index == (2, 3)


def test_target_size_keeps_aspect():
    assert target_size(48, 64, 24) == (24, 32)
    assert target_size(1080, 1920, 128) == (128, 228)
    assert target_size(256, 340, 0) == (256, 340)


def test_natural_sort_key():
    names = ["frame_10.png", "frame_2.png", "frame_1.png"]
    assert sorted(names, key=natural_key) == ["frame_1.png", "frame_2.png", "frame_10.png"]


# --- GTEA61 layouts --------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["course", "reference"])
def test_gtea_layouts_labels_by_global_class_list(tmp_path, layout):
    root = make_gtea(tmp_path / "src", layout)
    (root / ("processed_frames2" if layout == "course" else "frames") / ".DS_Store").write_bytes(b"\0\1")
    report = prepare_dataset(root, tmp_path / "out", opts())
    classes = read_classes(tmp_path / "out" / "classes.txt")
    # sorted union over subjects: S2 has no close_jam, yet its open_jam keeps id 1
    assert classes == ["close_jam", "open_jam", "take_bread"]
    recs = {r.clip_id: r for r in read_manifest(tmp_path / "out" / "manifest.csv", classes)}
    assert report.prepared == 5 and len(recs) == 5 and report.bad == []
    assert classes.index(recs["S2_open_jam_1"].label) == 1
    assert recs["S2_open_jam_1"].subject == "S2" and recs["S2_open_jam_1"].verb == "open"
    r = ClipReader(tmp_path / "out" / recs["S1_close_jam_1"].path)
    assert r.num_frames == 5 and r.meta["height"] == 24 and r.meta["width"] == 32
    # the source's warp flow is stored; displacements rescaled with the frame: u8 191 at 64 px wide
    # = +9.96 px; at 32 px wide 4.98 px -> u8 round((4.98 + 20) * 255 / 40) = 159
    warp = r.read_flow("warp", range(4))
    assert warp.shape == (4, 24, 32, 2)
    assert abs(int(np.median(warp[..., 0])) - 159) <= 1 and abs(int(np.median(warp[..., 1])) - 128) <= 1
    assert not r.has("flow")  # flow="none": nothing computed
    if layout == "course":  # 0/1 mmaps are stored as 0/255 motion maps
        m = r.read_gray("motion", [0])
        assert set(np.unique(m)) <= set(range(256)) and m.max() == 255
    else:
        assert not r.has("motion")


def test_explicit_classes_file_keeps_order_and_flags_unknown(tmp_path):
    root = make_gtea(tmp_path / "src")
    (tmp_path / "classes.txt").write_text("take_bread\nopen_jam\nclose_jam\nstir_cup\n")
    prepare_dataset(root, tmp_path / "out", opts(classes=tmp_path / "classes.txt"))
    assert read_classes(tmp_path / "out" / "classes.txt") == ["take_bread", "open_jam", "close_jam", "stir_cup"]


def test_duplicates_hidden_files_and_natural_order(tmp_path):
    rgb = tmp_path / "src" / "processed_frames2" / "S1" / "pour_water" / "1" / "rgb"
    rgb.mkdir(parents=True)
    for i in range(1, 13):  # unpadded names: lexical order would put frame_10 after frame_1
        cv2.imwrite(str(rgb / f"frame_{i}.png"), np.full((H, W, 3), 20 * i, np.uint8))
    cv2.imwrite(str(rgb / "frame_3 (1).png"), np.full((H, W, 3), 255, np.uint8))
    (rgb / ".DS_Store").write_bytes(b"junk")
    with pytest.warns(SourceWarning, match=r"frame_3 \(1\)\.png"):
        report = prepare_dataset(tmp_path / "src", tmp_path / "out", opts())
    assert report.prepared == 1
    r = ClipReader(tmp_path / "out" / "clips" / "S1_pour_water_1.zip")
    assert r.num_frames == 12  # the duplicate and .DS_Store are left out
    means = r.read_rgb(range(12)).reshape(12, -1).mean(1)
    assert np.allclose(means, 20 * np.arange(1, 13), atol=2)


def test_flow_computed_on_resized_frames(tmp_path, monkeypatch):
    seen = []

    def spy(frames, method, warp, motion, bound):
        seen.append((frames.shape, method, warp, motion))
        return fake_flows(frames, method, warp, motion, bound)

    monkeypatch.setattr(prep, "compute_flows", spy)
    root = make_gtea(tmp_path / "src", subjects={"S1": ["open_jam"]})
    prepare_dataset(root, tmp_path / "out", opts(flow="dis"))
    # the source has warp flow and motion maps: only plain flow is computed, on 24x32 frames
    assert seen == [((5, 24, 32, 3), "dis", False, False)]
    seen.clear()
    prepare_dataset(root, tmp_path / "out2", opts(flow="tvl1", recompute_flow=True))
    assert seen == [((5, 24, 32, 3), "tvl1", True, True)]
    r = ClipReader(tmp_path / "out2" / "clips" / "S1_open_jam_1.zip")
    assert r.read_flow("warp", [0]).max() == 130 and r.read_gray("motion", [4]).max() == 7


def test_real_flow_module_on_frames(tmp_path):
    root = make_gtea(tmp_path / "src", subjects={"S1": ["open_jam"]}, n=4)
    prepare_dataset(root, tmp_path / "out", opts(flow="dis", short_side=48, recompute_flow=True))
    r = ClipReader(tmp_path / "out" / "clips" / "S1_open_jam_1.zip")
    assert r.has("flow") and r.has("warp") and r.has("motion")
    flow = r.read_flow("flow", range(3)).astype(np.float32) * 40 / 255 - 20
    # the square moves +2 px per frame in x: the flow inside it is about +2
    assert 1.0 < np.median(flow[:, 20:28, 14:20, 0]) < 3.0


# --- resume, shards, interruption ----------------------------------------------------------------

def test_resume_prepares_nothing_new(tmp_path):
    root = make_gtea(tmp_path / "src")
    first = prepare_dataset(root, tmp_path / "out", opts())
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "clips").iterdir()}
    second = prepare_dataset(root, tmp_path / "out", opts())
    assert (first.prepared, first.skipped) == (5, 0)
    assert (second.prepared, second.skipped) == (0, 5)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "out" / "clips").iterdir()} == mtimes
    assert len(read_manifest(tmp_path / "out" / "manifest.csv")) == 5
    with pytest.raises(ConfigError, match="short_side"):
        prepare_dataset(root, tmp_path / "out", opts(short_side=32))


def test_shards_then_merge_equal_unsharded(tmp_path):
    root = make_gtea(tmp_path / "src")
    prepare_dataset(root, tmp_path / "full", opts())
    a = prepare_dataset(root, tmp_path / "sharded", opts(shard="1/2"))
    with pytest.raises(BadInputError, match=r"shards \[2\] of 2"):
        merge_shards(tmp_path / "sharded")
    b = prepare_dataset(root, tmp_path / "sharded", opts(shard="2/2"))
    assert (a.prepared, b.prepared) == (3, 2)  # round-robin over the 5 sorted clip ids
    assert not {r.clip_id for r in a.records} & {r.clip_id for r in b.records}
    assert (tmp_path / "sharded" / "manifest-shard-1-of-2.csv").is_file()
    assert not (tmp_path / "sharded" / "manifest.csv").exists()  # shards never write the shared files
    merge_shards(tmp_path / "sharded")
    for name in ("manifest.csv", "classes.txt"):
        assert (tmp_path / "sharded" / name).read_text() == (tmp_path / "full" / name).read_text()
    # a final unsharded run instead of merge: nothing left to do, same manifest
    final = prepare_dataset(root, tmp_path / "sharded", opts())
    assert final.prepared == 0 and final.skipped == 5
    assert (tmp_path / "sharded" / "manifest.csv").read_text() == (tmp_path / "full" / "manifest.csv").read_text()


def test_interrupted_run_leaves_only_complete_zips(tmp_path, monkeypatch):
    root = make_gtea(tmp_path / "src")
    calls = {"n": 0}
    real_close = prep.ClipWriter.close

    def flaky_close(self):
        calls["n"] += 1
        if calls["n"] == 3:  # die while the third clip's zip is being written
            with zipfile.ZipFile(self.path.parent / ".partial.tmp.zip", "w"):
                pass
            os.remove(self.path.parent / ".partial.tmp.zip")
            raise KeyboardInterrupt
        real_close(self)

    monkeypatch.setattr(prep.ClipWriter, "close", flaky_close)
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(root, tmp_path / "out", opts())
    zips = sorted((tmp_path / "out" / "clips").iterdir())
    assert len(zips) == 2 and all(prep.finished_record(z) is not None for z in zips)
    assert not (tmp_path / "out" / "manifest.csv").exists()
    assert not (tmp_path / "out" / ".prepare.lock").exists()  # the lock is released
    monkeypatch.setattr(prep.ClipWriter, "close", real_close)
    again = prepare_dataset(root, tmp_path / "out", opts())
    assert (again.prepared, again.skipped) == (3, 2)


def test_interrupted_writer_leaves_no_partial_zip(tmp_path, monkeypatch):
    """An exception inside the atomic write (after bytes went to disk) leaves no file behind."""
    root = make_gtea(tmp_path / "src", subjects={"S1": ["open_jam"]})

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", boom)
    with pytest.raises(RuntimeError):
        prepare_dataset(root, tmp_path / "out", opts())
    assert list((tmp_path / "out" / "clips").iterdir()) == []


def test_lock_blocks_a_second_writer(tmp_path):
    root = make_gtea(tmp_path / "src", subjects={"S1": ["open_jam"]})
    out = tmp_path / "out"
    out.mkdir()
    (out / ".prepare.lock").write_text('{"host": "elsewhere", "pid": 1}')
    with pytest.raises(BadInputError, match="another `egoattn prepare`"):
        prepare_dataset(root, out, opts())
    # a lock left by a dead process on this host is taken over
    import json
    import socket

    (out / ".prepare.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": 2 ** 22 + 12345}))
    assert prepare_dataset(root, out, opts()).prepared == 1


def test_parallel_workers_match_serial(tmp_path):
    root = make_gtea(tmp_path / "src")
    prepare_dataset(root, tmp_path / "serial", opts())
    prepare_dataset(root, tmp_path / "parallel", opts(workers=2))
    assert (tmp_path / "parallel" / "manifest.csv").read_text() == (tmp_path / "serial" / "manifest.csv").read_text()


# --- real videos -----------------------------------------------------------------------------------

REAL_COUNTS = {"demo.mp4": 280, "test.mp4": 300, "test.avi": 164, "demo_skeleton.mp4": 72}


@pytest.mark.slow
def test_real_videos_class_folders(tmp_path):
    src = tmp_path / "src"
    for cls, names in {"cooking": ["demo.mp4", "test.mp4"], "walking": ["test.avi", "demo_skeleton.mp4"]}.items():
        (src / cls).mkdir(parents=True)
        for name in names:
            (src / cls / name).symlink_to(REAL / name)
    report = prepare_dataset(src, tmp_path / "out", PrepareOptions(format="videos", short_side=128, flow="dis",
                                                                   workers=2, progress=False))
    assert report.prepared == 4 and report.bad == []
    recs = read_manifest(tmp_path / "out" / "manifest.csv")
    by_id = {r.clip_id: r for r in recs}
    assert by_id["cooking_demo"].num_frames == 280 and by_id["cooking_test"].num_frames == 300
    assert by_id["walking_test"].num_frames == 164 and by_id["walking_demo_skeleton"].num_frames == 72
    assert by_id["cooking_demo"].fps == pytest.approx(28, abs=0.5)
    r = ClipReader(tmp_path / "out" / by_id["walking_demo_skeleton"].path)
    assert (r.meta["height"], r.meta["width"]) == (128, 228)
    assert r.has("flow") and r.has("warp") and r.has("motion")


def test_segments_on_a_real_video(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "long.avi").symlink_to(REAL / "test.avi")
    (src / "segments.csv").write_text("video,start,end,label,subject\n"
                                      "long.avi,0,6,apply_makeup,S1\nlong.avi,150,164,apply_makeup,S2\n")
    report = prepare_dataset(src, tmp_path / "out", PrepareOptions(format="segments", short_side=64, flow="none",
                                                                   workers=1, progress=False))
    recs = {r.clip_id: r for r in report.records}
    assert set(recs) == {"long_0_6", "long_150_164"}
    assert (recs["long_0_6"].num_frames, recs["long_150_164"].num_frames) == (6, 14)
    assert (recs["long_150_164"].start, recs["long_150_164"].end) == (150, 164)
    # the segment's frames are the video's frames 150..163, shrunk by the decoder (as predict does)
    from egoattn.data.video import iter_frames

    ref = np.stack(list(iter_frames(REAL / "test.avi", 150, 164, short_side=64)))[[0, 13]]
    assert ref.shape == (2, 64, 85, 3)
    got = ClipReader(tmp_path / "out" / recs["long_150_164"].path).read_rgb([0, 13])
    assert np.abs(got.astype(int) - ref.astype(int)).mean() < 4  # JPEG error only
    full = np.stack(list(iter_frames(REAL / "test.avi", 150, 164)))[[0, 13]]
    area = np.stack([cv2.resize(f, (85, 64), interpolation=cv2.INTER_AREA) for f in full])
    assert np.abs(got.astype(int) - area.astype(int)).mean() < 5  # and close to INTER_AREA on full frames


# --- synthetic source ------------------------------------------------------------------------------

def make_synthetic(root: Path, n: int = 6, clips: tuple[str, ...] = ("c0", "c1")) -> Path:
    """A hand-made synthetic source (the layout of `egoattn synth`) with known ground truth."""
    from egoattn.data.manifest import ClipRecord, write_classes, write_manifest
    from egoattn.data.video import write_video

    (root / "videos").mkdir(parents=True)
    (root / "gt").mkdir()
    records = []
    for k, cid in enumerate(clips):
        frames = np.stack([cv2.cvtColor(frame_image(i), cv2.COLOR_BGR2RGB) for i in range(n)])
        write_video(root / "videos" / f"{cid}.mp4", frames, fps=15.0)
        mask = np.zeros((n, H, W), np.uint8)
        mask[:, 16:32, 8:24] = 1
        motion = np.zeros((n, H, W), np.uint8)
        motion[:, 16:32, 8:24] = 200
        kp = np.zeros((n, 21, 3), np.float32)
        kp[:, :, 0], kp[:, :, 1], kp[:, :, 2] = 40.0, 20.0, 1.0
        boxes = np.tile(np.array([8, 4, 24, 20], np.float32), (n, 1, 1))
        np.savez_compressed(root / "gt" / f"{cid}.npz", mask=mask, motion=motion, keypoints=kp,
                            privacy_boxes=boxes, homography=np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)))
        label = ("take_cup", "put_cup")[k % 2]
        records.append(ClipRecord(cid, f"videos/{cid}.mp4", label, *label.split("_"), f"S{k + 1}", 0, n, 15.0, n))
    write_classes(root / "classes.txt", ["take_cup", "put_cup"])
    write_manifest(root / "manifest.csv", records)
    return root


@pytest.mark.parametrize("motion_source", ["flow", "gt"])
def test_synthetic_ground_truth_resized(tmp_path, monkeypatch, motion_source):
    monkeypatch.setattr(prep, "compute_flows", fake_flows)
    root = make_synthetic(tmp_path / "synth")
    report = prepare_dataset(root, tmp_path / "out", opts(format="synthetic", flow="dis",
                                                          motion_source=motion_source))
    assert report.prepared == 2
    assert read_classes(tmp_path / "out" / "classes.txt") == ["take_cup", "put_cup"]
    rec = {r.clip_id: r for r in report.records}["c1"]
    assert (rec.label, rec.subject, rec.num_frames, rec.fps) == ("put_cup", "S2", 6, 15.0)
    r = ClipReader(tmp_path / "out" / rec.path)
    assert (r.meta["height"], r.meta["width"]) == (24, 32)
    mask = r.read_gray("mask", range(6))
    assert mask.shape == (6, 24, 32) and (mask[:, 8:16, 4:12] == 1).all() and mask.sum() == 6 * 64
    kp = r.read_array("keypoints")
    assert kp.shape == (6, 21, 3) and np.allclose(kp[0, 0], [20.0, 10.0, 1.0])
    assert r.read_json("privacy")[0] == [[4.0, 2.0, 12.0, 10.0]]
    motion = r.read_gray("motion", [0])
    if motion_source == "gt":
        assert motion.max() == 200 and motion[0, 8:16, 4:12].min() == 200
    else:  # motion maps from the (fake) warp flow, like real data
        assert motion.max() == 7


def test_video_folders_with_ucf_split_files(tmp_path):
    from egoattn.data.video import write_video

    src = tmp_path / "src"
    frames = np.stack([cv2.cvtColor(frame_image(i), cv2.COLOR_BGR2RGB) for i in range(4)])
    for cls in ("Walk", "Jump"):
        for g in (1, 8):
            write_video(src / cls / f"v_{cls}_g{g:02d}_c01.avi", frames, fps=10.0)
    (src / "Walk" / ".DS_Store").write_bytes(b"x")
    report = prepare_dataset(src, tmp_path / "plain", opts(format="videos"))
    assert sorted((r.clip_id, r.subject) for r in report.records) == [
        ("Jump_v_Jump_g01_c01", "g01"), ("Jump_v_Jump_g08_c01", "g08"),
        ("Walk_v_Walk_g01_c01", "g01"), ("Walk_v_Walk_g08_c01", "g08")]
    assert read_classes(tmp_path / "plain" / "classes.txt") == ["Jump", "Walk"]
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 Walk\n2 Jump\n")
    (splits / "trainlist01.txt").write_text("Walk/v_Walk_g08_c01.avi 1\nJump/v_Jump_g08_c01.avi 2\n")
    (splits / "testlist01.txt").write_text("Walk/v_Walk_g01_c01.avi\n")  # Jump g01 is in neither: left out
    report = prepare_dataset(src, tmp_path / "split", opts(format="videos", split_dir=splits))
    assert sorted((r.clip_id, r.subject) for r in report.records) == [
        ("Jump_v_Jump_g08_c01", "train"), ("Walk_v_Walk_g01_c01", "test"), ("Walk_v_Walk_g08_c01", "train")]
    assert read_classes(tmp_path / "split" / "classes.txt") == ["Walk", "Jump"]  # classInd order
    assert report.records[0].num_frames == 4 and report.records[0].fps == 10.0
