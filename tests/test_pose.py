"""Keypoints (readers, masks, normalisation, resampling) and the pose-driven attention models (seed 002)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from egoattn.data.keypoints import (keypoint_mask, normalize_keypoints, read_coco_keypoints,
                                    read_ntu_skeleton, resample_keypoints)
from egoattn.data.samplers import uniform_indices
from egoattn.errors import BadInputError, ConfigError
from egoattn.models.pose_attention import (PoseEncoder, frame_steps, part_attention_map, part_boxes,
                                           pose_granularity, pose_lstm, pose_parts, pose_separable,
                                           segment_bounds)

POSE = dict(pose_hidden=8, pose_layers=2, attention_hidden=6)


def _hand(b: int, t: int, size: float = 64.0) -> torch.Tensor:
    """Random present 21-joint hands (B, T, 21, 3) inside a size x size frame."""
    kp = torch.rand(b, t, 21, 3) * (size - 1)
    kp[..., 2] = 1.0
    return kp


# ------------------------------------------------------------------------------------------ NTU


def _joint(j: int, tracking: int, shift: float = 0.0) -> str:
    # x y z depthX depthY colorX colorY orientW orientX orientY orientZ trackingState
    return (f"{0.1 * j + shift:.3f} {-0.2 * j:.3f} {3 + 0.01 * j:.3f} {200 + j} {150 + j} "
            f"{900 + 10 * j + shift} {500 + 5 * j} 1 0 0 0 {tracking}")


def _body(body_id: str, shift: float, untracked: tuple[int, ...] = ()) -> list[str]:
    lines = [f"{body_id} 0 1 1 1 1 0 -0.05 0.12 2", "25"]
    lines += [_joint(j, 0 if j in untracked else (1 if j == 3 else 2), shift) for j in range(25)]
    return lines


def test_ntu_skeleton_parser(tmp_path):
    a, b, c = "72057594037931101", "72057594037931555", "72057594037931999"
    lines = ["3",
             "1", *_body(b, 1000.0),  # b: seen first, in one frame
             "2", *_body(a, 0.0, untracked=(7,)), *_body(c, 5000.0),  # c: one frame, seen after b
             "1", *_body(a, 1.0)]  # a: two frames
    path = tmp_path / "S001C001P001R001A001.skeleton"
    path.write_text("\n".join(lines) + "\n")

    kp = read_ntu_skeleton(path)  # color coordinates, 2 bodies
    assert kp.shape == (2, 3, 25, 3) and kp.dtype == np.float32
    # slot 0 = body a (most frames) although b was seen first; slot 1 = b (ties: first seen); c dropped
    assert not keypoint_mask(kp[0, 0]).any()
    np.testing.assert_allclose(kp[0, 1, 4], [940.0, 520.0, 1.0])
    np.testing.assert_allclose(kp[0, 2, 4], [941.0, 520.0, 1.0])
    np.testing.assert_allclose(kp[0, 1, 3, 2], 0.5)  # inferred joint
    assert np.isnan(kp[0, 1, 7, :2]).all() and kp[0, 1, 7, 2] == 0  # not tracked -> missing
    np.testing.assert_allclose(kp[1, 0, 2], [1920.0, 510.0, 1.0])
    assert not keypoint_mask(kp[1, 1:]).any()
    assert np.nanmax(kp) < 5000

    xyz = read_ntu_skeleton(path, coords="xyz", max_bodies=1)
    assert xyz.shape == (1, 3, 25, 4)
    np.testing.assert_allclose(xyz[0, 1, 10], [1.0, -2.0, 3.1, 1.0], rtol=1e-6)
    depth = read_ntu_skeleton(path, coords="depth", max_bodies=1)
    np.testing.assert_allclose(depth[0, 2, 0], [200.0, 150.0, 1.0])


def test_ntu_truncated_or_bad_file_names_the_file(tmp_path):
    path = tmp_path / "bad.skeleton"
    path.write_text("\n".join(["1", "1", *_body("7", 0.0)[:-3]]))
    with pytest.raises(BadInputError, match="bad.skeleton.*ends early"):
        read_ntu_skeleton(path)
    path.write_text("x\n")
    with pytest.raises(BadInputError, match="integer"):
        read_ntu_skeleton(path)


# ------------------------------------------------------------------------------------------ COCO JSON


def _coco_person(values: list[tuple[float, float, float]], score: float | None = None) -> dict:
    person = {"keypoints": [v for xyz in values for v in xyz]}
    if score is not None:
        person["score"] = score
    return person


def test_coco_folder_of_frames_in_natural_order(tmp_path):
    folder = tmp_path / "kp"
    folder.mkdir()
    # frame_2 must come before frame_10
    (folder / "frame_10.json").write_text(json.dumps([_coco_person([(10, 11, 2), (12, 13, 0), (14, 15, 1)])]))
    (folder / "frame_2.json").write_text(json.dumps(
        {"people": [{"pose_keypoints_2d": [1, 2, 0.9, 3, 4, 0.8, 5, 6, 0.7]}]}))  # OpenPose frame
    (folder / "frame_3.json").write_text(json.dumps([]))  # nobody
    kp = read_coco_keypoints(folder)
    assert kp.shape == (3, 3, 3)
    np.testing.assert_allclose(kp[0], [[1, 2, 0.9], [3, 4, 0.8], [5, 6, 0.7]], rtol=1e-6)
    assert not keypoint_mask(kp[1]).any() and np.isnan(kp[1, :, :2]).all()
    np.testing.assert_allclose(kp[2, 0], [10, 11, 2])
    assert np.isnan(kp[2, 1, :2]).all() and kp[2, 1, 2] == 0  # COCO v=0: not labelled -> missing
    np.testing.assert_allclose(kp[2, 2], [14, 15, 1])


def test_coco_single_file_shapes(tmp_path):
    # one list of frames: several persons (highest score kept), nested J x 2 pairs, null coordinates
    frames = [
        [_coco_person([(0, 0, 1), (1, 1, 1)], score=0.2), _coco_person([(5, 5, 1), (6, 6, 1)], score=0.9)],
        [[7, 8], [None, 9]],
    ]
    path = tmp_path / "clip.json"
    path.write_text(json.dumps(frames))
    kp = read_coco_keypoints(path)
    np.testing.assert_allclose(kp[0], [[5, 5, 1], [6, 6, 1]])
    np.testing.assert_allclose(kp[1, 0], [7, 8, 1])
    assert keypoint_mask(kp).tolist() == [[True, True], [True, False]]

    # COCO results: detections grouped by sorted image_id
    results = [{"image_id": 5, "keypoints": [1, 1, 0.5, 2, 2, 0.5], "score": 0.3},
               {"image_id": 1, "keypoints": [3, 3, 0.5, 4, 4, 0.5], "score": 0.3},
               {"image_id": 5, "keypoints": [9, 9, 0.5, 9, 9, 0.5], "score": 0.8}]
    path.write_text(json.dumps({"annotations": results}))
    kp = read_coco_keypoints(path)
    np.testing.assert_allclose(kp[:, 0, 0], [3, 9])

    path.write_text(json.dumps([_coco_person([(0, 0, 1)] * 17), _coco_person([(0, 0, 1)] * 5)]))
    with pytest.raises(BadInputError, match=r"clip.json.*\[5\] joints, expected 17"):
        read_coco_keypoints(path)
    path.write_text("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        read_coco_keypoints(path)


# ------------------------------------------------------------------------------------------ normalisation


def test_normalisation_centres_on_first_frame_mean_and_scales_by_box():
    kp = np.array([[[0, 0, 1], [4, 2, 1], [100, 100, 0]],  # joint 2 missing (confidence 0)
                   [[2, 0, 1], [6, 2, 1], [np.nan, 5, 1]]], dtype=np.float32)  # joint 2 missing (NaN)
    coords, mask = normalize_keypoints(kp)
    assert mask.tolist() == [[True, True, False], [True, True, False]]
    # centre = mean of frame 0's present joints (2, 1); box of all present joints: 6 x 2 -> scale 6
    expected = np.array([[[-2, -1], [2, 1], [0, 0]], [[0, -1], [4, 1], [0, 0]]]) / 6
    np.testing.assert_allclose(coords.numpy(), expected, atol=1e-6)
    per_frame, _ = normalize_keypoints(kp, reference="frame", scale="none")
    np.testing.assert_allclose(per_frame[1].numpy(), [[-2, -1], [2, 1], [0, 0]], atol=1e-6)


def test_normalisation_joint_centre_and_torso_scale_coco():
    kp = np.zeros((2, 17, 3), dtype=np.float32)
    kp[..., 2] = 1
    kp[:, 5, :2], kp[:, 6, :2] = (10, 10), (20, 10)  # shoulders: mid (15, 10)
    kp[:, 11, :2], kp[:, 12, :2] = (10, 40), (20, 40)  # hips: mid (15, 40) -> torso 30
    kp[1, :, 0] += 3  # the person moves right by 3 px in frame 1
    kp[0, 0] = (np.nan, np.nan, 0)
    coords, mask = normalize_keypoints(kp, layout="coco17", center="joint", scale="torso")
    np.testing.assert_allclose(coords[0, 5].numpy(), [-5 / 30, -1.0], atol=1e-6)
    np.testing.assert_allclose(coords[1, 12].numpy(), [8 / 30, 0.0], atol=1e-6)  # motion relative to frame 0 kept
    assert coords[0, 0].tolist() == [0.0, 0.0] and not mask[0, 0]
    with pytest.raises(ValueError, match="17 joints"):
        normalize_keypoints(kp[:, :5], layout="coco17", center="joint")


def test_resample_uses_the_frame_sampler_indices():
    kp = np.arange(10 * 2 * 3, dtype=np.float32).reshape(10, 2, 3)
    np.testing.assert_array_equal(resample_keypoints(kp, 4), kp[uniform_indices(10, 4)])
    np.testing.assert_array_equal(resample_keypoints(kp, [9, 0]), kp[[9, 0]])
    with pytest.raises(IndexError):
        resample_keypoints(kp, [10])


# ------------------------------------------------------------------------------------------ pose encoder


def test_missing_joints_are_masked_not_zeros():
    encoder = PoseEncoder(num_joints=21, hidden=8, layers=3, num_classes=4).eval()
    kp = _hand(2, 5)
    kp[:, :, 3, 2] = 0.0  # joint 3 missing everywhere (confidence 0)
    kp[0, 2, 7, :2] = float("nan")  # joint 7 missing in one frame (NaN coordinates)
    with torch.no_grad():
        ref = encoder(kp)
        moved = kp.clone()
        moved[:, :, 3, :2] = torch.tensor([1e4, -3e3])
        moved[0, 2, 7, 2] = 0.0
        torch.testing.assert_close(encoder(moved)["h"], ref["h"])
        # a joint that really is at the origin is not the same as a missing one
        zeros = kp.clone()
        zeros[:, :, 3] = torch.tensor([0.0, 0.0, 1.0])
        assert (encoder(zeros)["h"] - ref["h"]).abs().max() > 1e-5
        features = encoder.features(kp)
    assert features.shape == (2, 5, 21 * 3)
    assert features[..., 42 + 3].eq(0).all() and features[..., 42 + 4].eq(1).all()  # the mask part
    assert ref["logits"].shape == (2, 4) and ref["outputs"].shape == (2, 5, 8)


def test_freeze_and_load_pretrained_encoder(tmp_path):
    pretrained = pose_lstm(3, hidden=8, layers=2)
    path = tmp_path / "pose.pt"
    torch.save({f"model.{k}": v for k, v in pretrained.state_dict().items()}, path)  # Lightning-style names
    model = pose_parts(3, pose_hidden=8, pose_layers=2, attention_hidden=6, pose_weights=str(path),
                       freeze_pose=True)
    for k, v in pretrained.state_dict().items():
        torch.testing.assert_close(model.pose_encoder.state_dict()[k], v)
    assert not any(p.requires_grad for p in model.pose_encoder.parameters())
    model.train()
    assert not model.pose_encoder.training and model.classifier.training
    with pytest.raises(BadInputError, match="pose encoder"):
        pose_parts(3, pose_hidden=16, pose_layers=2, pose_weights=str(path))


# ------------------------------------------------------------------------------------------ separable


def test_separable_gates_and_logits():
    model = pose_separable(4, num_frames=9, input_size=32, **POSE).eval()
    assert model.grid == (2, 2, 2)  # r3d_18: time 9 -> 5 -> 3 -> 2, space 32 -> 16 -> 8 -> 4 -> 2
    rgb, kp = torch.randn(2, 9, 3, 32, 32), _hand(2, 9, 32)
    with torch.no_grad():
        out = model(rgb=rgb, keypoints=kp)
        alpha, beta = out["spatial_gate"][:, 0], out["step_weights"]
        assert out["spatial_gate"].shape == (2, 2, 2, 2) and beta.shape == (2, 2)
        assert ((alpha > 0) & (alpha < 1)).all()
        assert alpha.sum(dim=(1, 2)).sub(1).abs().max() > 1e-3  # not normalised
        torch.testing.assert_close(beta.sum(1), torch.ones(2))
        # per input frame (what explain draws and scores): 9 frames, the same map at each
        assert out["attention"].shape == (2, 9, 2, 2)
        torch.testing.assert_close(out["attention"].sum(dim=(2, 3)), torch.ones(2, 9))
        torch.testing.assert_close(out["attention"][:, 4], alpha / alpha.sum(dim=(1, 2), keepdim=True))
        # frames 0-4 lie in step 0, 5-8 in step 1: beta shared among each step's frames
        tw = out["temporal_weights"]
        assert tw.shape == (2, 9)
        torch.testing.assert_close(tw.sum(1), torch.ones(2))
        torch.testing.assert_close(tw[:, 0], beta[:, 0] / 5)
        torch.testing.assert_close(tw[:, 8], beta[:, 1] / 4)
        # g_s = alpha * g, g_t = beta * g, GAP each, concat, classifier
        g = model.backbone(rgb.transpose(1, 2))
        g_s = (g * alpha[:, None, None]).mean(dim=(2, 3, 4))
        g_t = (g * beta[:, None, :, None, None]).mean(dim=(2, 3, 4))
        torch.testing.assert_close(out["logits"], model.classifier(torch.cat([g_s, g_t], 1)))
        reg = 1e-5 * ((1 - alpha) ** 2).sum(dim=(1, 2)) + 1e-5 * (beta ** 2).sum(1)
        torch.testing.assert_close(out["reg_loss"], reg.mean())
    with pytest.raises(ValueError, match="num_frames and input_size"):
        model(rgb=torch.randn(1, 8, 3, 32, 32), keypoints=_hand(1, 8, 32))  # t = 1, built for 2


def test_separable_backpropagates():
    model = pose_separable(3, num_frames=9, input_size=32, **POSE)
    out = model(rgb=torch.randn(1, 9, 3, 32, 32), keypoints=_hand(1, 9, 32))
    (out["logits"].sum() + out["reg_loss"]).backward()
    params = dict(model.named_parameters())
    for name in ("spatial.0.weight", "temporal.2.weight", "pose_encoder.lstm.weight_ih_l0",
                 "backbone.features.0.0.weight", "classifier.1.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name


def test_frame_steps():
    assert frame_steps(9, 2).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert frame_steps(4, 4).tolist() == [0, 1, 2, 3]


def test_separable_on_a_per_frame_backbone_gates_every_frame():
    model = pose_separable(4, backbone="resnet18", num_frames=5, input_size=64, **POSE).eval()
    assert model.grid == (5, 2, 2)  # T frames, resnet18 stride 32 at 64 px
    rgb, kp = torch.randn(2, 5, 3, 64, 64), _hand(2, 5)
    with torch.no_grad():
        out = model(rgb=rgb, keypoints=kp)
        g = model.backbone(rgb.transpose(1, 2))
        assert g.shape == (2, 512, 5, 2, 2)
        torch.testing.assert_close(g[:, :, 3], model.backbone.frames(rgb[:, 3])["f_bn"])
        torch.testing.assert_close(out["temporal_weights"], out["step_weights"])  # one step per frame
    model.train()
    model(rgb=rgb, keypoints=kp)["logits"].sum().backward()
    assert model.spatial[0].weight.grad.abs().sum() > 0 and model.temporal[0].weight.grad.abs().sum() > 0


def test_unknown_video_backbone_and_bad_layout_are_config_errors():
    with pytest.raises(ConfigError, match="video backbone"):
        pose_separable(3, backbone="i3d")
    with pytest.raises(ConfigError, match="layout"):
        pose_granularity(3, layout="coco17", num_joints=21, center="joint")


# ------------------------------------------------------------------------------------------ parts


def test_part_boxes():
    kp = torch.full((1, 1, 3, 3), float("nan"))
    kp[..., 2] = 0
    kp[0, 0, 0] = torch.tensor([10.0, 20.0, 1.0])
    kp[0, 0, 1] = torch.tensor([30.0, 25.0, 1.0])
    boxes = part_boxes(kp, [(0,), (0, 1), (2,)], frame_size=(50, 100), margin=0.1)  # pad = 5 px
    np.testing.assert_allclose(boxes[0, 0].numpy(), [[5, 15, 15, 25], [5, 15, 35, 30], [0, 0, 99, 49]])


def test_part_attention_map_spreads_each_weight_over_its_box():
    boxes = torch.tensor([[[[0.0, 0.0, 15.0, 15.0], [16.0, 16.0, 31.0, 31.0], [30.0, 0.0, 31.0, 1.0]]]])
    weights = torch.tensor([[0.5, 0.3, 0.2]])
    m = part_attention_map(boxes, weights, frame_size=(32, 32), grid=(2, 2))
    assert m.shape == (1, 1, 2, 2)
    # part 0 fills the top-left cell, part 1 the bottom-right, part 2 (2 x 2 px) the top-right corner
    torch.testing.assert_close(m[0, 0], torch.tensor([[0.5, 0.2], [0.0, 0.3]]))
    # a box straddling two cells splits its weight by area
    m = part_attention_map(torch.tensor([[[[8.0, 0.0, 23.0, 31.0]]]]), torch.ones(1, 1), (32, 32), (1, 2))
    torch.testing.assert_close(m[0, 0], torch.tensor([[0.5, 0.5]]))


def test_part_attention_is_a_softmax_mix_of_part_features():
    model = pose_parts(4, **POSE).eval()
    assert model.part_names == ["hand", "palm", "fingertips"]
    rgb, kp = torch.randn(2, 3, 3, 64, 64), _hand(2, 3)
    with torch.no_grad():
        out = model(rgb=rgb, keypoints=kp)
        w = out["part_weights"]
        torch.testing.assert_close(w.sum(1), torch.ones(2))
        features = model.part_features(rgb, out["part_boxes"])
        assert features.shape == (2, 3, 512)
        assert (features[:, 0] - features[:, 2]).abs().max() > 1e-4  # different crops
        torch.testing.assert_close(out["logits"], model.classifier((w.unsqueeze(-1) * features).sum(1)))
        assert out["attention"].shape == (2, 3, 2, 2)  # the feature grid of resnet18 at 64 px
        torch.testing.assert_close(out["attention"].sum(dim=(2, 3)), torch.ones(2, 3))
        torch.testing.assert_close(out["attention"], part_attention_map(out["part_boxes"], w, (64, 64), (2, 2)))
    model.train()
    out = model(rgb=rgb, keypoints=kp)
    out["logits"].sum().backward()
    for name in ("attention.0.weight", "backbone.layer4.1.conv2.weight", "pose_encoder.lstm.weight_hh_l1"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------ granularity


def test_segment_bounds():
    assert segment_bounds(8, 3) == [(0, 2), (2, 5), (5, 8)]
    assert segment_bounds(4, 4) == [(0, 1), (1, 2), (2, 3), (3, 4)]
    with pytest.raises(ValueError):
        segment_bounds(3, 4)


@pytest.mark.parametrize("backbone", ["resnet18", "r3d_18"])
def test_granularity_attention_weights_and_backprop(backbone):
    model = pose_granularity(4, backbone=backbone, **POSE)
    out = model(rgb=torch.randn(2, 8, 3, 16, 16), keypoints=_hand(2, 8, 16))
    for g in (2, 3, 4):
        assert out[f"segment_weights_{g}"].shape == (2, g)
        torch.testing.assert_close(out[f"segment_weights_{g}"].sum(1), torch.ones(2))
    torch.testing.assert_close(out["granularity_weights"].sum(1), torch.ones(2))
    out["logits"].sum().backward()
    params = dict(model.named_parameters())
    for name in ("segment_attention.3.0.weight", "granularity_attention.2.weight", "classifier.1.weight",
                 "pose_encoder.lstm.weight_ih_l0"):
        assert params[name].grad.abs().sum() > 0, name
    assert any(n.startswith("backbone.") and p.grad is not None and p.grad.abs().sum() > 0
               for n, p in params.items())


def test_pose_lstm_backpropagates_on_pose_alone():
    model = pose_lstm(5, hidden=8, layers=3)
    kp = _hand(2, 6)
    kp[:, :, :4, 2] = 0
    out = model(keypoints=kp)
    assert out["logits"].shape == (2, 5) and math.isfinite(out["logits"].sum().item())
    out["logits"].sum().backward()
    assert model.lstm.weight_ih_l0.grad.abs().sum() > 0
