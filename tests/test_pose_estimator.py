"""Keypoints from video (the optional pose extra, MediaPipe) and their drawing by `egoattn explain`.

The first tests run everywhere (the core venv has no mediapipe): the clear error when the extra is missing,
the MediaPipe -> COCO-17 / hand-21 mapping on fake results, the COCO JSON round trip and the skeleton
drawing. The tests on real video need mediapipe (`make test-pose`, in .venv-pose) and are skipped without it.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import paths
import tinyrun
from egoattn.cli import app
from egoattn.data.keypoints import keypoint_mask, read_coco_keypoints
from egoattn.data.pose_estimator import (COCO17_FROM_MEDIAPIPE, _body, _hand, extract_keypoints,
                                         extract_to_file, write_coco_keypoints)
from egoattn.data.video import read_frames, write_video
from egoattn.errors import BadInputError, ConfigError
from egoattn.explain.explain import explain_run
from egoattn.explain.overlay import draw_keypoints

VIDEO = paths.REAL / "videos" / "demo_skeleton.mp4"
MAKEUP = paths.REAL / "frames"  # img_00001..10.jpg: a hand holding a brush in front of a face, 320 x 240


# --- without mediapipe ----------------------------------------------------------------------------

def test_missing_mediapipe_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ImportError, installed or not
    with pytest.raises(ConfigError, match=r"pip install 'egoattn\[pose\]'"):
        extract_keypoints(VIDEO)
    result = CliRunner().invoke(app, ["keypoints", str(VIDEO), "--out", str(tmp_path / "kp.json")])
    assert result.exit_code == 2
    assert "egoattn[pose]" in result.output and "read_coco_keypoints" in result.output
    assert not (tmp_path / "kp.json").exists()


def test_mediapipe_without_bundled_models_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A mediapipe >= 0.10.30 (no legacy solutions, no models in the wheel) must not be used: it would
    need weights from the network."""
    fake = types.ModuleType("mediapipe")
    fake.__file__ = str(tmp_path / "mediapipe" / "__init__.py")
    fake.__version__ = "1.2.2"
    monkeypatch.setitem(sys.modules, "mediapipe", fake)
    with pytest.raises(ConfigError, match="never downloads weights.*egoattn\\[pose\\]"):
        extract_keypoints(VIDEO, kind="hand")


