"""Keypoints extracted from video with MediaPipe, the optional ``pose`` extra (``pip install 'egoattn[pose]'``).

Body keypoints for third-person video (MediaPipe Pose, one person: the most prominent, tracked over frames)
and hand keypoints for first-person video (MediaPipe Hands). The estimator's weights ship inside the
mediapipe wheel (the legacy ``mp.solutions`` graphs, mediapipe < 0.10.30): nothing is downloaded at run
time, and :func:`extract_keypoints` refuses a mediapipe whose bundled models are missing instead of
letting it fetch them. MediaPipe pins numpy < 2, protobuf < 5 and the GUI opencv-contrib-python, so it is
kept out of the core install and tested in a venv of its own (``make test-pose``).

The result is the file readers' array (see :mod:`egoattn.data.keypoints`): ``(T, J, 3)`` float32 x, y in
pixels of the video frame, confidence; a missing joint (not detected, low visibility, or outside the
frame) has NaN coordinates and confidence 0, so ``keypoint_mask`` is its mask.
- ``kind="body"``: COCO-17 order (``LAYOUTS["coco17"]``), mapped from MediaPipe's 33 pose landmarks;
  confidence = the landmark's visibility.
- ``kind="hand"``: 21 keypoints (``LAYOUTS["hand21"]``: wrist, then thumb, index, middle, ring, little,
  4 each from base to tip; MediaPipe's order); one hand per frame, confidence = the hand's score.

:func:`write_coco_keypoints` writes such an array as COCO-style JSON that
:func:`egoattn.data.keypoints.read_coco_keypoints` reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from egoattn.data.keypoints import keypoint_mask
from egoattn.errors import BadInputError, ConfigError
from egoattn.fileio import write_json

#: MediaPipe Pose landmark index of each COCO-17 joint: nose, eyes (left, right), ears (left, right),
#: shoulders, elbows, wrists, hips, knees, ankles (left then right each).
COCO17_FROM_MEDIAPIPE = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
NUM_JOINTS = {"body": 17, "hand": 21}
LAYOUT_NAMES = {"body": "coco17", "hand": "hand21"}
#: The model files each kind needs, relative to the mediapipe package; all must ship in the wheel.
#: (Body: model_complexity=1 is the only pose landmark model in the wheel; 0 and 2 are downloaded.)
BUNDLED_MODELS = {
    "body": ("modules/pose_detection/pose_detection.tflite", "modules/pose_landmark/pose_landmark_full.tflite"),
    "hand": ("modules/palm_detection/palm_detection_full.tflite", "modules/hand_landmark/hand_landmark_full.tflite"),
}
INSTALL_HINT = "pip install 'egoattn[pose]' (mediapipe>=0.10.21,<0.10.30, best in a venv of its own)"


def _mediapipe_solutions() -> Any:
    """``mediapipe.solutions`` with its bundled models, or a ConfigError saying how to get it."""
    try:
        import mediapipe as mp
    except ImportError as e:
        raise ConfigError(f"extracting keypoints from video needs the optional pose extra: {INSTALL_HINT} "
                          f"(import mediapipe failed: {e}). Or give keypoints as files: COCO/OpenPose JSON "
                          "(read_coco_keypoints) or NTU .skeleton (read_ntu_skeleton).") from None
    solutions = getattr(mp, "solutions", None)
    root = Path(mp.__file__).parent
    missing = [m for kind in BUNDLED_MODELS for m in BUNDLED_MODELS[kind] if not (root / m).is_file()]
    if solutions is None or missing:
        raise ConfigError(f"mediapipe {getattr(mp, '__version__', '?')} at {root} has no legacy solutions or "
                          f"lacks its bundled models ({', '.join(missing) or 'mp.solutions'}); egoattn never "
                          f"downloads weights at run time. Install the supported version: {INSTALL_HINT}")
    return solutions


def extract_keypoints(video_path: str | Path, kind: Literal["body", "hand"] = "body",
                      min_confidence: float = 0.5, hand: Literal["best", "left", "right"] = "best",
                      mirrored: bool = False, start: int = 0, end: int | None = None) -> np.ndarray:
    """Keypoints of one person (body) or one hand per frame of a video -> (T, J, 3) float32.

    Frames ``start``..``end`` are decoded one at a time (PyAV; flat memory) and tracked (MediaPipe's video
    mode). ``min_confidence``: the detector's threshold, and joints with a lower visibility (body) are
    missing. ``hand``: the most confident hand per frame (``best``), or only the wearer's left / right
    hand; MediaPipe names hands as if the image were mirrored (a selfie), so ``mirrored=False`` (a normal
    camera, egocentric or not) swaps its names.
    """
    from egoattn.data.video import iter_frames

    if kind not in NUM_JOINTS:
        raise ConfigError(f"kind must be one of {sorted(NUM_JOINTS)}, got {kind!r}")
    if hand not in ("best", "left", "right"):
        raise ConfigError(f"hand must be best, left or right, got {hand!r}")
    if not 0.0 <= min_confidence <= 1.0:
        raise ConfigError(f"min_confidence must be in [0, 1], got {min_confidence}")
    solutions = _mediapipe_solutions()
    frames = iter_frames(video_path, start=start, end=end)
    if kind == "body":
        estimator = solutions.pose.Pose(static_image_mode=False, model_complexity=1,
                                        min_detection_confidence=min_confidence,
                                        min_tracking_confidence=min_confidence)
        with estimator:
            rows = [_body(estimator.process(f), f.shape, min_confidence) for f in frames]
    else:
        estimator = solutions.hands.Hands(static_image_mode=False, max_num_hands=2, model_complexity=1,
                                          min_detection_confidence=min_confidence,
                                          min_tracking_confidence=min_confidence)
        with estimator:
            rows = [_hand(estimator.process(f), f.shape, hand, mirrored) for f in frames]
    if not rows:
        raise BadInputError(video_path, f"no frames decoded in {start}..{end}")
    return np.stack(rows).astype(np.float32)


def _missing(num_joints: int) -> np.ndarray:
    out = np.full((num_joints, 3), np.nan, dtype=np.float32)
    out[:, 2] = 0.0
    return out


def _to_pixels(points: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(J, 3) normalised x, y, confidence -> pixels; joints outside the frame (or below 0 confidence) missing."""
    h, w = shape[:2]
    out = points.astype(np.float32).copy()
    out[:, 0] *= w
    out[:, 1] *= h
    outside = (out[:, 0] < 0) | (out[:, 0] >= w) | (out[:, 1] < 0) | (out[:, 1] >= h) | ~(out[:, 2] > 0)
    out[outside, :2] = np.nan
    out[outside, 2] = 0.0
    return out


