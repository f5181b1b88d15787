"""Optical flow, 8-bit flow images, homography, warp flow and motion maps (egoattn.data.flow)."""

from __future__ import annotations


import cv2
import numpy as np
import pytest

import paths

from egoattn.data import flow as F

REAL = paths.REAL / "frames"


def texture(h: int, w: int, seed: int, sigma: float = 2.0) -> np.ndarray:
    """Smoothed random noise stretched to 0..255: texture at every pixel, like a busy scene."""
    r = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    r = cv2.GaussianBlur(r, (0, 0), sigma)
    return np.rint((r - r.min()) / (r.max() - r.min()) * 255).astype(np.uint8)


def translated(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """nxt with nxt(p + d) = img(p), i.e. a true flow of exactly (dx, dy) everywhere."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(img, m, (img.shape[1], img.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def constant_flow(shape: tuple[int, int], dx: float, dy: float) -> np.ndarray:
    f = np.empty(shape + (2,), np.float32)
    f[..., 0], f[..., 1] = dx, dy
    return f


# --- plain flow -------------------------------------------------------------------------------


@pytest.mark.parametrize("method,size", [("dis", (128, 160)), ("farneback", (128, 160)),
                                         ("tvl1", (64, 80))])
def test_subpixel_translation_is_recovered(method: str, size: tuple[int, int]) -> None:
    h, w = size
    prev = texture(h, w, seed=0)
    nxt = translated(prev, 2.3, -1.7)
    flow = F.compute_flow(prev, nxt, method)
    assert flow.shape == (h, w, 2) and flow.dtype == np.float32
    m = 12  # interior: the border has no correspondence for part of the shift
    epe = F.endpoint_error(flow[m:-m, m:-m], constant_flow((h - 2 * m, w - 2 * m), 2.3, -1.7))
    assert epe < 0.5, f"{method}: EPE {epe:.3f} px"
    # direction convention: x first, and prev(p) ~ nxt(p + flow(p))
    assert flow[m:-m, m:-m, 0].mean() == pytest.approx(2.3, abs=0.3)
    assert flow[m:-m, m:-m, 1].mean() == pytest.approx(-1.7, abs=0.3)


def test_rgb_input_is_converted_to_gray() -> None:
    gray = texture(64, 80, seed=3)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    nxt = translated(gray, 1.0, 0.5)
    a = F.compute_flow(rgb, np.repeat(nxt[..., None], 3, axis=2), "dis")
    b = F.compute_flow(gray, nxt, "dis")
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_unknown_method_lists_the_methods() -> None:
    img = texture(32, 32, seed=0)
    with pytest.raises(ValueError, match="dis, tvl1, farneback"):
        F.compute_flow(img, img, "raft")
    with pytest.raises(ValueError, match="size"):
        F.compute_flow(img, img[:16], "dis")


def test_flow_objects_are_created_once_per_thread_and_frame_size() -> None:
    img = texture(32, 32, seed=0)
    F.compute_flow(img, img, "dis")
    first = F._flow_object("dis", img.shape)
    F.compute_flow(img, img, "dis")
    assert F._flow_object("dis", img.shape) is first
    # another size gets its own object (DIS keeps the buffers of its first size: 4x slower otherwise)
    big = texture(64, 48, seed=1)
    F.compute_flow(big, big, "dis")
    assert F._flow_object("dis", big.shape) is not first


# --- 8-bit flow images ------------------------------------------------------------------------


def test_uint8_round_trip_within_half_a_step() -> None:
    rng = np.random.default_rng(0)
    for bound in (20.0, 7.5):
        flow = rng.uniform(-bound, bound, size=(50, 40, 2)).astype(np.float32)
        u8 = F.flow_to_uint8(flow, bound)
        assert u8.dtype == np.uint8 and u8.shape == flow.shape
        back = F.uint8_to_flow(u8, bound)
        assert back.dtype == np.float32
        half_step = bound / 255.0  # one step is 2 * bound / 255
        assert np.abs(back - flow).max() <= half_step + 1e-5


def test_uint8_dense_flow_values_and_clipping() -> None:
    flow = np.array([[[-25.0, -20.0], [0.0, 10.0], [20.0, 33.0]]], np.float32)
    u8 = F.flow_to_uint8(flow)  # bound 20: u8 = round((f + 20) * 255 / 40)
    np.testing.assert_array_equal(u8, [[[0, 0], [128, 191], [255, 255]]])
    np.testing.assert_allclose(F.uint8_to_flow(np.array([0, 255], np.uint8)), [-20.0, 20.0])


# --- homography and warp flow -----------------------------------------------------------------


def test_homography_recovers_rotation_and_translation() -> None:
    h, w = 128, 160
    prev = texture(h, w, seed=1)
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 2.0, 1.0)  # 2 degrees about the centre
    H_true = np.vstack([rot, [0, 0, 1]])
    H_true[:2, 2] += (3.0, -2.0)
    nxt = cv2.warpPerspective(prev, H_true, (w, h), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REFLECT)  # nxt(H p) = prev(p)
    H = F.estimate_homography(prev, nxt)
    assert H is not None and H.shape == (3, 3)
    corners = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]).reshape(-1, 1, 2)
    got = cv2.perspectiveTransform(corners, H)
    want = cv2.perspectiveTransform(corners, H_true)
    err = np.linalg.norm((got - want).reshape(-1, 2), axis=1)
    assert err.max() < 0.5, f"corner errors {err}"


def test_homography_is_none_on_a_textureless_frame() -> None:
    flat = np.full((64, 80), 100, np.uint8)
    assert F.estimate_homography(flat, flat) is None


def pan_scene(cam: tuple[float, float], obj_shift: tuple[int, int]):
    """Background panned by `cam` px (camera motion) with a 40 px textured square moving by
    `obj_shift` px in the image. Returns prev, nxt, object-interior mask, background mask."""
    h, w, m, s = 128, 160, 16, 40
    scene = texture(h + 2 * m, w + 2 * m, seed=1)
    square = texture(s, s, seed=2, sigma=1.5)
    x0, y0 = 60, 44

    def frame(shift: tuple[float, float], x: int, y: int) -> np.ndarray:
        a = np.float32([[1, 0, shift[0] - m], [0, 1, shift[1] - m]])
        f = cv2.warpAffine(scene, a, (w, h), flags=cv2.INTER_LINEAR)
        f[y:y + s, x:x + s] = square
        return f

    prev = frame((0.0, 0.0), x0, y0)
    nxt = frame(cam, x0 + obj_shift[0], y0 + obj_shift[1])
    inner = np.zeros((h, w), bool)
    inner[y0 + 6:y0 + s - 6, x0 + 6:x0 + s - 6] = True  # flow is smoothed across the square's edge
    near_obj = np.zeros((h, w), np.uint8)
    near_obj[y0:y0 + s, x0:x0 + s] = 1
    background = ~cv2.dilate(near_obj, np.ones((17, 17), np.uint8)).astype(bool)
    b = 12  # away from the borders that the pan uncovers
    background[:b], background[-b:] = False, False
    background[:, :b], background[:, -b:] = False, False
    return prev, nxt, inner, background


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_warp_flow_removes_the_camera_pan_and_keeps_the_object(method: str) -> None:
    cam, obj = (3.0, 0.0), (-4, 0)  # the square moves 4 px the other way in the image
    prev, nxt, inner, background = pan_scene(cam, obj)
    plain = F.compute_flow(prev, nxt, method)
    assert plain[background, 0].mean() == pytest.approx(3.0, abs=0.3)  # the pan is really there
    wflow = F.warp_flow(prev, nxt, method)  # homography estimated inside
    residual = np.linalg.norm(wflow[background], axis=1).mean()
    assert residual < 0.5, f"background residual {residual:.3f} px"
    relative = np.array(obj, np.float32) - np.array(cam, np.float32)  # (-7, 0)
    got = wflow[inner].mean(axis=0)
    assert np.linalg.norm(got - relative) < 1.0, f"object {got} vs {relative}"


def test_warp_flow_with_given_homography_zeroes_unobserved_border() -> None:
    prev = texture(64, 80, seed=4)
    nxt = translated(prev, 5.0, 0.0)
    H = np.array([[1, 0, 5.0], [0, 1, 0], [0, 0, 1]])
    wflow = F.warp_flow(prev, nxt, "dis", H)
    assert np.all(wflow[:, -5:] == 0)  # H p falls outside nxt: reported static, not chased
    assert np.linalg.norm(wflow[8:-8, 8:-8], axis=-1).mean() < 0.2
    with pytest.raises(ValueError, match="3x3"):
        F.warp_flow(prev, nxt, "dis", np.eye(2))


# --- motion maps ------------------------------------------------------------------------------


def test_motion_map_ramp() -> None:
    mags = np.array([0.0, 0.5, 1.75, 3.0, 9.0], np.float32)
    flow = np.stack([mags * 0.6, mags * 0.8], axis=-1)[None]  # |(0.6 m, 0.8 m)| = m
    np.testing.assert_array_equal(F.motion_map(flow)[0], [0, 0, 128, 255, 255])
    with pytest.raises(ValueError):
        F.motion_map(flow, low=3.0, high=1.0)


def test_motion_map_is_static_on_background_and_high_on_the_object() -> None:
    prev, nxt, inner, background = pan_scene((3.0, 0.0), (-4, 0))
    m = F.motion_map(F.warp_flow(prev, nxt, "dis"))
    assert m.shape == prev.shape and m.dtype == np.uint8
    assert m[background].mean() < 10 and (m[background] == 0).mean() > 0.9
    assert m[inner].mean() > 240


# --- whole clips ------------------------------------------------------------------------------


def test_clip_flows_shapes_keys_and_motion_of_last_frame() -> None:
    base = texture(48, 64, seed=5)
    frames = np.stack([np.repeat(translated(base, 1.5 * t, 0.0)[..., None], 3, axis=2)
                       for t in range(4)])
    out = F.clip_flows(frames, "dis")
    assert set(out) == {"flow", "warp", "motion", "homography_failures"}
    assert out["flow"].shape == (3, 48, 64, 2) and out["flow"].dtype == np.uint8
    assert out["warp"].shape == (3, 48, 64, 2) and out["motion"].shape == (4, 48, 64)
    np.testing.assert_array_equal(out["motion"][3], out["motion"][2])
    assert out["homography_failures"] == 0
    flow = F.uint8_to_flow(out["flow"])
    assert flow[:, 8:-8, 8:-8, 0].mean() == pytest.approx(1.5, abs=0.2)  # plain flow keeps the pan
    assert np.abs(F.uint8_to_flow(out["warp"])[:, 8:-8, 8:-8]).mean() < 0.2  # warp flow removes it
    only = F.clip_flows(frames, "farneback", warp=False, motion=False)
    assert set(only) == {"flow"}
    with pytest.raises(ValueError, match="2 frames"):
        F.clip_flows(frames[:1])


def test_clip_flows_counts_homography_failures() -> None:
    frames = np.full((3, 32, 40, 3), 90, np.uint8)  # textureless: no features to track
    out = F.clip_flows(frames, "dis", warp=True, motion=False)
    assert out["homography_failures"] == 2
    assert "motion" not in out and out["warp"].shape == (2, 32, 40, 2)


def test_endpoint_error() -> None:
    a = np.zeros((2, 3, 2), np.float32)
    b = constant_flow((2, 3), 3.0, 4.0)
    assert F.endpoint_error(a, b) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        F.endpoint_error(a, b[:1])


# --- real frames ------------------------------------------------------------------------------


def real_gray(i: int) -> np.ndarray:
    img = cv2.imread(str(REAL / f"img_{i:05d}.jpg"), cv2.IMREAD_GRAYSCALE)
    assert img is not None, f"missing {REAL}/img_{i:05d}.jpg"
    return img


def real_reference(i: int, bound: float = F.FLOW_BOUND) -> np.ndarray:
    x = cv2.imread(str(REAL / f"x_{i:05d}.jpg"), cv2.IMREAD_GRAYSCALE)
    y = cv2.imread(str(REAL / f"y_{i:05d}.jpg"), cv2.IMREAD_GRAYSCALE)
    return F.uint8_to_flow(np.dstack([x, y]), bound)


def photometric_error(prev: np.ndarray, nxt: np.ndarray, flow: np.ndarray) -> float:
    """Mean |prev(p) - nxt(p + flow(p))| in gray levels, 8 px border excluded."""
    h, w = prev.shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(nxt, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
    return float(np.abs(prev.astype(np.float32) - warped)[8:-8, 8:-8].mean())


needs_real = pytest.mark.skipif(not REAL.is_dir(), reason="real sample frames not present")


@needs_real
@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_real_frames_flow_explains_the_motion(method: str) -> None:
    """On real frames with a moving hand, warping nxt by the flow must explain most of the change.

    Pairs 1->2 and 5->6 differ by 4.6 and 3.5 gray levels without motion compensation; JPEG noise
    leaves ~0.9 even for TV-L1, so a correct flow brings the residual below 60% of the zero-flow
    one (measured: DIS 1.6 and 1.0, Farneback 1.8 and 1.2).
    """
    for i in (1, 5):
        a, b = real_gray(i), real_gray(i + 1)
        zero = photometric_error(a, b, np.zeros(a.shape + (2,), np.float32))
        ours = photometric_error(a, b, F.compute_flow(a, b, method))
        assert ours < 0.6 * zero, f"pair {i}: {ours:.2f} vs zero flow {zero:.2f}"


@needs_real
def test_real_frames_agree_with_opencv_tvl1() -> None:
    """DIS and Farneback against TV-L1 (the papers' method) on a real pair with hand motion up to
    ~5 px: agreement within 0.5 px mean EPE (a third of a 1.5 px typical motion) is required."""
    a, b = real_gray(1), real_gray(2)
    ref = F.compute_flow(a, b, "tvl1")
    for method in ("dis", "farneback"):
        epe = F.endpoint_error(F.compute_flow(a, b, method), ref)
        print(f"EPE {method} vs OpenCV TV-L1, real pair 1->2: {epe:.3f} px")
        assert epe < 0.5


@needs_real
def test_real_frames_against_shipped_tvl1_flow() -> None:
    """The shipped x/y_0000N.jpg TV-L1 images, decoded with the dense_flow convention (bound 20).

    They do not describe the motion of the shipped img_ frames: on the moving pairs they explain
    the frames worse than zero flow (photometric error >= 5.4 vs 4.6 gray levels on pair 1, for
    bounds 5-40 px, either sign, either frame order), so EPE against them is only meaningful where
    the frames are near-duplicates (pairs 2->3 and 4->5, mean frame difference ~0.1): there the
    decoded reference must be ~0, which pins the centre at 127.5 (rules out a 0-centred or a
    per-frame min-max mapping), and our flows must agree with it within 0.25 px (1.6 quantisation
    steps of 0.157 px, plus JPEG noise). The bound itself cannot be identified from these files
    (on the moving pairs a smaller bound always "wins" by shrinking a wrong reference towards 0);
    20, the dense_flow / mmaction2 default, is assumed. Measured EPEs are printed (-s).
    """
    for i in (1, 2, 3, 4, 5):
        a, b = real_gray(i), real_gray(i + 1)
        ref = real_reference(i)
        epes = {m: F.endpoint_error(F.compute_flow(a, b, m), ref) for m in ("dis", "farneback")}
        print(f"pair {i}->{i + 1}: EPE vs shipped TV-L1 " +
              ", ".join(f"{m} {e:.3f} px" for m, e in epes.items()))
        if i in (2, 4):
            assert max(epes.values()) < 0.25


@needs_real
def test_real_static_camera_gives_near_identity_homography() -> None:
    """The background is static (plain-flow median 0); RANSAC must reject the moving hand."""
    a, b = real_gray(1), real_gray(2)
    H = F.estimate_homography(a, b)
    assert H is not None
    h, w = a.shape
    corners = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]).reshape(-1, 1, 2)
    moved = np.linalg.norm((cv2.perspectiveTransform(corners, H) - corners).reshape(-1, 2), axis=1)
    assert moved.max() < 1.0, f"corner displacement {moved}"
