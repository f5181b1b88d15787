"""Clip transforms keep every modality aligned, flip x-flow, and normalise with the references' numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egoattn.data.transforms import (
    CenterCrop,
    Compose,
    MultiScaleCornerCrop,
    Normalize,
    RandomHorizontalFlip,
    Resize,
    ResizeFlow,
    ToTensorClip,
    hflip,
    test_transform,
    train_transform,
)

H, W, T = 60, 80, 3
ROWS, COLS = slice(12, 24), slice(50, 62)  # the marker square, centre (x, y) = (55.5, 17.5)


def marker_clip() -> dict:
    """A square marker at the same place in every modality; flow x/y background 100, marker 200."""
    rgb = np.zeros((T, H, W, 3), np.uint8)
    rgb[:, ROWS, COLS] = 255
    flow = np.full((1, T, H, W, 2), 100, np.uint8)
    flow[:, :, ROWS, COLS] = 200
    motion = np.zeros((T, H, W), np.uint8)
    motion[:, ROWS, COLS] = 255
    mask = np.zeros((T, H, W), np.uint8)
    mask[:, ROWS, COLS] = 1
    keypoints = np.zeros((T, 2, 3), np.float32)
    keypoints[:, 0] = (55.5, 17.5, 1.0)
    keypoints[:, 1] = (0.0, 0.0, 0.0)  # a missing joint keeps confidence 0
    return {"rgb": rgb, "flow": flow, "flow_pair": flow[0].copy(), "motion": motion, "mask": mask,
            "keypoints": keypoints, "label": 3, "clip_id": "c"}


def centroid(on: np.ndarray) -> tuple[float, float] | None:
    ys, xs = np.nonzero(on)
    return (float(xs.mean()), float(ys.mean())) if len(xs) else None


def test_crop_flip_resize_keep_modalities_aligned() -> None:
    t = Compose((Resize(48), RandomHorizontalFlip(0.5), MultiScaleCornerCrop(32)))
    flips = checked = 0
    for seed in range(40):
        out = t(marker_clip(), np.random.default_rng(seed))
        assert out["rgb"].shape == (T, 32, 32, 3) and out["flow"].shape == (1, T, 32, 32, 2)
        assert out["motion"].shape == out["mask"].shape == (T, 32, 32) and out["frame_size"] == (32, 32)
        fx = out["flow"][0, 0, ..., 0].astype(int)
        flipped = abs(int(np.median(fx)) - 155) < 2  # background x-flow 100 becomes 255 - 100
        assert flipped or abs(int(np.median(fx)) - 100) < 2
        flips += flipped
        kx, ky = out["keypoints"][0, 0, :2]
        assert out["keypoints"][0, 1, 2] == 0 and out["keypoints"][0, 0, 2] == 1
        if not (4 <= kx <= 27 and 4 <= ky <= 27):  # marker (>= 5 px wide) cut by the crop: skip
            continue
        checked += 1
        ref = centroid(out["rgb"][0, ..., 0] > 127)
        assert ref is not None
        marker_x = fx < 128 if flipped else fx > 150  # inverted marker 255 - 200 = 55
        others = {
            "flow x": marker_x,
            "flow y": out["flow"][0, 0, ..., 1] > 150,
            "flow_pair x": out["flow_pair"][0, ..., 0] < 128 if flipped else out["flow_pair"][0, ..., 0] > 150,
            "motion": out["motion"][0] > 127,
            "mask": out["mask"][0] > 0,
        }
        for name, on in others.items():
            c = centroid(on)
            assert c is not None and abs(c[0] - ref[0]) < 0.6 and abs(c[1] - ref[1]) < 0.6, (seed, name, c, ref)
        assert abs(kx - ref[0]) < 0.6 and abs(ky - ref[1]) < 0.6, (seed, kx, ky, ref)
        if flipped:  # inverted marker value on the x-flow, y-flow untouched
            assert abs(int(np.median(out["flow"][0, 0, ..., 0][marker_x])) - 55) <= 2
            assert abs(int(np.median(out["flow"][0, 0, ..., 1])) - 100) <= 1
    assert 5 < flips < 35 and checked >= 8


def test_hflip_exact() -> None:
    clip = marker_clip()
    clip["flow"][0, 1, 5, 7] = (10, 20)
    out = hflip(clip)
    np.testing.assert_array_equal(out["rgb"], clip["rgb"][:, :, ::-1])
    np.testing.assert_array_equal(out["mask"], clip["mask"][:, :, ::-1])
    assert tuple(out["flow"][0, 1, 5, W - 1 - 7]) == (245, 20)
    assert out["keypoints"][0, 0, 0] == pytest.approx(W - 1 - 55.5)
    assert centroid(out["mask"][0] > 0) == pytest.approx((W - 1 - 55.5, 17.5))


def test_resize_scales_keypoints_with_the_image() -> None:
    out = Resize(30)(marker_clip())  # 60x80 -> 30x40, marker -> cols 25..30, rows 6..11
    assert out["rgb"].shape == (T, 30, 40, 3)
    c = centroid(out["mask"][0] > 0)
    assert c == pytest.approx((27.5, 8.5), abs=0.01)  # cols 25..30, rows 6..11
    assert tuple(out["keypoints"][0, 0, :2]) == pytest.approx(((55.5 + 0.5) / 2 - 0.5, (17.5 + 0.5) / 2 - 0.5))


def test_keypoints_without_images_use_frame_size() -> None:
    clip = {"keypoints": marker_clip()["keypoints"], "frame_size": (H, W)}
    out = RandomHorizontalFlip(1.0)(clip, np.random.default_rng(0))
    assert out["keypoints"][0, 0, 0] == pytest.approx(W - 1 - 55.5)


def test_multiscale_corner_boxes() -> None:
    crop = MultiScaleCornerCrop(32)
    assert crop.box(48, 64, 0.75, "br") == (28, 12, 36, 36)
    assert crop.box(48, 64, 0.75, "c") == (14, 6, 36, 36)
    assert crop.box(48, 64, 0.65625, "tr") == (33, 0, 31, 31)
    assert crop.box(48, 64, 1.0, "bl") == (0, 0, 48, 48)
    frame = np.arange(48 * 64, dtype=np.int64).reshape(48, 64)
    clip = {"mask": (frame % 251).astype(np.uint8)[None], "frame_size": (48, 64)}
    firsts = set()
    rng = np.random.default_rng(0)
    for _ in range(200):  # every scale and position is drawn: 20 distinct top-left pixels
        firsts.add(int(MultiScaleCornerCrop(32)(clip, rng)["mask"][0, 0, 0]))
    assert len(firsts) >= 15
    out = crop(clip, None)  # no rng: scale 1 at the centre -> 48x48 at x0 = 8, resized to 32
    assert out["mask"].shape == (1, 32, 32)


def test_normalize_numbers() -> None:
    clip = ToTensorClip()({"rgb": np.full((1, 2, 2, 3), 128, np.uint8), "flow": np.full((1, 1, 2, 2, 2), 255, np.uint8),
                           "motion": np.full((1, 2, 2), 51, np.uint8), "mask": np.array([[[0, 1], [255, 0]]], np.uint8)})
    out = Normalize()(clip)
    assert out["rgb"].dtype == torch.float32 and out["rgb"].shape == (1, 3, 2, 2)
    assert out["rgb"][0, :, 0, 0].tolist() == pytest.approx([(128 / 255 - m) / s for m, s in
                                                            zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))], rel=1e-6)
    assert out["flow"][0, 0, 0, 0] == pytest.approx((1 - 0.449) / 0.226, rel=1e-6)
    assert out["motion"].dtype == torch.float32 and out["motion"][0, 0, 0] == pytest.approx(0.2)
    assert out["mask"][0].tolist() == [[0.0, 1.0], [1.0, 0.0]]


def test_normalize_refuses_what_is_not_the_loaders_uint8() -> None:
    """Normalising twice would shift every input silently; a float tensor or a numpy array is an error."""
    with pytest.raises(ValueError, match="'rgb'.*float32"):
        Normalize()({"rgb": torch.zeros(1, 3, 2, 2)})
    with pytest.raises(ValueError, match="'flow'"):
        Normalize()({"flow": np.zeros((1, 2, 2, 2), np.uint8)})


def test_normalize_for_model_reads_the_backbones_mean_and_std() -> None:
    backbone = torch.nn.Conv2d(3, 4, 1)
    backbone.mean, backbone.std = (0.5, 0.5, 0.5), (0.25, 0.5, 0.5)
    assert Normalize.for_model(torch.nn.Sequential(torch.nn.Identity(), backbone)) == Normalize((0.5,) * 3, (0.25, 0.5, 0.5))
    assert Normalize.for_model(torch.nn.Linear(2, 2)) == Normalize()  # none: ImageNet


def test_to_tensor_interleaves_flow_stacks() -> None:
    s, l = 2, 3
    flow = np.zeros((s, l, 4, 5, 2), np.uint8)
    for i in range(s):
        for j in range(l):
            flow[i, j, ..., 0] = 100 * i + 10 * j  # x of flow j in stack i
            flow[i, j, ..., 1] = 100 * i + 10 * j + 1  # y
    out = ToTensorClip()({"flow": flow, "rgb": np.zeros((5, 4, 6, 3), np.float32), "label": 2,
                          "frame_indices": np.arange(5), "clip_id": "a", "frame_size": (4, 6)})
    assert out["flow"].shape == (s, 2 * l, 4, 5)
    assert out["flow"][:, :, 0, 0].tolist() == [[0, 1, 10, 11, 20, 21], [100, 101, 110, 111, 120, 121]]
    assert out["rgb"].shape == (5, 3, 4, 6)
    assert out["label"].dtype == torch.int64 and int(out["label"]) == 2
    assert out["frame_indices"].dtype == torch.int64 and "frame_size" not in out and out["clip_id"] == "a"


def test_builders_train_and_test() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (4, 48, 64, 3), dtype=np.uint8)
    out = test_transform(32, resize=48)({"rgb": rgb.copy()}, None)
    assert out["rgb"].shape == (4, 3, 32, 32) and out["rgb"].dtype == torch.uint8  # Normalize follows on the device
    np.testing.assert_array_equal(out["rgb"].numpy(), np.moveaxis(rgb[:, 8:40, 16:48], -1, 1))  # centre crop 32 of 48x64
    a = train_transform(32, resize=48)({"rgb": rgb.copy()}, np.random.default_rng(1))
    b = train_transform(32, resize=48)({"rgb": rgb.copy()}, np.random.default_rng(1))
    assert a["rgb"].shape == (4, 3, 32, 32) and torch.equal(a["rgb"], b["rgb"])
    # no rng: the deterministic path (no flip, scale 1 centre crop)
    c = train_transform(32, resize=48)({"rgb": rgb.copy()}, None)
    d = train_transform(32, resize=48)({"rgb": rgb.copy()}, None)
    assert torch.equal(c["rgb"], d["rgb"])


def test_flow_size_resizes_the_flow_crop_only() -> None:
    """data.flow_size: the flow shows the RGB's crop box, at its own side; the other modalities keep theirs."""
    clip = marker_clip()
    out = test_transform(40, resize=60, flow_size=20)(clip, None)
    assert out["rgb"].shape == (T, 3, 40, 40) and out["motion"].shape == (T, 40, 40)
    assert out["flow_pair"].shape == (T, 2, 20, 20)
    cropped = CenterCrop(40)(Resize(60)(marker_clip()))
    expected = ResizeFlow(20)(cropped)["flow_pair"]
    assert expected.shape == (T, 20, 20, 2)
    on = expected[0, :, :, 0] > 150  # the marker, at half the RGB crop's coordinates
    rgb_on = cropped["rgb"][0, :, :, 0] > 127
    np.testing.assert_allclose(np.array(centroid(on)), (np.array(centroid(rgb_on)) + 0.5) / 2 - 0.5, atol=0.5)
    same = test_transform(40, resize=60, flow_size=40)(marker_clip(), None)
    assert same["flow_pair"].shape == (T, 2, 40, 40)


