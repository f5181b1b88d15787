"""The synthetic egocentric dataset: layout on disk, determinism, and the properties that make each
part of the attention models necessary (time reversal, stir vs shake, camera motion, masks)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from scipy.stats import ks_2samp

from egoattn.data import synth as S
from egoattn.data.manifest import read_classes, read_manifest, split_records
from egoattn.data.video import probe_video, read_frames
from egoattn.errors import BadInputError, ConfigError
from egoattn.fileio import read_json

SMALL = S.get_preset("small")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    assert S.generate_synthetic(out, preset="small", seed=0, workers=1) == out
    return out


def test_files_and_manifest_complete(dataset):
    classes = read_classes(dataset / "classes.txt")
    assert classes == list(S.CLASSES) and len(classes) == 14
    assert len({c.split("_")[0] for c in classes}) == 6 and len({c.split("_")[1] for c in classes}) == 3
    records = read_manifest(dataset / "manifest.csv", classes)
    assert len(records) == 14 * 4 * 1
    assert {r.subject for r in records} == {"S1", "S2", "S3", "S4"}
    assert "S1_take_cup_001" in {r.clip_id for r in records}
    train, test = split_records(records, "gtea61")
    assert len(train) == 42 and len(test) == 14
    meta = read_json(dataset / "synth.json")
    assert meta["preset"] == "small" and meta["seed"] == 0 and meta["classes"] == classes
    T, H, W = SMALL.num_frames, SMALL.height, SMALL.width
    for r in records:
        assert r.path == f"videos/{r.clip_id}.mp4" and (r.start, r.end, r.num_frames, r.fps) == (0, T, T, 15.0)
        assert f"{r.verb}_{r.noun}" == r.label
        info = probe_video(dataset / r.path)
        assert (info.num_frames, info.width, info.height, info.fps) == (T, W, H, 15.0)
        gt = np.load(dataset / "gt" / f"{r.clip_id}.npz")
        assert set(gt.files) == set(S.GT_KEYS)
        assert gt["mask"].shape == (T, H, W) and gt["mask"].dtype == np.uint8 and gt["mask"].max() == 1
        assert gt["motion"].shape == (T, H, W) and gt["motion"].dtype == np.uint8 and gt["motion"].max() > 0
        assert gt["keypoints"].shape == (T, 21, 3) and gt["keypoints"].dtype == np.float32
        K = gt["privacy_boxes"].shape[1]
        assert gt["privacy_boxes"].shape == (T, K, 4) and K in (0, 1)
        assert gt["homography"].shape == (T, 3, 3) and gt["homography"].dtype == np.float64
        assert np.array_equal(gt["homography"][-1], np.eye(3))
        assert not np.allclose(gt["homography"][0], np.eye(3), atol=1e-3)  # the camera moves


def test_privacy_boxes_in_some_clips(dataset):
    counts = []
    for r in read_manifest(dataset / "manifest.csv"):
        boxes = np.load(dataset / "gt" / f"{r.clip_id}.npz")["privacy_boxes"]
        counts.append(boxes.shape[1])
        if boxes.shape[1]:
            b = boxes[:, 0]
            assert (b[:, 0] >= 0).all() and (b[:, 2] <= SMALL.width).all() and (b[:, 3] <= SMALL.height).all()
            assert ((b[:, 2] - b[:, 0]) > 3).mean() > 0.5  # a real box on most frames
    assert 0.1 <= np.mean(np.array(counts) > 0) <= 0.55  # about 30 % (measured 0.27 on seed 0)


def test_same_seed_same_frames_any_worker_count(dataset, tmp_path):
    again = S.generate_synthetic(tmp_path / "again", preset="small", seed=0, workers=2)
    for r in read_manifest(dataset / "manifest.csv"):
        assert (again / r.path).read_bytes() == (dataset / r.path).read_bytes(), r.clip_id
    a = np.load(dataset / "gt" / "S2_open_box_001.npz")
    b = np.load(again / "gt" / "S2_open_box_001.npz")
    for key in S.GT_KEYS:
        assert np.array_equal(a[key], b[key])
    # A different seed gives different frames for the same clip.
    jobs = {cid: (i, label, subj) for i, cid, label, subj in S.clip_jobs(SMALL)}
    i, label, subj = jobs["S2_open_box_001"]
    S._make_clip((tmp_path / "seed1", SMALL, 1, i, "S2_open_box_001", label, subj))
    f0 = read_frames(dataset / "videos" / "S2_open_box_001.mp4")
    f1 = read_frames(tmp_path / "seed1" / "videos" / "S2_open_box_001.mp4")
    assert f0.shape == f1.shape and np.abs(f0.astype(int) - f1).mean() > 5


def test_resume_skips_complete_clips(dataset, tmp_path):
    """Also: synthesising in-process (one worker, or a resume with one clip or none left) leaves the
    caller's torch and OpenCV thread counts as they were; `egoattn demo` trains in that process after it
    (it used to be left at one thread, and a resumed demo trained on one of the 2 cores)."""
    import cv2
    import torch

    out = tmp_path / "r"
    threads = (torch.get_num_threads(), cv2.getNumThreads())
    S.generate_synthetic(out, preset="small", seed=0, workers=1)
    assert (torch.get_num_threads(), cv2.getNumThreads()) == threads
    victim = out / "gt" / "S3_stir_jar_001.npz"
    kept = out / "videos" / "S1_take_cup_001.mp4"
    before = kept.stat().st_mtime_ns
    victim.unlink()
    S.generate_synthetic(out, preset="small", seed=0, workers=2)  # one clip left: no pool either
    assert (torch.get_num_threads(), cv2.getNumThreads()) == threads
    assert kept.stat().st_mtime_ns == before  # not regenerated
    assert victim.exists()
    assert np.array_equal(np.load(victim)["keypoints"], np.load(dataset / "gt" / victim.name)["keypoints"])
    with pytest.raises(BadInputError, match="seed"):
        S.generate_synthetic(out, preset="small", seed=7, workers=1)
    assert not [p for p in out.rglob("*.tmp*")]


def test_unknown_names_rejected():
    with pytest.raises(ConfigError, match="unknown synthetic preset"):
        S.get_preset("huge")
    with pytest.raises(ConfigError):
        S.render_clip("juggle_cup", "S1", np.random.default_rng(0), "small")
    assert S.get_preset("default").subjects == ("S1", "S2", "S3", "S4")
    d = S.get_preset("default")
    assert (d.instances * len(d.subjects) * len(S.CLASSES), d.num_frames, d.width, d.height) == (672, 32, 320, 240)
    c = S.get_preset("compact")  # the former default, which the tables in the repository were made with
    assert (c.instances * len(c.subjects) * len(S.CLASSES), c.num_frames, c.width, c.height) == (336, 32, 320, 240)


def _track(verb: str, seed: int, noun: str = "jar"):
    rng = np.random.default_rng(seed)
    layout = S.make_layout(noun, S.REVERSE_OF.get(verb, verb), "S1", SMALL, rng)
    return layout, S.action_track(verb, layout, SMALL, rng)


@pytest.mark.parametrize("verb,base", [("put", "take"), ("close", "open")])
def test_reverse_verbs_are_exact_time_reverses(verb, base):
    for seed in range(5):
        _, fwd = _track(base, seed)
        _, rev = _track(verb, seed)
        for key in fwd:
            assert np.array_equal(rev[key], fwd[key][::-1]), key
    # The rendered hand runs backwards as well (same scene, same random numbers).
    label_f, label_r = f"{base}_jar", f"{verb}_jar"
    a = S.render_clip(label_f, "S3", np.random.default_rng(11), SMALL)
    b = S.render_clip(label_r, "S3", np.random.default_rng(11), SMALL)
    assert np.array_equal(b["world_keypoints"], a["world_keypoints"][::-1])
    assert np.array_equal(b["contact"], a["contact"][::-1])


def test_take_enters_and_leaves_at_the_bottom_edge():
    my_bottom = lambda lay: lay.margin[1] + SMALL.height  # noqa: E731
    for seed in range(10):
        lay, tr = _track("take", seed, "cup")
        assert tr["wrist"][0, 1] > my_bottom(lay) and tr["wrist"][-1, 1] > my_bottom(lay)
        assert np.array_equal(tr["obj"][0], lay.active.pos)  # object on the table first...
        assert tr["obj"][-1, 1] > my_bottom(lay)  # ...carried out of the bottom edge at the end
        assert tr["contact"][-1] and not tr["contact"][0]
        lay, tr = _track("open", seed, "box")
        assert tr["lid_on"][0] and not tr["lid_on"][-1]
        assert np.allclose(tr["lid"][-1], lay.lid_spot) and np.array_equal(tr["obj"][-1], lay.active.pos)


def test_camera_distribution_is_time_symmetric():
    zoom_in, rot_pos, pan_x = [], [], []
    for seed in range(300):
        cams = S.camera_path(SMALL, (60, 60), np.random.default_rng(seed))
        first, last = cams[0], cams[-1]
        zoom_in.append(np.linalg.det(last[:2, :2]) > np.linalg.det(first[:2, :2]))
        rot_pos.append(math.atan2(last[1, 0], last[0, 0]) > math.atan2(first[1, 0], first[0, 0]))
        pan_x.append((last @ [100, 100, 1])[0] - (first @ [100, 100, 1])[0])
    assert 0.4 < np.mean(zoom_in) < 0.6 and 0.4 < np.mean(rot_pos) < 0.6
    assert abs(np.mean(pan_x)) < 0.25 * np.std(pan_x)
    k = SMALL.width / 320  # pan speed 0.5..3 px/frame (at 320 px width) dominates the frame-to-frame shift
    speeds = np.abs(pan_x) / (SMALL.num_frames - 1)
    assert speeds.max() < 3.6 * k + 1


def test_stir_and_shake_differ_only_in_motion():
    rel = {"stir": [], "shake": []}
    for verb in rel:
        for seed in range(300):
            lay, tr = _track(verb, seed + (0 if verb == "stir" else 10_000), "cup")
            t = seed % SMALL.num_frames  # one frame of each clip
            rel[verb].append((tr["wrist"][t] - tr["obj"][t]) / lay.hand_len)
            if verb == "stir":
                assert np.ptp(tr["obj"], axis=0).max() == 0  # the object stays still
                assert np.ptp(tr["wrist"], axis=0).max() > 0.2 * lay.active.r
            else:
                d = tr["obj"] - tr["obj"].mean(0)
                assert np.linalg.matrix_rank(d, tol=1e-6) == 1  # oscillates along a line
                assert np.ptp(tr["wrist"] - tr["obj"], axis=0).max() < 1e-9  # hand moves with it
    a, b = np.array(rel["stir"]), np.array(rel["shake"])
    for j in range(2):  # a single frame shows the same hand-object geometry
        assert ks_2samp(a[:, j], b[:, j]).pvalue > 0.01
    stir = S.render_clip("stir_cup", "S2", np.random.default_rng(5), SMALL)
    shake = S.render_clip("shake_cup", "S2", np.random.default_rng(5), SMALL)
    moving = lambda c: ((c["motion"] > 0) & (c["mask"] > 0)).sum() / c["mask"].sum()  # noqa: E731
    assert moving(shake) > 0.9 and moving(stir) < 0.6


@pytest.mark.parametrize("label", ["take_cup", "open_box", "stir_jar", "put_jar"])
def test_masks_keypoints_and_motion(label):
    for seed in (1, 2):
        c = S.render_clip(label, f"S{seed}", np.random.default_rng(seed), SMALL)
        kp, mask, motion = c["keypoints"], c["mask"], c["motion"]
        H, W = SMALL.height, SMALL.width
        vis = kp[..., 2] > 0
        inside = (kp[..., 0] >= 0) & (kp[..., 0] <= W - 1) & (kp[..., 1] >= 0) & (kp[..., 1] <= H - 1)
        assert np.array_equal(vis, inside)
        assert set(np.unique(kp[..., 2])) <= {0.0, 1.0}
        assert np.allclose(kp[..., :2], S._apply(c["camera"], c["world_keypoints"].astype(np.float64)), atol=1e-3)
        touching = np.flatnonzero(c["contact"])
        assert len(touching) >= 3
        for t in touching:
            if vis[t].sum() < 10:
                continue
            assert mask[t].sum() > 20, t
            ys, xs = np.nonzero(mask[t])
            pts = kp[t][vis[t], :2]
            d = np.hypot(xs[:, None] - pts[None, :, 0], ys[:, None] - pts[None, :, 1]).min()
            assert d < 0.06 * W  # the object under the hand is the masked one
        # the mask covers the object, not the table: its colour differs from the ring around it
        t = touching[len(touching) // 2]
        m = mask[t] > 0
        ring = (cv2.dilate(mask[t], np.ones((9, 9), np.uint8)) > 0) & ~m & (motion[t] == 0)
        assert np.abs(c["frames"][t][m].mean(0) - c["frames"][t][ring].mean(0)).max() > 10
        # motion is zero on the static table although the camera moves
        assert (motion[:, :, :] > 0).mean() < 0.3


def test_moved_object_mask_lies_in_motion():
    for label, seed in (("take_box", 8), ("shake_jar", 9)):
        c = S.render_clip(label, "S4", np.random.default_rng(seed), SMALL)
        speed = np.linalg.norm(np.gradient(c["world_object"], axis=0), axis=1)
        carry = [t for t in np.flatnonzero(speed > 0.5) if c["mask"][t].sum() > 20]
        assert len(carry) >= 3
        for t in carry:  # inside the mask (1-px edges aside) the motion map is positive
            core = cv2.erode(c["mask"][t], np.ones((3, 3), np.uint8)) > 0
            assert (c["motion"][t][core] > 0).mean() > 0.97
        still = [t for t in np.flatnonzero(speed == 0) if not c["contact"][t]]
        for t in still:  # an untouched object does not move: no motion except where the hand is over it
            assert (c["motion"][t][c["mask"][t] > 0] > 0).mean() < 0.5


def test_homography_matches_the_images():
    """Warping frame t by the stored homography leaves only interpolation error on the static background.

    Per clip the residual is the resampling floor of the table texture (1.1-2.3 grey levels measured),
    while the raw frame difference depends on how fast the camera moves (1.7-12.8), so both are
    averaged over several clips.
    """
    W, H = SMALL.width, SMALL.height
    kernel = np.ones((7, 7), np.uint8)
    warped_err, raw_err = [], []
    for label, seed in (("stir_cup", 3), ("stir_cup", 4), ("stir_cup", 5), ("take_box", 6), ("take_box", 7),
                        ("take_box", 8)):
        c = S.render_clip(label, "S2", np.random.default_rng(seed), SMALL)
        frames, Hs, motion = c["frames"].astype(np.float32), c["homography"], c["motion"]
        cams = c["camera"]
        p = np.array([[200.0, 150.0], [90.0, 60.0]])  # static world points
        for t in range(SMALL.num_frames - 1):
            assert np.allclose(S._apply(Hs[t], S._apply(cams[t], p)), S._apply(cams[t + 1], p), atol=1e-6)
            warped = cv2.warpPerspective(frames[t], Hs[t], (W, H), flags=cv2.INTER_LINEAR)
            valid = cv2.warpPerspective(np.ones((H, W), np.uint8), Hs[t], (W, H), flags=cv2.INTER_NEAREST)
            still = (motion[t + 1] == 0) & (cv2.warpPerspective(motion[t], Hs[t], (W, H), flags=cv2.INTER_NEAREST) == 0)
            m = cv2.erode((valid > 0).astype(np.uint8) & still.astype(np.uint8), kernel) > 0
            warped_err.append(np.abs(warped - frames[t + 1])[m].mean())
            raw_err.append(np.abs(frames[t] - frames[t + 1])[m].mean())
    # measured: 1.5 vs 4.2 grey levels
    assert np.mean(warped_err) < 2.0 and np.mean(warped_err) < 0.5 * np.mean(raw_err)


def test_objects_are_small_and_distractors_look_alike():
    for seed in range(20):
        lay, _ = _track("take", seed, "cup")
        assert 3 <= len(lay.distractors) <= 6
        assert {o.noun for o in lay.distractors} == set(S.NOUNS)  # every noun among the distractors
        for o in [lay.active] + lay.distractors:
            assert 0.15 <= 2 * o.r / SMALL.width <= 0.18

