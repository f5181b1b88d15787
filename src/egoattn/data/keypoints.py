"""Keypoints (2D/3D poses): readers, missing-joint masks, normalisation and resampling.

One array layout everywhere: ``(T, J, D + 1)`` float32 = D coordinates (x, y for 2D; x, y, z for 3D)
then a confidence. **A joint is missing when its confidence is 0 or any coordinate is NaN**; the readers
write NaN coordinates and confidence 0 for missing joints, so a missing joint can never be mistaken for a
joint at (0, 0). This is also the loader's ``keypoints`` (T, J, 3) layout (x, y in crop pixels).

Readers
- :func:`read_coco_keypoints` - COCO-17-style JSON (also OpenPose and COCO-results files), either a
  folder of per-frame JSON files or one JSON file holding all frames; see its docstring for the shapes.
- :func:`read_ntu_skeleton` - NTU RGB+D ``.skeleton`` text files (Kinect v2, 25 joints).

Normalisation (:func:`normalize_keypoints`, torch, batched; also takes numpy arrays): centre on a
reference joint (group) or on the mean of the visible joints, taken from the first frame where it is
visible (``reference="first"``, as Das et al. centre on the first frame's reference joint) or per frame;
then divide by one scale per sequence: the torso length (median over frames) or the bounding-box side of
all visible joints. Missing joints never enter the centre or the scale and come out as 0 with mask False.

:func:`resample_keypoints` picks T steps with the same indices as the frame sampler
(``egoattn.data.samplers.uniform_indices``), so poses stay aligned with the sampled frames.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import Tensor

from egoattn.data.samplers import uniform_indices
from egoattn.data.sources import natural_key
from egoattn.errors import BadInputError
from egoattn.fileio import read_json

# Joint groups of the known layouts (0-based). "center" is the reference joint group for
# center="joint"; "torso" the two groups whose mean positions define the torso length.
LAYOUTS: dict[str, dict[str, Any]] = {
    # COCO-17: 5/6 shoulders, 9/10 wrists, 11/12 hips. Centre = mid-hip; torso = mid-shoulder to mid-hip.
    "coco17": {"num_joints": 17, "center": (11, 12), "torso": ((5, 6), (11, 12)),
               "parts": {"left_hand": (9,), "right_hand": (10,), "body": tuple(range(17))}},
    # NTU RGB+D / Kinect v2: 0 spine base, 1 spine middle, 20 spine shoulder; 6,7,21,22 left wrist,
    # hand, hand tip, thumb; 10,11,23,24 the same on the right.
    "ntu25": {"num_joints": 25, "center": (1,), "torso": ((20,), (0,)),
              "parts": {"left_hand": (6, 7, 21, 22), "right_hand": (10, 11, 23, 24),
                        "body": tuple(range(25))}},
    # 21 hand keypoints (MediaPipe/OpenPose order, the synthetic dataset's): 0 wrist, 9 middle MCP,
    # 4/8/12/16/20 fingertips. Egocentric video: the hand is the pose signal.
    "hand21": {"num_joints": 21, "center": (0,), "torso": ((0,), (9,)),
               "parts": {"hand": tuple(range(21)), "palm": (0, 1, 5, 9, 13, 17),
                         "fingertips": (4, 8, 12, 16, 20)}},
}

# NTU .skeleton: per joint x y z depthX depthY colorX colorY orientW orientX orientY orientZ trackingState
_NTU_JOINT_FIELDS = 12
_NTU_BODY_FIELDS = 10  # bodyID clipedEdges handLeftConf handLeftState handRightConf handRightState
#                        isRestricted leanX leanY trackingState
_NTU_COORDS = {"color": (5, 6), "depth": (3, 4), "xyz": (0, 1, 2)}
#: Kinect joint trackingState -> confidence: 2 tracked, 1 inferred, 0 not tracked (missing).
NTU_TRACKING_CONFIDENCE = {0: 0.0, 1: 0.5, 2: 1.0}


# ------------------------------------------------------------------------------------------ masks


def keypoint_mask(keypoints: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """(..., J, D + 1) -> (..., J) bool: True where the joint is present (confidence > 0, finite coords)."""
    if isinstance(keypoints, np.ndarray):
        return (keypoints[..., -1] > 0) & np.isfinite(keypoints[..., :-1]).all(axis=-1)
    return (keypoints[..., -1] > 0) & torch.isfinite(keypoints[..., :-1]).all(dim=-1)


# ------------------------------------------------------------------------------------------ COCO JSON


def read_coco_keypoints(path: str | Path, num_joints: int | None = None,
                        key: str | None = None) -> np.ndarray:
    """Read 2D keypoints of one person per frame -> (T, J, 3) float32 x, y, confidence.

    ``path`` is either
    - a **folder** of per-frame JSON files (``*.json``, in natural order of their names, so
      ``frame_2.json`` comes before ``frame_10.json``), each holding one *frame entry*; or
    - **one JSON file** holding a list of frame entries, or ``{"frames": [...]}``, or a COCO results /
      annotations list ``[{"image_id": ..., "keypoints": [...], "score": ...}, ...]`` (or
      ``{"annotations": [...]}``), grouped into frames by sorted ``image_id``.

    A *frame entry* is a person, a list of persons (empty = nobody: all joints missing), or an OpenPose
    frame ``{"people": [...]}``. A *person* is a dict with ``key`` (default: the first of ``keypoints``
    (COCO) and ``pose_keypoints_2d`` (OpenPose)), or the keypoints themselves: a flat list
    ``[x1, y1, c1, x2, ...]`` of 3J numbers or a nested list of J ``[x, y, c]`` / ``[x, y]`` triples/pairs.
    With several persons in a frame the one with the highest ``score`` (else the highest mean confidence)
    is kept. The third value is the confidence as given (COCO visibility v=0 "not labelled" and score 0
    are missing; v=1, 2 and detector scores > 0 are kept); pairs get confidence 1; null coordinates are
    missing. ``num_joints`` defaults to the first person's joint count; a different count is an error.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"), key=lambda f: natural_key(f.name))
        if not files:
            raise BadInputError(path, "folder holds no *.json keypoint files")
        entries = [(f, read_json(f)) for f in files]
    else:
        data = read_json(path)
        entries = [(path, e) for e in _frame_entries(path, data)]
    frames: list[np.ndarray | None] = []
    for source, entry in entries:
        person = _pick_person(source, entry, key)
        frames.append(None if person is None else _person_array(source, person))
    counts = {f.shape[0] for f in frames if f is not None}
    if num_joints is None:
        if not counts:
            raise BadInputError(path, "no frame has any person, so the number of joints is unknown "
                                      "(pass num_joints=)")
        num_joints = next(f.shape[0] for f in frames if f is not None)
    bad = sorted(counts - {num_joints})
    if bad:
        raise BadInputError(path, f"persons with {bad} joints, expected {num_joints} in every frame")
    out = np.full((len(frames), num_joints, 3), np.nan, dtype=np.float32)
    out[..., 2] = 0.0
    for t, f in enumerate(frames):
        if f is not None:
            out[t] = f
    return _mark_missing(out)


