"""Optical flow for the temporal stream: plain flow, camera-compensated "warp flow", motion maps.

Conventions (shared with data/clipstore.py and the loaders):

- A flow field is float32 (H, W, 2) in pixels, [..., 0] = x, [..., 1] = y, and means
  prev(p) ~ nxt(p + flow(p)) (OpenCV's convention for calcOpticalFlow*(prev, nxt)).
- Stored flow is 8-bit, the dense_flow convention: clip to +-bound (20 px), then
  u8 = round((f + bound) * 255 / (2 * bound)); 0 px maps to 127.5 -> 128.
- Warp flow (iDT, Wang & Schmid 2013; used by Ego-RNN): the camera motion between two frames is
  modelled as a homography estimated robustly from feature tracks (RANSAC, so the hands and the
  manipulated object are outliers), the next frame is warped back into the previous frame's
  coordinates, and the flow is computed between the previous frame and the warped next frame.
  What remains is the motion of things that move relative to the scene.

Methods: "dis" (fast, the default for preparing datasets), "tvl1" (what the papers used; about two
orders of magnitude slower), "farneback". OpenCV objects are created once per thread and reused.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

FLOW_BOUND = 20.0
FLOW_METHODS = ("dis", "tvl1", "farneback")

# DIS: the FAST preset refined down to half resolution (finest scale 1 instead of FAST's 2).
# Plain FAST (~450 pairs/s at 340x256) underestimates small fast objects (a 40 px square moving 7 px
# relative to the scene: 5.3 px); MEDIUM is as accurate as this setting but runs ~105-120 pairs/s on
# 2 loaded cores; FAST + finest scale 1 recovers 6.9 px and runs ~150 pairs/s.
DIS_PRESET = cv2.DISOpticalFlow_PRESET_FAST
DIS_FINEST_SCALE = 1

# Farneback parameters: the OpenCV sample values (pyramid 0.5, 3 levels, 15 px window, 3 iterations,
# poly_n 5, poly_sigma 1.2).
_FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2,
                  flags=0)

# Homography estimation from feature tracks.
_MAX_CORNERS = 500
_MIN_TRACKS = 12  # fewer tracks or inliers than this: too textureless to trust a homography
_RANSAC_REPROJ_PX = 1.0
_FB_ERROR_PX = 1.0  # forward-backward LK consistency: drop tracks that do not come back

_local = threading.local()  # OpenCV algorithm objects are not thread-safe: one set per thread


def _flow_object(method: str, shape: tuple[int, ...]):
    """The thread's OpenCV flow object for `method` and this frame size.

    One object per size: OpenCV's DIS keeps the buffers of its first frame size, and an object first
    used on small frames ran 4x slower on 340x256 ones (42 vs 170 pairs/s measured here).
    """
    cache = getattr(_local, "objects", None)
    if cache is None:
        cache = _local.objects = {}
    key = (method, tuple(shape))
    obj = cache.get(key)
    if obj is None:
        if method == "dis":
            obj = cv2.DISOpticalFlow_create(DIS_PRESET)
            obj.setFinestScale(DIS_FINEST_SCALE)
        elif method == "tvl1":
            # OpenCV defaults (tau 0.25, lambda 0.15, theta 0.3, 5 scales, 5 warps, epsilon 0.01):
            # the same main parameters as dense_flow's (GPU) TV-L1 that the papers used.
            obj = cv2.optflow.DualTVL1OpticalFlow_create()
        else:
            raise AssertionError(method)
        cache[key] = obj
    return obj


def _check_method(method: str) -> None:
    if method not in FLOW_METHODS:
        raise ValueError(f"unknown flow method {method!r}; choose one of {', '.join(FLOW_METHODS)}")


def to_gray(img: np.ndarray) -> np.ndarray:
    """uint8 (H, W) gray from gray (H, W) / (H, W, 1) or RGB (H, W, 3)."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    if img.ndim != 2:
        raise ValueError(f"a frame must be (H, W) gray or (H, W, 3) RGB, got shape {img.shape}")
    return np.ascontiguousarray(img)


