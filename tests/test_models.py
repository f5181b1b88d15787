"""Models: CAM, ConvLSTM, heads, Ego-RNN, flow, two-stream, two-in-one, frame average, registry."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from egoattn.errors import BadInputError, ConfigError
from egoattn.models import create_model, list_models, model_options
from egoattn.models.registry import model_inputs
from egoattn.models.attention import cam_attention, class_activation_map
from egoattn.models.convlstm import ConvLSTM, ConvLSTMCell, ConvLSTMSequence, Geometry
from egoattn.models.heads import (MotionSegmentationHead, OrderPredictionHead, motion_segmentation_loss,
                                  resize_motion_maps)
from egoattn.models.twostream import TwoStream

SMALL = dict(backbone="resnet18", hidden=16)


def _nudge_batchnorm(model: nn.Module) -> None:
    """Eval-mode BN with non-trivial statistics, and a fc whose CAM classes differ between frames."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)


# ------------------------------------------------------------------------------------------ ConvLSTM


class EightConvCell(nn.Module):
    """The reference cell (Ego-RNN MyConvLSTMCell), written independently: 8 convolutions."""

    def __init__(self, cin: int, hidden: int) -> None:
        super().__init__()
        for g in "ifco":
            setattr(self, f"{g}_x", nn.Conv2d(cin, hidden, 3, padding=1))
            setattr(self, f"{g}_h", nn.Conv2d(hidden, hidden, 3, padding=1, bias=False))

    def forward(self, x, state):
        h, c = state
        i = torch.sigmoid(self.i_x(x) + self.i_h(h))
        f = torch.sigmoid(self.f_x(x) + self.f_h(h))
        c_tilde = torch.tanh(self.c_x(x) + self.c_h(h))
        c = c_tilde * i + c * f
        o = torch.sigmoid(self.o_x(x) + self.o_h(h))
        return o * torch.tanh(c), c