def _frame_entries(path: Path, data: Any) -> list[Any]:
    if isinstance(data, dict):
        for name in ("frames", "annotations"):
            if name in data:
                data = data[name]
                break
        else:
            return [data]  # a single frame
    if not isinstance(data, list):
        raise BadInputError(path, f"expected a list of frames, got {type(data).__name__}")
    if data and all(isinstance(d, dict) and "image_id" in d for d in data):
        by_image: dict[Any, list[Any]] = {}
        for d in data:
            by_image.setdefault(d["image_id"], []).append(d)
        return [by_image[k] for k in sorted(by_image)]
    return data


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _pick_person(source: Path, entry: Any, key: str | None) -> Any:
    """The one person of a frame entry (dict or raw keypoints), or None when the frame is empty."""
    if isinstance(entry, dict) and "people" in entry:
        entry = entry["people"]
    if isinstance(entry, dict):
        return _person_keypoints(source, entry, key)
    if not isinstance(entry, list):
        raise BadInputError(source, f"a frame entry must be a list or a dict, got {type(entry).__name__}")
    if not entry:
        return None
    if all(_is_number(v) for v in entry):
        return entry  # flat keypoints of one person
    if all(isinstance(v, list) and len(v) in (2, 3) and all(map(_is_number, v)) for v in entry):
        return entry  # nested J x 2 / J x 3 keypoints of one person (a flat person list has 3J >= 6 values)
    people = [p for p in entry if isinstance(p, (dict, list))]
    if len(people) != len(entry):
        raise BadInputError(source, "a frame entry list must hold persons (dicts or keypoint lists)")
    candidates = []
    for p in people:
        kp = _person_keypoints(source, p, key) if isinstance(p, dict) else p
        arr = _person_array(source, kp)
        score = p.get("score") if isinstance(p, dict) else None
        if score is None:
            score = float(np.nan_to_num(arr[:, 2]).mean())
        candidates.append((float(score), kp))
    return max(candidates, key=lambda c: c[0])[1]