def _body(result: Any, shape: tuple[int, ...], min_confidence: float) -> np.ndarray:
    if result.pose_landmarks is None:
        return _missing(NUM_JOINTS["body"])
    lm = result.pose_landmarks.landmark
    points = np.array([[lm[i].x, lm[i].y, lm[i].visibility] for i in COCO17_FROM_MEDIAPIPE], dtype=np.float64)
    points[points[:, 2] < min_confidence, 2] = 0.0
    return _to_pixels(points, shape)


def _hand(result: Any, shape: tuple[int, ...], which: str, mirrored: bool) -> np.ndarray:
    if not result.multi_hand_landmarks:
        return _missing(NUM_JOINTS["hand"])
    candidates = []
    for landmarks, handedness in zip(result.multi_hand_landmarks, result.multi_handedness):
        label, score = handedness.classification[0].label.lower(), float(handedness.classification[0].score)
        if not mirrored:
            label = {"left": "right", "right": "left"}.get(label, label)
        if which in ("best", label):
            candidates.append((score, landmarks))
    if not candidates:
        return _missing(NUM_JOINTS["hand"])
    score, landmarks = max(candidates, key=lambda c: c[0])
    points = np.array([[p.x, p.y, score] for p in landmarks.landmark], dtype=np.float64)
    return _to_pixels(points, shape)


def coco_frames(keypoints: np.ndarray) -> list[list[dict[str, Any]]]:
    """(T, J, 3) -> one COCO person list per frame (empty where no joint is present); missing joints are
    written COCO's way, ``0, 0, 0``."""
    kp = np.asarray(keypoints, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[2] != 3:
        raise ValueError(f"keypoints must be (T, J, 3), got {kp.shape}")
    present = keypoint_mask(kp)
    frames: list[list[dict[str, Any]]] = []
    for t in range(kp.shape[0]):
        if not present[t].any():
            frames.append([])
            continue
        person = np.where(present[t][:, None], kp[t], 0.0)
        frames.append([{"keypoints": [round(float(v), 3) for v in person.reshape(-1)],
                        "num_keypoints": int(present[t].sum()),
                        "score": round(float(kp[t, present[t], 2].mean()), 4)}])
    return frames


def write_coco_keypoints(path: str | Path, keypoints: np.ndarray, **info: Any) -> None:
    """Write ``{**info, "frames": [...]}`` (see :func:`coco_frames`) atomically; ``info`` holds metadata
    such as the video, its size and fps and the layout name. ``read_coco_keypoints(path)`` reads it back."""
    write_json(path, {**info, "frames": coco_frames(keypoints)})


def extract_to_file(video_path: str | Path, out: str | Path, kind: Literal["body", "hand"] = "body",
                    **options: Any) -> np.ndarray:
    """:func:`extract_keypoints` then :func:`write_coco_keypoints` with the video's size and fps."""
    from egoattn.data.video import probe_video

    info = probe_video(video_path)
    keypoints = extract_keypoints(video_path, kind=kind, **options)
    write_coco_keypoints(out, keypoints, video=str(video_path), width=info.width, height=info.height,
                         fps=info.fps, layout=LAYOUT_NAMES[kind], estimator=_estimator_name(kind))
    return keypoints


def _estimator_name(kind: str) -> str:
    import mediapipe as mp

    model = "pose_landmark_full" if kind == "body" else "hand_landmark_full"
    return f"mediapipe {getattr(mp, '__version__', '?')} {model}"