def test_fused_convlstm_equals_eight_convolution_reference():
    cin, hid = 6, 5
    fused = ConvLSTM(cin, hid)
    with torch.no_grad():
        fused.cell.conv.bias.normal_()  # a non-zero bias exercises the x-part biases
    ref = EightConvCell(cin, hid)
    w, b = fused.cell.conv.weight, fused.cell.conv.bias
    with torch.no_grad():
        for k, g in enumerate("ifoc"):  # fused layout: i, f, o, g (= the reference's "c" candidate)
            rows = slice(k * hid, (k + 1) * hid)
            getattr(ref, f"{g}_x").weight.copy_(w[rows, :cin])
            getattr(ref, f"{g}_x").bias.copy_(b[rows])
            getattr(ref, f"{g}_h").weight.copy_(w[rows, cin:])
    x = torch.randn(2, 4, cin, 7, 7)
    hs, cs, (h_last, c_last) = fused(x)
    state = (torch.zeros(2, hid, 7, 7), torch.zeros(2, hid, 7, 7))
    for t in range(4):
        state = ref(x[:, t], state)
        torch.testing.assert_close(hs[:, t], state[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(cs[:, t], state[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(c_last, state[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(h_last, hs[:, -1])


@pytest.mark.parametrize("kernel,with_state", [(3, False), (3, True), (5, False), (1, True)])
def test_convlstm_sequence_equals_stepping_the_fused_cell_with_gradients(kernel, with_state):
    """ConvLSTM.forward (x part of all steps as one convolution, h part as im2col + matrix products, no h
    part at the zero state) is the fused cell stepped over time: outputs, final state and gradients of
    x, weight, bias."""
    torch.manual_seed(0)
    cin, hid, b, t, size = 5, 4, 2, 3, 6
    seq = ConvLSTM(cin, hid, kernel)
    with torch.no_grad():
        seq.cell.conv.bias.normal_()
    x = torch.randn(b, t, cin, size, size, requires_grad=True)
    state = (torch.randn(b, hid, size, size), torch.randn(b, hid, size, size)) if with_state else None
    hs, cs, (h_last, c_last) = seq(x, state)
    assert hs.shape == cs.shape == (b, t, hid, size, size) and hs.is_contiguous() and c_last.is_contiguous()
    loss = (hs * torch.linspace(-1, 1, hs.numel()).view_as(hs)).sum() + cs.square().sum()
    grads = torch.autograd.grad(loss, [x, seq.cell.conv.weight, seq.cell.conv.bias])

    step, outs = state, []
    for i in range(t):
        step = seq.cell(x[:, i], step)
        outs.append(step)
    ref_hs = torch.stack([o[0] for o in outs], 1)
    ref_cs = torch.stack([o[1] for o in outs], 1)
    torch.testing.assert_close(hs, ref_hs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cs, ref_cs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c_last, ref_cs[:, -1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h_last, ref_hs[:, -1], rtol=1e-5, atol=1e-6)
    ref_loss = (ref_hs * torch.linspace(-1, 1, hs.numel()).view_as(hs)).sum() + ref_cs.square().sum()
    ref_grads = torch.autograd.grad(ref_loss, [x, seq.cell.conv.weight, seq.cell.conv.bias])
    for ours, ref in zip(grads, ref_grads):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("with_state", [False, True])
def test_convlstm_backward_through_time_passes_gradcheck(with_state):
    """The hand-written backward of the whole sequence (frames, weight, bias and the initial state)
    against finite differences, in float64."""
    torch.manual_seed(0)
    cin, hid, b, t, side = 3, 2, 2, 3, 4
    geo = Geometry(b, side, side, 3, 1)

    def leaf(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    inputs = [leaf(t * b, cin, side, side), leaf(4 * hid, cin + hid, 3, 3), leaf(4 * hid)]
    inputs += [leaf(hid, b * side * side), leaf(hid, b * side * side)] if with_state else [None, None]
    assert torch.autograd.gradcheck(lambda *a: ConvLSTMSequence.apply(*a, geo), tuple(inputs))


def test_convlstm_channels_last_gives_the_contiguous_outputs_and_gradients():
    """A model trained channels-last (recipe train.channels_last) converts the ConvLSTM's weight and its
    input features to that layout: the same function and gradients."""
    torch.manual_seed(0)
    seq = ConvLSTM(6, 4)
    x = torch.randn(2, 3, 6, 5, 5)
    results = []
    for layout in (torch.contiguous_format, torch.channels_last):
        net = copy.deepcopy(seq).to(memory_format=layout)
        inp = x.flatten(0, 1).contiguous(memory_format=layout).view_as(x).requires_grad_(True)
        hs, cs, _ = net(inp)
        (hs.square().sum() + cs.sum()).backward()
        results.append((hs, cs, inp.grad, net.cell.conv.weight.grad, net.cell.conv.bias.grad))
    assert seq.cell.conv.weight.is_contiguous() and not copy.deepcopy(seq).to(
        memory_format=torch.channels_last).cell.conv.weight.is_contiguous()
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_convlstm_under_bfloat16_autocast_follows_float32():
    """Under bf16 autocast the sequence computes in bf16 and hands fp32 weights fp32 gradients close to
    the fp32 ones (bf16 keeps 8 bits of mantissa: agreement to a few percent of the largest value)."""
    torch.manual_seed(0)
    seq = ConvLSTM(16, 8)
    x = torch.randn(2, 4, 16, 5, 5)

    def run(autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        seq.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            _, _, (_, c) = seq(x)
        c.float().square().sum().backward()
        return c.float(), seq.cell.conv.weight.grad

    c32, g32 = run(False)
    c16, g16 = run(True)
    assert g16.dtype == torch.float32
    assert (c16 - c32).abs().max() < 0.03 * c32.abs().max()
    assert (g16 - g32).abs().max() < 0.05 * g32.abs().max()


def test_convlstm_keeps_its_states_in_float32_under_bfloat16_autocast():
    """The cell state accumulates over the steps: under bf16 autocast the products run in bf16 but h and c
    stay float32. Over 25 steps with a forget gate near 1, c_T is within 0.6 % of float32 (max error over
    max value); with the state rounded to bf16 at every step, as before, it was 1.15 %."""
    torch.manual_seed(0)
    seq = ConvLSTM(16, 8)
    with torch.no_grad():
        seq.cell.conv.bias[8:16] += 2.0  # forget gate near 1: c sums many steps
    x = torch.randn(2, 25, 16, 5, 5)
    with torch.no_grad():
        _, c32, _ = seq(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hs, c16, (h_last, c_last) = seq(x)
            h_cell, c_cell = seq.cell(x[:, 0], (h_last, c_last))
    assert {t.dtype for t in (hs, c16, h_last, c_last, h_cell, c_cell)} == {torch.float32}
    err = (c16[:, -1] - c32[:, -1]).abs().max() / c32[:, -1].abs().max()
    assert err < 0.006


def test_cam_attention_is_float32_under_bfloat16_autocast():
    """CAM and its softmax run in float32 under autocast, so the attention matches float32's closely."""
    torch.manual_seed(0)
    f_bn, fc = torch.randn(3, 32, 5, 5), nn.Linear(32, 10)
    ref, _, _ = cam_attention(f_bn, fc)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        att, cam, _ = cam_attention(f_bn.bfloat16(), fc)
    assert att.dtype == cam.dtype == torch.float32
    # only the input's rounding to bf16 remains (about 0.4 % of each feature)
    torch.testing.assert_close(att, ref, rtol=0.05, atol=1e-3)


def test_convlstm_computes_no_gradient_for_a_frozen_input():
    """Frozen features (x without grad): only the weights get gradients, and the sequence still trains."""
    torch.manual_seed(0)
    seq = ConvLSTM(3, 2)
    x = torch.randn(1, 2, 3, 4, 4)
    _, _, (_, c) = seq(x)
    c.sum().backward()
    assert x.grad is None and seq.cell.conv.weight.grad is not None
    assert torch.count_nonzero(seq.cell.conv.weight.grad) > 0
    with pytest.raises(ValueError, match="expects x of shape"):
        seq(torch.randn(1, 2, 4, 4, 4))


def test_convlstm_init_is_xavier_per_separate_convolution():
    cell = ConvLSTMCell(64, 48)
    w = cell.conv.weight.detach()
    assert torch.count_nonzero(cell.conv.bias) == 0
    x_std = (2 / (64 * 9 + 48 * 9)) ** 0.5  # fans of conv_x: in 64*9, out 48*9
    h_std = (2 / (48 * 9 + 48 * 9)) ** 0.5
    assert w[:, :64].std().item() == pytest.approx(x_std, rel=0.05)
    assert w[:, 64:].std().item() == pytest.approx(h_std, rel=0.05)


def test_bfloat16_on_a_cpu_without_it_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Emulated bfloat16 runs slower than float32: asking for it on such a CPU warns, nowhere else."""
    from egoattn.models import precision

    assert precision.bfloat16_in_cpuinfo("processor : 0\nflags : fpu avx2 avx512f\n") is False
    assert precision.bfloat16_in_cpuinfo("flags : fpu avx512f avx512_bf16\n") is True
    assert precision.bfloat16_in_cpuinfo("Features : fp asimd bf16 i8mm\n") is True
    assert precision.bfloat16_in_cpuinfo("vendor_id : Apple\n") is None
    monkeypatch.setattr(precision, "cpu_bfloat16", lambda: False)
    precision._warn_emulated.cache_clear()  # it warns once per process
    with pytest.warns(UserWarning, match="no bfloat16 instructions"):
        precision.autocast_at("cpu", "bf16-mixed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.autocast_at("cpu", "32")
        precision.warn_if_emulated("cuda", "bf16-mixed")
        for native in (True, None):
            monkeypatch.setattr(precision, "cpu_bfloat16", lambda: native)
            precision.autocast_at("cpu", "bf16-mixed")
    with pytest.raises(ConfigError, match="precision must be one of"):
        precision.autocast_at("cpu", "bf16")


# ------------------------------------------------------------------------------------------ CAM


def test_cam_is_fc_weighted_sum_of_features():
    f = torch.randn(3, 8, 4, 5).relu()
    fc = nn.Linear(8, 10)
    attention, cam, cls = cam_attention(f, fc)
    for n in range(3):
        logits = fc.weight @ f[n].mean(dim=(1, 2)) + fc.bias
        c = int(logits.argmax())
        assert int(cls[n]) == c
        expected = torch.zeros(4, 5)
        for i in range(8):
            expected += fc.weight[c, i] * f[n, i]
        torch.testing.assert_close(cam[n], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(attention[n], torch.softmax(expected.flatten(), 0).view(4, 5))
    torch.testing.assert_close(attention.sum(dim=(1, 2)), torch.ones(3))
    torch.testing.assert_close(class_activation_map(f, fc.weight, cls), cam)


# ------------------------------------------------------------------------------------------ heads


def test_order_head_shape_and_pairing_order():
    head = OrderPredictionHead(16).eval()
    assert head.classifier.in_features == 3072
    x = torch.randn(2, 4, 16)
    out = head(x)
    assert out.shape == (2, 12)
    h = head.fc6(x)
    pairs = [(0, 1), (1, 2), (2, 3), (0, 2), (1, 3), (0, 3)]
    expected = torch.cat([head.fc7(torch.cat([h[:, i], h[:, j]], 1)) for i, j in pairs], 1)
    torch.testing.assert_close(head.pair_features(x).flatten(1), expected)
    torch.testing.assert_close(out, head.classifier(expected))
    # pairs are ordered: swapping two frames changes the output
    assert not torch.allclose(head(x[:, [1, 0, 2, 3]]), out)


def test_ms_head_shapes():
    x = torch.randn(6, 32, 4, 4)
    cls = MotionSegmentationHead(32, "cls", (4, 4))
    assert cls.conv.out_channels == 100 and cls.fc.in_features == 1600 and cls.fc.out_features == 32
    assert cls(x).shape == (6, 2, 4, 4)
    reg = MotionSegmentationHead(32, "reg", (4, 4), sigmoid=True)
    assert reg.fc.out_features == 16
    y = reg(x)
    assert y.shape == (6, 4, 4) and 0 <= y.min() and y.max() <= 1
    with pytest.raises(ValueError, match="4x4"):
        cls(torch.randn(1, 32, 7, 7))


def test_motion_maps_area_resize_and_threshold():
    maps = torch.zeros(1, 1, 14, 14)
    maps[..., :2, :2] = 1.0  # cell (0, 0) fully moving
    maps[..., 2, 2:4] = 1.0  # cell (1, 1): 2 of its 4 pixels move -> 0.5
    maps[..., 4, 4] = 1.0  # cell (2, 2): 1 of 4 -> 0.25
    small = resize_motion_maps(maps, (7, 7))
    assert small[0, 0, 0, 0] == 1 and small[0, 0, 1, 1] == 0.5 and small[0, 0, 2, 2] == 0.25
    assert small.sum() == pytest.approx(maps.sum() / 4)
    # a perfect "moving" prediction for tau=0.2 (cells 0, 1, 2) is wrong for tau=0.5 (only cell 0)
    logits = torch.full((1, 1, 2, 7, 7), 0.0)
    logits[:, :, 0] = 20
    for cell in range(3):
        logits[0, 0, :, cell, cell] = torch.tensor([0.0, 20.0])
    assert motion_segmentation_loss(logits, maps, "cls", threshold=0.2) < 1e-6
    # tau=0.5: cells (1, 1) and (2, 2) are "static" but predicted moving with margin 20 -> 2 * 20 / 49
    assert motion_segmentation_loss(logits, maps, "cls", threshold=0.5).item() == pytest.approx(40 / 49, rel=1e-4)


@pytest.mark.parametrize("loss", ["mse", "l1", "smooth_l1", "soft_margin", "kl"])
def test_ms_regression_losses_finite_and_zero_for_perfect_prediction(loss):
    maps = torch.rand(2, 3, 28, 28) ** 4
    target = resize_motion_maps(maps, (7, 7))
    random_pred = torch.randn(2, 3, 7, 7)
    bad = motion_segmentation_loss(random_pred, maps, "reg", loss=loss)
    assert torch.isfinite(bad) and bad > 0.01
    if loss == "soft_margin":
        perfect = 30 * ((target > 0.5).float() * 2 - 1)
    elif loss == "kl":
        perfect = torch.log(target / target.sum(dim=(-2, -1), keepdim=True)) + 3.0  # any offset: softmax
    else:
        perfect = target
    assert motion_segmentation_loss(perfect, maps, "reg", loss=loss) < 1e-6
    # a frame without motion is a uniform target for KL, not a NaN
    assert torch.isfinite(motion_segmentation_loss(random_pred, torch.zeros(2, 3, 28, 28), "reg", loss=loss))


def test_ms_loss_rejects_bad_combinations():
    with pytest.raises(ConfigError, match="mse"):
        motion_segmentation_loss(torch.zeros(1, 1, 2, 7, 7), torch.zeros(1, 1, 7, 7), "cls", loss="mse")
    with pytest.raises(ValueError, match="do not match"):
        motion_segmentation_loss(torch.zeros(1, 2, 7, 7), torch.zeros(1, 3, 7, 7), "reg")


# ------------------------------------------------------------------------------------------ Ego-RNN


def test_egornn_matches_manual_pipeline_and_attention_sums_to_one():
    model = create_model("egornn", 5, **SMALL).eval()
    _nudge_batchnorm(model)
    rgb = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        out = model(rgb=rgb)
        taps = model.backbone(rgb.flatten(0, 1))  # one frame batch, computed independently below
        fc = model.backbone.fc
        logits_in = fc(taps["f_bn"].mean(dim=(2, 3)))
        cls = logits_in.argmax(1)
        cam = (fc.weight[cls][:, :, None, None] * taps["f_bn"]).sum(1)
        a = torch.softmax(cam.flatten(1), 1).view_as(cam)
        x = (taps["f_pre"] * a[:, None]).view(2, 3, 512, 2, 2)
        h = c = torch.zeros(2, 16, 2, 2)
        for t in range(3):
            h, c = model.convlstm.cell(x[:, t], (h, c))
        expected = model.classifier(c.mean(dim=(2, 3)))  # the cell state c_T, not h_T
    assert out["logits"].shape == (2, 5) and out["attention"].shape == (2, 3, 2, 2)
    torch.testing.assert_close(out["attention"], a.view(2, 3, 2, 2))
    torch.testing.assert_close(out["attention"].sum(dim=(2, 3)), torch.ones(2, 3))
    torch.testing.assert_close(out["logits"], expected)


def test_frame_features_equal_rgb_and_follow_current_fc():
    model = create_model("egornn", 4, ms_head="cls", input_size=64, **SMALL).eval()
    rgb = torch.randn(1, 3, 3, 64, 64)
    with torch.no_grad():
        cached = model.encode_frames(rgb)
        assert set(cached) >= {"f_bn", "f_pre", "logits"} and cached["f_bn"].shape == (1, 3, 512, 2, 2)
        a, b = model(rgb=rgb), model(frame_features=cached)
        for k in ("logits", "attention", "ms_logits"):
            torch.testing.assert_close(a[k], b[k])
        model.backbone.fc.weight.mul_(-1)  # the ImageNet fc trains in stage 2: the cache must not freeze CAM
        c, d = model(rgb=rgb), model(frame_features=cached)
    torch.testing.assert_close(c["attention"], d["attention"])
    assert not torch.allclose(c["attention"], a["attention"])
    with pytest.raises(ValueError, match="exactly one"):
        model(rgb=rgb, frame_features=cached)


def test_egornn_backpropagates_to_trainable_parts():
    model = create_model("egornn", 3, ms_head="reg", order_head=True, input_size=64, **SMALL).train()
    rgb, order = torch.randn(2, 2, 3, 64, 64), torch.randn(2, 4, 3, 64, 64)
    out = model(rgb=rgb, order_rgb=order)
    assert out["ms_logits"].shape == (2, 2, 2, 2) and out["order_logits"].shape == (2, 12)
    loss = (F.cross_entropy(out["logits"], torch.tensor([0, 2]))
            + motion_segmentation_loss(out["ms_logits"], torch.rand(2, 2, 64, 64), "reg")
            + F.cross_entropy(out["order_logits"], torch.tensor([3, 11])))
    loss.backward()
    for name in ("convlstm.cell.conv.weight", "classifier.1.weight", "backbone.layer4.1.conv2.weight",
                 "backbone.fc.weight", "ms_head.fc.weight", "order_head.classifier.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_imagenet_fc_gets_gradient_only_through_attention():
    for attention in (True, False):
        model = create_model("egornn", 3, attention=attention, **SMALL)
        model(rgb=torch.randn(1, 2, 3, 64, 64))["logits"].sum().backward()
        grad = model.backbone.fc.weight.grad
        assert (grad is not None and grad.abs().sum() > 0) == attention
        assert ("attention" in model(rgb=torch.randn(1, 2, 3, 64, 64))) == attention


def test_input_proj_reduces_convlstm_input():
    model = create_model("egornn", 3, input_proj=8, **SMALL)
    assert model.convlstm.cell.in_channels == 8 and model.input_proj.in_channels == 512
    assert model(rgb=torch.randn(1, 2, 3, 64, 64))["logits"].shape == (1, 3)


# ------------------------------------------------------------------------------------------ flow / fusion


def test_flow_stream_averages_logits_over_stacks_and_backpropagates():
    model = create_model("flow", 4, backbone="resnet18").eval()
    assert model.backbone.conv1.in_channels == 10
    flow = torch.randn(2, 3, 10, 64, 64)
    with torch.no_grad():
        out = model(flow=flow)
        singles = torch.stack([model(flow=flow[:, s:s + 1])["logits"] for s in range(3)], 0)
    torch.testing.assert_close(out["logits"], singles.mean(0))
    assert model.forward_features(flow).shape == (2, 512)
    model.train()
    model(flow=flow[:, :1])["logits"].sum().backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0 and model.classifier[1].weight.grad is not None


def test_twostream_joint_and_late():
    rgb_opts, flow_opts = dict(SMALL), dict(backbone="resnet18")
    rgb, flow = torch.randn(2, 2, 3, 64, 64), torch.randn(2, 1, 10, 64, 64)
    joint = create_model("twostream", 4, fusion="joint", rgb_options=rgb_opts, flow_options=flow_opts).eval()
    assert joint.classifier[1].in_features == 512 + 16
    with torch.no_grad():
        out = joint(rgb=rgb, flow=flow)
        rgb_feature = joint.rgb.forward_features(joint.rgb.encode_frames(rgb))["features"]  # pooled c_T
        expected = joint.classifier(torch.cat([joint.flow.forward_features(flow), rgb_feature], 1))
    assert out["logits"].shape == (2, 4) and out["attention"].shape == (2, 2, 2, 2)
    torch.testing.assert_close(out["logits"], expected)

    late = TwoStream(joint.rgb, joint.flow, 4, fusion="late").eval()  # stage models plugged in as they are
    with torch.no_grad():
        out = late(rgb=rgb, flow=flow)
        avg = 0.5 * (joint.rgb(rgb=rgb)["logits"] + joint.flow(flow=flow)["logits"])
    torch.testing.assert_close(out["logits"], avg)
    assert late.classifier is None
    joint.classifier_from_streams()  # init.joint_classifier=late_fusion: joint logits = the late fusion's
    with torch.no_grad():
        torch.testing.assert_close(joint(rgb=rgb, flow=flow)["logits"], avg)
    with pytest.raises(ConfigError, match="no joint classifier"):
        late.classifier_from_streams()

    joint.train()
    joint(rgb=rgb, flow=flow)["logits"].sum().backward()
    trained = (joint.classifier[1].weight, joint.rgb.convlstm.cell.conv.weight,
               joint.flow.backbone.layer4[1].conv2.weight)
    for p in trained:
        assert p.grad is not None and p.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------------ two-in-one


def test_two_in_one_starts_as_plain_egornn():
    """The modulation's last convolutions start at zero: a fresh two-in-one is the Ego-RNN it loads."""
    tio = create_model("two_in_one", 3, **SMALL).eval()
    _nudge_batchnorm(tio)
    ego = create_model("egornn", 3, **SMALL).eval()
    ego.load_state_dict({k: v for k, v in tio.state_dict().items() if not k.startswith("motion_")})
    rgb, flow_pair = torch.randn(2, 2, 3, 64, 64), torch.randn(2, 2, 2, 64, 64)
    with torch.no_grad():
        a, b = tio(rgb=rgb, flow_pair=flow_pair), ego(rgb=rgb)
    torch.testing.assert_close(a["logits"], b["logits"])
    torch.testing.assert_close(a["attention"], b["attention"])


@pytest.mark.parametrize("size", [64, 97, 224])
def test_two_in_one_modulation_matches_conv1_resolution(size):
    tio = create_model("two_in_one", 3, **SMALL)
    rgb, flow_pair = torch.randn(1, 2, 3, size, size), torch.randn(1, 2, 2, size, size)
    feats = tio.encode_frames_with_flow(rgb, flow_pair)
    conv1 = tio.backbone.conv1(rgb[0])
    assert feats["scale"].shape[1:] == (2, *conv1.shape[1:])
    assert feats["scale"].shape[-1] == -(-size // 2)
    tio(rgb=rgb, flow_pair=flow_pair)["logits"].sum().backward()  # from the zero start, the last convs learn
    for name in ("motion_modulation.scale_conv1.weight", "motion_modulation.shift_conv1.weight"):
        assert tio.get_parameter(name).grad.abs().sum() > 0, name
    with torch.no_grad():  # as after some training: a non-zero modulation passes gradient to the condition
        for conv in (tio.motion_modulation.scale_conv1, tio.motion_modulation.shift_conv1):
            conv.weight.normal_(0, 0.01)
    tio.zero_grad()
    out = tio(rgb=rgb, flow_pair=flow_pair)
    out["logits"].sum().backward()
    for name in ("motion_condition.0.weight", "motion_modulation.scale_conv1.weight",
                 "motion_modulation.shift_conv0.weight", "backbone.conv1.weight", "convlstm.cell.conv.weight"):
        assert tio.get_parameter(name).grad.abs().sum() > 0, name


def test_two_in_one_rejects_vgg_and_checks_inputs():
    with pytest.raises(ConfigError, match="stride 2"):
        create_model("two_in_one", 3, backbone="vgg16", hidden=8)
    tio = create_model("two_in_one", 3, **SMALL)
    with pytest.raises(ValueError, match="share"):
        tio(rgb=torch.randn(1, 2, 3, 64, 64), flow_pair=torch.randn(1, 2, 2, 32, 32))


# ------------------------------------------------------------------------------------------ baseline, registry


def test_frame_average_is_blind_to_frame_order():
    model = create_model("frame_average", 5, backbone="resnet18").eval()
    rgb = torch.randn(2, 4, 3, 64, 64)
    with torch.no_grad():
        a = model(rgb=rgb)["logits"]
        b = model(rgb=rgb[:, [2, 0, 3, 1]])["logits"]
        c = model(rgb=rgb[:, [0, 0, 0, 1]])["logits"]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    model.train()
    model(rgb=rgb)["logits"].sum().backward()
    assert model.backbone.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_registry():
    assert {"egornn", "flow", "frame_average", "two_in_one", "twostream"} <= set(list_models())
    with pytest.raises(ConfigError, match="unknown model 'resnet'.*egornn.*two_in_one"):
        create_model("resnet", 3)
    with pytest.raises(ConfigError, match="'hiden'.*hidden"):
        create_model("egornn", 3, hiden=8)
    assert model_options("egornn")["dropout"] == 0.7 and model_options("flow")["dropout"] == 0.5
    model = create_model("egornn", 7, **SMALL)
    assert model.classifier[0].p == 0.7 and model.classifier[1].out_features == 7
    assert model.input_keys == ("rgb",)


EGO_RNN_FAMILY = ("egornn", "flow", "frame_average", "two_in_one", "twostream")


def test_model_inputs_maps_warp_to_flow_and_names_what_is_missing():
    model = create_model("flow", 3, backbone="resnet18")
    warp = torch.randn(1, 1, 10, 8, 8)
    assert model_inputs(model, {"warp": warp, "label": 0})["flow"] is warp
    with pytest.raises(BadInputError, match="needs 'flow'.*add it to data.modalities"):
        model_inputs(model, {"rgb": torch.randn(1, 2, 3, 8, 8)})


def test_every_model_takes_loader_keys():
    b, t, s = 1, 2, 64
    batch = {"rgb": torch.randn(b, t, 3, s, s), "flow": torch.randn(b, 1, 10, s, s),
             "flow_pair": torch.randn(b, t, 2, s, s)}
    for name in EGO_RNN_FAMILY:  # the other families (STANet, VideoLSTM, pose) are tested in their files
        opts = {"twostream": dict(rgb_options=SMALL, flow_options=dict(backbone="resnet18")),
                "flow": dict(backbone="resnet18"), "frame_average": dict(backbone="resnet18")}.get(name, SMALL)
        model = create_model(name, 3, **opts).eval()
        with torch.no_grad():
            out = model(**model_inputs(model, batch))
        assert out["logits"].shape == (b, 3), name
        if "attention" in out:
            torch.testing.assert_close(out["attention"].sum(dim=(2, 3)), torch.ones(b, t))