def _person_keypoints(source: Path, person: dict, key: str | None) -> Any:
    names = (key,) if key else ("keypoints", "pose_keypoints_2d")
    for name in names:
        if name in person:
            return person[name]
    raise BadInputError(source, f"person has none of the keys {list(names)} (keys: {sorted(person)[:8]})")


def _person_array(source: Path, kp: Any) -> np.ndarray:
    """Flat 3J list or nested J x 2 / J x 3 list -> (J, 3) with NaN for nulls."""
    try:
        arr = np.array([[np.nan if v is None else v for v in row] for row in kp] if kp and isinstance(kp[0], list)
                       else [np.nan if v is None else v for v in kp], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise BadInputError(source, f"keypoints are not numbers ({e})") from None
    if arr.ndim == 1:
        if arr.size % 3:
            raise BadInputError(source, f"a flat keypoint list needs 3 numbers per joint, got {arr.size}")
        arr = arr.reshape(-1, 3)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise BadInputError(source, f"keypoints must be J x 2 or J x 3, got shape {arr.shape}")
    if arr.shape[1] == 2:
        arr = np.concatenate([arr, np.ones((arr.shape[0], 1))], axis=1)
    return arr.astype(np.float32)


def _mark_missing(kp: np.ndarray) -> np.ndarray:
    """NaN coordinates and confidence 0 for every missing joint (either sign of missing)."""
    missing = ~keypoint_mask(kp)
    kp[missing, :-1] = np.nan
    kp[missing, -1] = 0.0
    return kp


# ------------------------------------------------------------------------------------------ NTU


def read_ntu_skeleton(path: str | Path, coords: Literal["color", "depth", "xyz"] = "color",
                      max_bodies: int = 2) -> np.ndarray:
    """Parse an NTU RGB+D ``.skeleton`` file -> (max_bodies, T, 25, D + 1) float32.

    Format (whitespace-separated tokens): frame count; per frame a body count; per body 10 values
    (bodyID, clipedEdges, hand states, isRestricted, leanX, leanY, trackingState), the joint count (25),
    then 12 values per joint: x y z (metres), depthX depthY, colorX colorY (pixels of the 1920x1080 RGB
    video), orientation w x y z, trackingState. ``coords`` picks colorX/colorY (D=2, the default: aligned
    with the RGB frames), depthX/depthY (D=2) or x/y/z (D=3). Confidence = joint trackingState mapped by
    ``NTU_TRACKING_CONFIDENCE`` (tracked 1, inferred 0.5, not tracked 0 = missing).

    Bodies are slotted by bodyID, the body present in the most frames first (ties: first seen), so slot 0
    is the main actor in every frame. Frames where a slot's body is absent are missing (NaN, confidence 0);
    bodies beyond ``max_bodies`` are dropped.
    """
    path = Path(path)
    if coords not in _NTU_COORDS:
        raise ValueError(f"coords must be one of {sorted(_NTU_COORDS)}, got {coords!r}")
    try:
        tokens = path.read_text(encoding="utf-8").split()
    except FileNotFoundError:
        raise BadInputError(path, "file not found") from None
    except UnicodeDecodeError as e:
        raise BadInputError(path, f"not a text .skeleton file ({e})") from None
    pos = 0

    def take(n: int, what: str) -> list[str]:
        nonlocal pos
        if pos + n > len(tokens):
            raise BadInputError(path, f"file ends early while reading {what} (token {pos} of {len(tokens)})")
        out = tokens[pos:pos + n]
        pos += n
        return out

    def take_int(what: str) -> int:
        (tok,) = take(1, what)
        try:
            return int(tok)
        except ValueError:
            raise BadInputError(path, f"expected an integer {what} at token {pos - 1}, got {tok!r}") from None

    num_frames = take_int("the frame count")
    frames: list[dict[str, np.ndarray]] = []
    for f in range(num_frames):
        bodies: dict[str, np.ndarray] = {}
        for b in range(take_int(f"the body count of frame {f}")):
            body_id = take(_NTU_BODY_FIELDS, f"body {b} of frame {f}")[0]
            num_joints = take_int(f"the joint count of body {b}, frame {f}")
            try:
                values = np.array(take(num_joints * _NTU_JOINT_FIELDS, f"the joints of body {b}, frame {f}"),
                                  dtype=np.float64).reshape(num_joints, _NTU_JOINT_FIELDS)
            except ValueError as e:
                raise BadInputError(path, f"non-numeric joint value in body {b}, frame {f} ({e})") from None
            bodies[body_id] = values
        frames.append(bodies)
    if pos != len(tokens):
        raise BadInputError(path, f"{len(tokens) - pos} unexpected tokens after the {num_frames} frames")
    joint_counts = {v.shape[0] for fr in frames for v in fr.values()}
    if len(joint_counts) > 1:
        raise BadInputError(path, f"bodies with different joint counts {sorted(joint_counts)}")
    num_joints = joint_counts.pop() if joint_counts else 25
    seen: dict[str, list[int]] = {}  # bodyID -> [frames present, first frame]
    for f, fr in enumerate(frames):
        for body_id in fr:
            seen.setdefault(body_id, [0, f])[0] += 1
    order = sorted(seen, key=lambda k: (-seen[k][0], seen[k][1]))[:max_bodies]
    cols = list(_NTU_COORDS[coords])
    out = np.full((max_bodies, num_frames, num_joints, len(cols) + 1), np.nan, dtype=np.float32)
    out[..., -1] = 0.0
    conf = np.vectorize(lambda s: NTU_TRACKING_CONFIDENCE.get(int(s), 0.0), otypes=[np.float64])
    for slot, body_id in enumerate(order):
        for f, fr in enumerate(frames):
            if body_id in fr:
                values = fr[body_id]
                out[slot, f, :, :-1] = values[:, cols]
                out[slot, f, :, -1] = conf(values[:, -1])
    return _mark_missing(out)


# ------------------------------------------------------------------------------------------ resampling


def resample_keypoints(keypoints: np.ndarray, steps: int | Sequence[int] | np.ndarray) -> np.ndarray:
    """(N, J, C) -> (T, J, C): ``steps`` = T (uniform indices, the frame sampler's rule) or explicit indices."""
    n = keypoints.shape[0]
    idx = uniform_indices(n, int(steps)) if np.isscalar(steps) else np.asarray(steps, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise IndexError(f"keypoint indices {idx.min()}..{idx.max()} outside 0..{n - 1}")
    return keypoints[idx]


# ------------------------------------------------------------------------------------------ normalisation


def normalize_keypoints(keypoints: Tensor | np.ndarray, layout: str | None = None,
                        center: Literal["mean", "joint"] = "mean",
                        scale: Literal["box", "torso", "none"] = "box",
                        reference: Literal["first", "frame"] = "first",
                        eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """(..., T, J, D + 1) keypoints -> (coords (..., T, J, D), mask (..., T, J) bool).

    coords = (p - c) / s for present joints and exactly 0 for missing ones, where
    - c: ``center="mean"`` the mean of the present joints; ``"joint"`` the mean of the layout's centre
      joints (all of them must be present). ``reference="first"``: c of the first frame where it exists,
      shared by all frames (motion relative to the start is kept); ``"frame"``: each frame's own c (frames
      without one use the first available). A sequence with no c at all uses c = 0.
    - s: ``scale="box"`` the longer side of the bounding box of all present joints of the sequence;
      ``"torso"`` the (lower) median over frames of the distance between the means of the layout's two torso
      groups; ``"none"`` 1. When s cannot be measured or is below ``eps``, s = 1.
    Works on numpy arrays too (returns tensors); no parameters, differentiable, device-agnostic.
    """
    kp = torch.as_tensor(keypoints)
    if not kp.is_floating_point():
        kp = kp.float()
    if kp.ndim < 3:
        raise ValueError(f"keypoints must be (..., T, J, D + 1), got {tuple(kp.shape)}")
    if center not in ("mean", "joint") or scale not in ("box", "torso", "none") or reference not in ("first", "frame"):
        raise ValueError(f"bad normalisation center={center!r} scale={scale!r} reference={reference!r}")
    spec = _layout(layout, kp.shape[-2]) if (center == "joint" or scale == "torso") else None
    mask = keypoint_mask(kp)
    xy = torch.where(mask.unsqueeze(-1), kp[..., :-1], torch.zeros_like(kp[..., :-1]))
    m = mask.unsqueeze(-1).to(xy.dtype)

    if center == "mean":
        c_frame, c_ok = _group_mean(xy, mask, None, need_all=False)
    else:
        c_frame, c_ok = _group_mean(xy, mask, spec["center"], need_all=True)
    c_first = _first_valid(c_frame, c_ok)  # (..., D)
    if reference == "first":
        c = c_first.unsqueeze(-2).expand_as(c_frame)
    else:
        c = torch.where(c_ok.unsqueeze(-1), c_frame, c_first.unsqueeze(-2))

    if scale == "box":
        big = torch.finfo(xy.dtype).max
        lo = torch.where(m.bool(), xy, torch.full_like(xy, big)).amin(dim=(-3, -2))
        hi = torch.where(m.bool(), xy, torch.full_like(xy, -big)).amax(dim=(-3, -2))
        side = (hi - lo).amax(dim=-1)
        s_ok = mask.flatten(-2).any(dim=-1)
        s = torch.where(s_ok, side, torch.ones_like(side))
    elif scale == "torso":
        a, a_ok = _group_mean(xy, mask, spec["torso"][0], need_all=True)
        b, b_ok = _group_mean(xy, mask, spec["torso"][1], need_all=True)
        length = torch.where(a_ok & b_ok, (a - b).norm(dim=-1), torch.full_like(a[..., 0], math.nan))
        s = length.nanmedian(dim=-1).values
        s = torch.where(torch.isfinite(s), s, torch.ones_like(s))
    else:
        s = torch.ones(xy.shape[:-3], dtype=xy.dtype, device=xy.device)
    s = torch.where(s > eps, s, torch.ones_like(s))

    out = (xy - c.unsqueeze(-2)) / s[..., None, None, None]
    return torch.where(mask.unsqueeze(-1), out, torch.zeros_like(out)), mask


def _layout(layout: str | None, num_joints: int) -> dict[str, Any]:
    if layout is None:
        raise ValueError("center='joint' and scale='torso' need a keypoint layout "
                         f"(one of {sorted(LAYOUTS)})")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown keypoint layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    spec = LAYOUTS[layout]
    if spec["num_joints"] != num_joints:
        raise ValueError(f"layout {layout!r} has {spec['num_joints']} joints, the keypoints have {num_joints}")
    return spec


def _group_mean(xy: Tensor, mask: Tensor, joints: Sequence[int] | None, need_all: bool) -> tuple[Tensor, Tensor]:
    """Mean position of a joint group per frame (..., T, D) and whether it exists (..., T)."""
    if joints is not None:
        xy, mask = xy[..., list(joints), :], mask[..., list(joints)]
    count = mask.sum(dim=-1)
    ok = mask.all(dim=-1) if need_all else count > 0
    mean = (xy * mask.unsqueeze(-1)).sum(dim=-2) / count.clamp(min=1).unsqueeze(-1)
    return mean, ok


def _first_valid(values: Tensor, ok: Tensor) -> Tensor:
    """(..., T, D), (..., T) -> (..., D): the value at the first frame where ok (zeros if none)."""
    first = ok.to(torch.int8).argmax(dim=-1)  # 0 when none is ok
    picked = values.gather(-2, first[..., None, None].expand(*values.shape[:-2], 1, values.shape[-1])).squeeze(-2)
    return torch.where(ok.any(dim=-1, keepdim=True), picked, torch.zeros_like(picked))


# ------------------------------------------------------------------------------------------ estimator