def _landmark(x: float, y: float, visibility: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(x=x, y=y, visibility=visibility)


def test_body_maps_mediapipe_33_to_coco17() -> None:
    h, w = 100, 200
    landmarks = [_landmark(i / 40, (i + 1) / 40, 0.9) for i in range(33)]
    landmarks[13] = _landmark(13 / 40, 14 / 40, 0.3)  # left elbow: low visibility -> missing
    landmarks[28] = _landmark(1.2, 0.5, 0.99)  # right ankle outside the frame -> missing
    kp = _body(SimpleNamespace(pose_landmarks=SimpleNamespace(landmark=landmarks)), (h, w, 3), 0.5)
    assert kp.shape == (17, 3) and kp.dtype == np.float32
    present = keypoint_mask(kp)
    assert present.tolist() == [j not in (7, 16) for j in range(17)]  # COCO 7 = left elbow, 16 = right ankle
    assert np.isnan(kp[[7, 16], :2]).all() and (kp[[7, 16], 2] == 0).all()
    for j in np.nonzero(present)[0]:
        i = COCO17_FROM_MEDIAPIPE[j]
        np.testing.assert_allclose(kp[j], [i / 40 * w, (i + 1) / 40 * h, 0.9], rtol=1e-6)
    # COCO names of a few joints -> MediaPipe names: nose 0, left shoulder 11, right hip 24, left ankle 27
    assert [COCO17_FROM_MEDIAPIPE[j] for j in (0, 5, 12, 15)] == [0, 11, 24, 27]
    nobody = _body(SimpleNamespace(pose_landmarks=None), (h, w, 3), 0.5)
    assert not keypoint_mask(nobody).any()


def _fake_hands(hands: list[tuple[str, float, float]]) -> SimpleNamespace:
    """Hands as (MediaPipe label, score, x of every landmark)."""
    return SimpleNamespace(
        multi_hand_landmarks=[SimpleNamespace(landmark=[_landmark(x, 0.1 + j / 40) for j in range(21)])
                              for _, _, x in hands],
        multi_handedness=[SimpleNamespace(classification=[SimpleNamespace(label=label, score=score)])
                          for label, score, _ in hands])


def test_hand_choice_and_mirroring() -> None:
    result = _fake_hands([("Left", 0.9, 0.25), ("Right", 0.7, 0.75)])
    shape = (100, 100, 3)

    def pick(which: str, mirrored: bool) -> float:
        kp = _hand(result, shape, which, mirrored)
        assert kp.shape == (21, 3)
        return float(kp[0, 0]) if keypoint_mask(kp).all() else float("nan")

    assert pick("best", False) == 25.0  # the higher score
    assert pick("left", False) == 75.0  # a normal camera: MediaPipe's "Right" is the wearer's left hand
    assert pick("right", False) == 25.0
    assert pick("left", True) == 25.0  # a mirrored (selfie) image: its names are right
    kp = _hand(result, shape, "best", False)
    np.testing.assert_allclose(kp[:, 2], 0.9)  # confidence = the hand's score
    np.testing.assert_allclose(kp[:, 1], (0.1 + np.arange(21) / 40) * 100, rtol=1e-5)
    assert not keypoint_mask(_hand(_fake_hands([("Left", 0.9, 0.2)]), shape, "left", False)).any()
    assert not keypoint_mask(_hand(SimpleNamespace(multi_hand_landmarks=None), shape, "best", False)).any()


def test_coco_json_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    kp = np.concatenate([rng.uniform(0, 500, (6, 17, 2)), rng.uniform(0.5, 1, (6, 17, 1))], axis=2).astype(np.float32)
    kp[1, [3, 9]] = (np.nan, np.nan, 0)  # missing joints
    kp[4] = (np.nan, np.nan, 0)  # nobody in frame 4
    path = tmp_path / "kp.json"
    write_coco_keypoints(path, kp, width=640, layout="coco17")
    data = json.loads(path.read_text())
    assert data["width"] == 640 and data["layout"] == "coco17" and data["frames"][4] == []
    assert data["frames"][1][0]["num_keypoints"] == 15 and data["frames"][1][0]["keypoints"][9:12] == [0, 0, 0]
    back = read_coco_keypoints(path)
    assert back.shape == kp.shape and back.dtype == np.float32
    assert (keypoint_mask(back) == keypoint_mask(kp)).all()
    np.testing.assert_allclose(back, kp, atol=1e-3)  # both NaN where missing


def test_draw_keypoints_joints_and_bones() -> None:
    frame = np.full((64, 64, 3), 128, np.uint8)
    kp = np.full((17, 3), np.nan, np.float32)
    kp[:, 2] = 0
    kp[5] = (10, 10, 1)  # left shoulder
    kp[7] = (10, 50, 1)  # left elbow: bone 5-7
    kp[11] = (50, 30, 0)  # confidence 0: missing, not drawn, no bone 5-11
    out = draw_keypoints(frame, kp)
    assert (frame == 128).all()  # a copy
    assert tuple(out[10, 10]) == (255, 0, 0) and tuple(out[50, 10]) == (255, 0, 0)  # joints
    assert out[30, 10, 1] == 255 and out[30, 10, 0] == 0  # the bone between them
    assert (out[25:35, 40:60] == 128).all()  # nothing towards the missing joint
    kp[7, 2] = 0
    assert (draw_keypoints(frame, kp)[20:40, 5:15] == 128).all()  # no bone to a missing joint


def test_explain_draws_keypoints_over_a_video(tmp_path: Path) -> None:
    run = tinyrun.make_tiny_run(tmp_path / "run", ["a", "b"])  # crop 64 of short side 72
    video = tmp_path / "clip.mp4"
    write_video(video, np.full((20, 96, 128, 3), 128, np.uint8), fps=10.0)
    kp = np.full((20, 17, 3), np.nan, np.float32)
    kp[..., 2] = 0
    kp[:, 5] = (64, 48, 1)  # the frame centre -> crop (32, 32) -> display (112, 112) of 224
    kp[:, 7] = (64, 80, 1)  # -> crop (32, 56) -> display (112, 196)
    points = tmp_path / "kp.json"
    write_coco_keypoints(points, kp)
    result = explain_run(run, video, out=tmp_path / "with", keypoints=points)
    assert result["keypoints"] == str(points)
    plain = explain_run(run, video, out=tmp_path / "plain")
    drawn = np.asarray(Image.open(tmp_path / "with" / "clip.png").convert("RGB")).astype(int)
    base = np.asarray(Image.open(tmp_path / "plain" / "clip.png").convert("RGB")).astype(int)
    assert drawn.shape == base.shape and plain["keypoints"] is None
    row = drawn[:224, :224]  # first row, frame column
    joint, bone = row[110:115, 110:115].reshape(-1, 3), row[150:158, 110:115].reshape(-1, 3)
    assert ((joint[:, 0] > 200) & (joint[:, 1] < 80)).any()  # red joint at the centre
    assert ((bone[:, 1] > 200) & (bone[:, 0] < 80)).any()  # green bone below it
    changed = np.abs(drawn - base).sum(axis=2)[:224, :224] > 60
    ys, xs = np.nonzero(changed)
    assert xs.min() >= 105 and xs.max() <= 119 and ys.min() >= 105 and ys.max() <= 203

    write_coco_keypoints(tmp_path / "short.json", kp[:5])
    with pytest.raises(BadInputError, match="keypoints of 5 frames, but .* has 20"):
        explain_run(run, video, out=tmp_path / "x", keypoints=tmp_path / "short.json")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.csv").write_text("clip_id,path,label\n")
    with pytest.raises(ConfigError, match="only be drawn over a video"):
        explain_run(run, tmp_path / "data", keypoints=points)


# --- with mediapipe (the pose extra) --------------------------------------------------------------

@pytest.fixture(scope="module")
def body(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    pytest.importorskip("mediapipe")
    if not VIDEO.is_file():
        pytest.skip(f"{VIDEO} not found")
    path = tmp_path_factory.mktemp("pose") / "demo_skeleton.json"
    return extract_to_file(VIDEO, path, kind="body"), path


def _mid(kp: np.ndarray, a: int, b: int) -> np.ndarray:
    return (kp[:, a, :2] + kp[:, b, :2]) / 2


def test_body_keypoints_are_present_and_inside_the_frame(body: tuple[np.ndarray, Path]) -> None:
    kp, _ = body
    assert kp.shape == (72, 17, 3) and kp.dtype == np.float32
    present = keypoint_mask(kp)
    assert present.any(axis=1).mean() >= 0.95  # a person on (almost) every frame (measured 72 / 72)
    assert present.mean() >= 0.85  # measured 94%: only the right elbow/wrist hide behind the hug
    core = [0, 5, 6, 11, 12, 13, 14, 15, 16]  # nose, shoulders, hips, knees, ankles
    assert present[:, core].mean(axis=0).min() >= 0.95
    xy = kp[present][:, :2]
    assert (xy[:, 0] >= 0).all() and (xy[:, 0] < 1920).all() and (xy[:, 1] >= 0).all() and (xy[:, 1] < 1080).all()
    assert (kp[present][:, 2] >= 0.5).all() and (kp[~present][:, 2] == 0).all()


def test_body_skeleton_is_plausible(body: tuple[np.ndarray, Path]) -> None:
    kp, _ = body
    nose, shoulders, hips = kp[:, 0, :2], _mid(kp, 5, 6), _mid(kp, 11, 12)
    knees, ankles = _mid(kp, 13, 14), _mid(kp, 15, 16)
    upright = (nose[:, 1] < shoulders[:, 1]) & (shoulders[:, 1] < hips[:, 1]) & (hips[:, 1] < knees[:, 1]) \
        & (knees[:, 1] < ankles[:, 1])
    assert upright.mean() >= 0.95  # head above shoulders above hips above knees above feet (measured 100%)
    # The person faces the camera at the start: their left shoulder is on the image's right.
    assert (kp[:10, 5, 0] > kp[:10, 6, 0]).all()
    # Bones keep their length over the clip (a swap to the other person or a mirrored joint would not):
    # measured variation (std / median) 0.03 torso, 0.04-0.05 upper arms and thighs, 0.08-0.12 shins.
    bones = {"torso": (shoulders, hips), "left upper arm": (kp[:, 5, :2], kp[:, 7, :2]),
             "left thigh": (kp[:, 11, :2], kp[:, 13, :2]), "right thigh": (kp[:, 12, :2], kp[:, 14, :2]),
             "left shin": (kp[:, 13, :2], kp[:, 15, :2]), "right shin": (kp[:, 14, :2], kp[:, 16, :2])}
    lengths = {}
    for name, (a, b) in bones.items():
        length = np.linalg.norm(a - b, axis=1)
        length = length[np.isfinite(length)]
        assert length.size >= 60, name
        lengths[name] = np.median(length)
        assert np.std(length) / np.median(length) < 0.2, name
    # Human proportions: torso (about 200 px here) longer than a thigh (about 125) or a shin (about 100).
    assert lengths["torso"] > max(lengths["left thigh"], lengths["right thigh"], lengths["left shin"])


def test_body_keypoints_lie_on_a_person_found_independently(body: tuple[np.ndarray, Path]) -> None:
    """OpenCV's HOG people detector (its own linear SVM, shipped in OpenCV) finds the people; the
    keypoints' bounding box must lie in one of its boxes and be person-sized."""
    kp, _ = body
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    frames = [0, 35, 71]
    for t, frame in zip(frames, read_frames(VIDEO, frames)):
        small = cv2.resize(frame, (640, 360), interpolation=cv2.INTER_AREA)
        rects, _ = hog.detectMultiScale(small, winStride=(8, 8), padding=(8, 8), scale=1.05)
        assert len(rects) >= 1, t
        present = keypoint_mask(kp[t])
        lo, hi = kp[t, present, :2].min(axis=0), kp[t, present, :2].max(axis=0)
        fits = []
        for x, y, w, h in np.asarray(rects, dtype=float) * 3:  # back to 1920 x 1080
            mx, my = 0.15 * w, 0.15 * h
            inside = lo[0] >= x - mx and hi[0] <= x + w + mx and lo[1] >= y - my and hi[1] <= y + h + my
            fits.append(inside and (hi[1] - lo[1]) >= 0.5 * h)  # measured: about 0.63 of the HOG box
        assert any(fits), (t, lo, hi, rects)
        assert 0.3 <= (hi[1] - lo[1]) / 1080 <= 0.9  # person-sized (measured 0.46-0.49 of the frame height)


def test_body_file_round_trip(body: tuple[np.ndarray, Path]) -> None:
    kp, path = body
    back = read_coco_keypoints(path)
    assert (keypoint_mask(back) == keypoint_mask(kp)).all()
    np.testing.assert_allclose(back, kp, atol=1e-3)
    info = json.loads(path.read_text())
    assert (info["width"], info["height"], info["layout"]) == (1920, 1080, "coco17")
    assert info["estimator"].startswith("mediapipe 0.10.")


def test_hand_keypoints_from_the_command_line(tmp_path: Path) -> None:
    """A real hand (holding a make-up brush): found on most frames, where the frames move, hand-shaped."""
    pytest.importorskip("mediapipe")
    frames = np.stack([cv2.cvtColor(cv2.imread(str(MAKEUP / f"img_{i:05d}.jpg")), cv2.COLOR_BGR2RGB)
                       for i in range(1, 11)])
    video, out = tmp_path / "makeup.mp4", tmp_path / "hand.json"
    write_video(video, frames, fps=10.0)
    result = CliRunner().invoke(app, ["keypoints", str(video), "--out", str(out), "--kind", "hand"])
    assert result.exit_code == 0, result.output
    kp = read_coco_keypoints(out)
    assert kp.shape == (10, 21, 3)
    present = keypoint_mask(kp)
    found = present.all(axis=1)
    assert found.sum() >= 8  # measured 10 / 10
    xy = kp[found][..., :2]
    assert (xy[..., 0] >= 0).all() and (xy[..., 0] < 320).all() and (xy[..., 1] >= 0).all() and (xy[..., 1] < 240).all()
    # Independently: the hand is what moves. Motion density inside the keypoints' box vs the whole frame.
    motion = (np.abs(np.diff(frames.mean(axis=-1), axis=0)) > 20).mean(axis=0)
    lo, hi = np.floor(xy.reshape(-1, 2).min(axis=0)).astype(int), np.ceil(xy.reshape(-1, 2).max(axis=0)).astype(int)
    assert motion[lo[1]:hi[1], lo[0]:hi[0]].mean() > 2 * motion.mean()
    # Hand-sized and hand-shaped: palm length (wrist to middle-finger base) steady; palm width similar.
    assert 40 <= (hi - lo).max() <= 200
    palm = np.linalg.norm(kp[found][:, 0, :2] - kp[found][:, 9, :2], axis=1)
    width = np.linalg.norm(kp[found][:, 5, :2] - kp[found][:, 17, :2], axis=1)
    assert np.std(palm) / np.mean(palm) < 0.2
    assert 0.3 < np.median(width / palm) < 1.5