def test_center_crop_too_large() -> None:
    with pytest.raises(ValueError, match="larger than"):
        CenterCrop(64)({"rgb": np.zeros((1, 48, 60, 3), np.uint8)})


# --- cost: uint8 until Normalize, one float conversion, no copy into the tensor ------------------------


@pytest.mark.parametrize("mean,std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,) * 3, (0.5,) * 3)])
def test_normalize_equals_the_numpy_formula_bit_for_bit(mean, std):
    """Every uint8 value in every channel: torch's in-place passes give numpy's float32 values exactly."""
    values = np.arange(256, dtype=np.uint8)
    rgb = np.stack([values, values[::-1], np.roll(values, 7)], -1).reshape(2, 8, 16, 3)
    flow = np.stack([values, values[::-1]], -1).reshape(1, 2, 8, 16, 2)
    out = Normalize(mean, std)(ToTensorClip()({"rgb": rgb, "flow": flow}), None)
    expected = np.moveaxis((rgb.astype(np.float32) / 255.0 - np.float32(mean)) / np.float32(std), -1, -3)
    expected_flow = ((flow.astype(np.float32) / 255.0 - np.float32(0.449)) / np.float32(0.226)
                     ).transpose(0, 1, 4, 2, 3).reshape(1, 4, 8, 16)
    assert out["rgb"].dtype == torch.float32 and out["rgb"].is_contiguous()
    np.testing.assert_array_equal(out["rgb"].numpy(), expected)
    np.testing.assert_array_equal(out["flow"].numpy(), expected_flow)
    # A flipped (negative-stride) view is accepted too, and a batch (B, T, C, H, W) as well as a clip.
    flipped = ToTensorClip()({"rgb": rgb[:, :, ::-1]})
    np.testing.assert_array_equal(Normalize(mean, std)(flipped)["rgb"].numpy(), expected[..., ::-1])
    batch = torch.stack([ToTensorClip()({"rgb": rgb})["rgb"]] * 2)
    np.testing.assert_array_equal(Normalize(mean, std)({"rgb": batch})["rgb"].numpy(), np.stack([expected] * 2))


def test_images_become_tensors_without_a_copy():
    """ToTensorClip's (T, 3, H, W) uint8 tensor is a view of the cropped frames; the collate's stack is the
    one copy (in the frames' memory order), and Normalize's output is contiguous."""
    rgb = np.random.default_rng(0).integers(0, 256, (3, 10, 12, 3), dtype=np.uint8)
    tensor = ToTensorClip()({"rgb": rgb}, None)["rgb"]
    assert tensor.shape == (3, 3, 10, 12) and tensor.dtype == torch.uint8
    assert np.shares_memory(tensor.numpy(), rgb)
    np.testing.assert_array_equal(tensor.numpy(), np.moveaxis(rgb, -1, -3))
    batch = torch.utils.data.default_collate([{"rgb": tensor}, {"rgb": tensor}])["rgb"]
    assert batch.shape == (2, 3, 3, 10, 12) and torch.equal(batch[1], tensor)
    assert Normalize()({"rgb": batch})["rgb"].is_contiguous()


def test_hflip_equals_reversing_the_width_axis():
    rng = np.random.default_rng(1)
    clip = {"rgb": rng.integers(0, 256, (3, 9, 13, 3), dtype=np.uint8),
            "flow": rng.integers(0, 256, (2, 3, 9, 13, 2), dtype=np.uint8),
            "mask": rng.integers(0, 2, (3, 9, 13), dtype=np.uint8)}
    out = hflip(clip)
    np.testing.assert_array_equal(out["rgb"], clip["rgb"][:, :, ::-1])
    np.testing.assert_array_equal(out["mask"], clip["mask"][:, :, ::-1])
    np.testing.assert_array_equal(out["flow"][..., 1], clip["flow"][..., ::-1, 1])
    np.testing.assert_array_equal(out["flow"][..., 0], 255 - clip["flow"][..., ::-1, 0])
    assert all(out[k].flags.c_contiguous for k in ("rgb", "flow", "mask"))