def _pair(prev: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = to_gray(prev), to_gray(nxt)
    if a.shape != b.shape:
        raise ValueError(f"frames differ in size: {a.shape} vs {b.shape}")
    return a, b


def compute_flow(prev: np.ndarray, nxt: np.ndarray, method: str = "dis") -> np.ndarray:
    """Dense flow prev -> nxt, float32 (H, W, 2) px with prev(p) ~ nxt(p + flow(p))."""
    _check_method(method)
    a, b = _pair(prev, nxt)
    if method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(a, b, None, **_FARNEBACK)
    else:
        flow = _flow_object(method, a.shape).calc(a, b, None)
    return np.asarray(flow, dtype=np.float32)


def flow_to_uint8(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Float flow (..., 2) -> uint8 with the dense_flow mapping; values beyond +-bound saturate."""
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    f = np.clip(np.asarray(flow, dtype=np.float32), -bound, bound)
    return np.rint((f + bound) * (255.0 / (2.0 * bound))).astype(np.uint8)


def uint8_to_flow(u8: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Inverse of flow_to_uint8 (up to half a quantisation step, bound / 255 px)."""
    if bound <= 0:
        raise ValueError(f"bound must be positive, got {bound}")
    return (np.asarray(u8, dtype=np.float32) * (2.0 * bound / 255.0) - bound).astype(np.float32)


def estimate_homography(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray | None:
    """Camera motion as a 3x3 homography mapping prev pixel coordinates to nxt, or None.

    Corners (goodFeaturesToTrack) are tracked with pyramidal Lucas-Kanade, kept only if the backward
    track returns within 1 px, then fitted with RANSAC (1 px): the majority motion (the scene) wins
    and independently moving hands/objects are outliers. None when fewer than 12 reliable tracks or
    inliers remain (textureless or blurred frame); the caller decides the fallback and counts it.
    """
    a, b = _pair(prev, nxt)
    h, w = a.shape
    min_dist = max(3, int(round(min(h, w) / 40)))
    pts = cv2.goodFeaturesToTrack(a, maxCorners=_MAX_CORNERS, qualityLevel=0.01,
                                  minDistance=min_dist, blockSize=7)
    if pts is None or len(pts) < _MIN_TRACKS:
        return None
    lk = dict(winSize=(21, 21), maxLevel=3,
              criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    fwd, st1, _ = cv2.calcOpticalFlowPyrLK(a, b, pts, None, **lk)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(b, a, fwd, None, **lk)
    fb = np.linalg.norm((pts - back).reshape(-1, 2), axis=1)
    ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < _FB_ERROR_PX)
    if ok.sum() < _MIN_TRACKS:
        return None
    src, dst = pts[ok].reshape(-1, 2), fwd[ok].reshape(-1, 2)
    H, inliers = cv2.findHomography(src, dst, cv2.RANSAC, _RANSAC_REPROJ_PX, maxIters=2000,
                                    confidence=0.995)
    if H is None or inliers is None or int(inliers.sum()) < _MIN_TRACKS:
        return None
    if not np.all(np.isfinite(H)) or abs(H[2, 2]) < 1e-12:
        return None
    return (H / H[2, 2]).astype(np.float64)


def warp_flow(prev: np.ndarray, nxt: np.ndarray, method: str = "dis",
              homography: np.ndarray | None = None) -> np.ndarray:
    """Flow prev -> nxt with the camera motion removed, float32 (H, W, 2).

    `homography` maps prev coordinates to nxt (as from estimate_homography); None estimates it here
    and falls back to the identity (= plain flow) when estimation fails — use clip_flows, which
    counts those failures, when that matters. nxt is resampled at H(p) (so a static scene lines up
    with prev) and the flow is computed between prev and the warped nxt. Pixels whose H(p) falls
    outside nxt take the replicated border (no artificial black edge for the flow to chase) and
    their warp flow is then set to 0: there is no observation of them, so they count as static.
    """
    _check_method(method)
    a, b = _pair(prev, nxt)
    if homography is None:
        homography = estimate_homography(a, b)
    if homography is None:
        return compute_flow(a, b, method)
    H = np.asarray(homography, dtype=np.float64)
    if H.shape != (3, 3):
        raise ValueError(f"homography must be 3x3, got {H.shape}")
    h, w = a.shape
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP  # dst(p) = nxt(H p)
    warped = cv2.warpPerspective(b, H, (w, h), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    flow = compute_flow(a, warped, method)
    inside = cv2.warpPerspective(np.ones((h, w), np.uint8), H, (w, h),
                                 flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    flow[inside == 0] = 0.0
    return flow


def motion_map(wflow: np.ndarray, low: float = 0.5, high: float = 3.0) -> np.ndarray:
    """(H, W) uint8 graded motion from the warp-flow magnitude m: 0 if m <= low, 255 if m >= high.

    Linear in between. `low` sits above the residual error of flow and homography on static scene
    (~0.1-0.3 px), so static pixels read 0; `high` is a clearly visible motion for a hand at 30 fps.
    A graded map keeps the confidence, and the motion-segmentation head thresholds it at tau.
    """
    if not 0 <= low < high:
        raise ValueError(f"need 0 <= low < high, got low={low}, high={high}")
    f = np.asarray(wflow, dtype=np.float32)
    mag = np.sqrt(f[..., 0] ** 2 + f[..., 1] ** 2)
    return np.rint(np.clip((mag - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)


def clip_flows(frames: np.ndarray, method: str = "dis", warp: bool = True, motion: bool = True,
               bound: float = FLOW_BOUND) -> dict[str, np.ndarray | int]:
    """All flow modalities of one clip, frames (T, H, W, 3) uint8 RGB, T >= 2.

    Returns "flow" (T-1, H, W, 2) uint8; "warp" (T-1, H, W, 2) uint8 if warp; "motion" (T, H, W)
    uint8 if motion (frame t from the warp flow t -> t+1, the last frame repeats the previous map);
    and "homography_failures" (int: pairs whose camera motion fell back to identity) whenever warp
    flow was computed. Flow index i is frame i -> i+1.
    """
    _check_method(method)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 RGB, got {frames.shape} "
                         f"{frames.dtype}")
    if len(frames) < 2:
        raise ValueError(f"need at least 2 frames for flow, got {len(frames)}")
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    n = len(gray) - 1
    need_warp = warp or motion
    flows, warps, maps, failures = [], [], [], 0
    for i in range(n):
        a, b = gray[i], gray[i + 1]
        flows.append(flow_to_uint8(compute_flow(a, b, method), bound))
        if need_warp:
            H = estimate_homography(a, b)
            if H is None:
                failures += 1
                H = np.eye(3)
            wf = warp_flow(a, b, method, H)
            if warp:
                warps.append(flow_to_uint8(wf, bound))
            if motion:
                maps.append(motion_map(wf))
    out: dict[str, np.ndarray | int] = {"flow": np.stack(flows)}
    if warp:
        out["warp"] = np.stack(warps)
    if motion:
        out["motion"] = np.stack(maps + [maps[-1]])
    if need_warp:
        out["homography_failures"] = failures
    return out


def endpoint_error(flow: np.ndarray, ref: np.ndarray) -> float:
    """Mean endpoint error (px): mean over pixels of |flow - ref|."""
    flow, ref = np.asarray(flow, np.float64), np.asarray(ref, np.float64)
    if flow.shape != ref.shape or flow.shape[-1] != 2:
        raise ValueError(f"flow shapes must match and end in 2, got {flow.shape} vs {ref.shape}")
    return float(np.mean(np.linalg.norm(flow - ref, axis=-1)))
