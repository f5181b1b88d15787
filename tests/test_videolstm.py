"""VideoLSTM (seed 003): Conv-ALSTM attention, learned initial state, per-step scores, motion attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from egoattn.errors import ConfigError
from egoattn.models.videolstm import ConvALSTM, ConvAttention, videolstm, videolstm_motion

SMALL = dict(backbone="resnet18", hidden=8, attention_channels=6, head_channels=12, input_proj=8)


# ------------------------------------------------------------------------------------------ attention


def test_attention_is_the_equation_and_sums_to_one():
    att = ConvAttention(in_channels=5, state_channels=4, channels=3)
    x, h = torch.randn(2, 5, 3, 4), torch.randn(2, 4, 3, 4)
    a = att(x, h)
    assert a.shape == (2, 3, 4)
    torch.testing.assert_close(a.sum(dim=(1, 2)), torch.ones(2))
    # Z = u^T tanh(W_xa x + W_ha h + b) at every location, written with einsum
    wx, b = att.w_x.weight[:, :, 0, 0], att.w_x.bias
    wh, u = att.w_h.weight[:, :, 0, 0], att.u.weight[0, :, 0, 0]
    z = torch.einsum("k,nkyx->nyx", u, torch.tanh(torch.einsum("kc,ncyx->nkyx", wx, x)
                                                   + torch.einsum("kc,ncyx->nkyx", wh, h) + b[:, None, None]))
    torch.testing.assert_close(a, z.flatten(1).softmax(1).view(2, 3, 4))


def test_attention_changes_with_the_previous_hidden_state():
    att = ConvAttention(in_channels=5, state_channels=4, channels=3)
    x = torch.randn(1, 5, 3, 3)
    a1 = att(x, torch.randn(1, 4, 3, 3))
    a2 = att(x, torch.randn(1, 4, 3, 3))
    assert (a1 - a2).abs().max() > 1e-3
    torch.testing.assert_close(a2.sum(), torch.tensor(1.0))


def test_initial_state_is_tanh_conv_of_the_mean_feature():
    core = ConvALSTM(in_channels=5, hidden=4, attention_channels=3)
    x = torch.randn(2, 6, 5, 4, 4)
    h0, c0 = core.initial_state(x)
    mean = x.mean(dim=1)
    torch.testing.assert_close(h0, torch.tanh(F.conv2d(mean, core.init_h.weight, core.init_h.bias, padding=1)))
    torch.testing.assert_close(c0, torch.tanh(F.conv2d(mean, core.init_c.weight, core.init_c.bias, padding=1)))
    assert (h0 - c0).abs().max() > 1e-3  # two separate convolutions


def test_alstm_steps_feed_attended_features_to_the_convlstm():
    core = ConvALSTM(in_channels=5, hidden=4, attention_channels=3)
    x = torch.randn(2, 3, 5, 4, 4)
    hs, attention = core(x)
    state = core.initial_state(x)
    for t in range(3):
        a = core.attention(x[:, t], state[0])
        torch.testing.assert_close(attention[:, t], a)
        state = core.cell(x[:, t] * a.unsqueeze(1), state)
        torch.testing.assert_close(hs[:, t], state[0])
    torch.testing.assert_close(attention.sum(dim=(2, 3)), torch.ones(2, 3))


# ------------------------------------------------------------------------------------------ the model


def test_video_score_is_the_sum_of_per_step_scores():
    model = videolstm(4, **SMALL).eval()
    rgb = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        out = model(rgb=rgb)
        assert out["logits"].shape == (2, 4) and out["step_logits"].shape == (2, 3, 4)
        assert out["attention"].shape == (2, 3, 2, 2)
        torch.testing.assert_close(out["attention"].sum(dim=(2, 3)), torch.ones(2, 3))
        torch.testing.assert_close(out["logits"], out["step_logits"].sum(dim=1))
        # each step: pooled H_t -> Linear -> tanh -> (dropout) -> Linear
        x = model.input_proj(model.encode_frames(rgb)["f_bn"].flatten(0, 1)).view(2, 3, 8, 2, 2)
        hs, _ = model.alstm(x)
        head = model.head
        step = head.classifier(torch.tanh(head.fc(hs.mean(dim=(3, 4)))))
        torch.testing.assert_close(out["step_logits"], step)
        model.head.aggregate = "mean"
        torch.testing.assert_close(model(rgb=rgb)["logits"], step.mean(dim=1))


def test_frame_features_path_matches_rgb_path():
    model = videolstm(3, **SMALL).eval()
    rgb = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        direct = model(rgb=rgb)
        cached = model(frame_features=model.encode_frames(rgb))
    torch.testing.assert_close(direct["logits"], cached["logits"])
    with pytest.raises(ValueError, match="exactly one"):
        model()


def test_vgg16_pool5_default_backbone_backpropagates():
    model = videolstm(3, hidden=8, attention_channels=4, head_channels=8)  # vgg16, 512 channels, no projection
    assert model.backbone.name == "vgg16"
    out = model(rgb=torch.randn(1, 2, 3, 64, 64))
    assert out["attention"].shape == (1, 2, 2, 2)
    out["logits"].sum().backward()
    for name in ("alstm.attention.u.weight", "alstm.attention.w_h.weight", "alstm.init_h.weight",
                 "head.fc.weight", "backbone.features.0.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="aggregate"):
        videolstm(3, aggregate="max", **{k: v for k, v in SMALL.items()})
    with pytest.raises(ConfigError, match="flow_channels"):
        videolstm_motion(3, flow_channels=3, **SMALL)
    with pytest.raises(ConfigError, match="motion_state"):
        videolstm_motion(3, motion_state="next", **SMALL)


# ------------------------------------------------------------------------------------------ motion attention


def _motion_model(state: str = "current"):
    return videolstm_motion(3, motion_hidden=6, motion_state=state, **SMALL).eval()


def test_motion_state_drives_the_attention():
    model = _motion_model("current")
    rgb, flow = torch.randn(1, 3, 3, 64, 64), torch.randn(1, 3, 2, 64, 64)
    with torch.no_grad():
        a = model(rgb=rgb, flow_pair=flow)["attention"]
        torch.testing.assert_close(a.sum(dim=(2, 3)), torch.ones(1, 3))
        changed = flow.clone()
        changed[:, 0] = torch.randn(1, 2, 64, 64)
        b = model(rgb=rgb, flow_pair=changed)["attention"]
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-4  # M_1 comes from the flow of step 1
    assert model.input_keys == ("rgb", "flow_pair")


def test_previous_motion_state_lags_one_step():
    model = _motion_model("previous")
    rgb, flow = torch.randn(1, 3, 3, 64, 64), torch.randn(1, 3, 2, 64, 64)
    with torch.no_grad():
        a = model(rgb=rgb, flow_pair=flow)["attention"]
        last = flow.clone()
        last[:, 2] = torch.randn(1, 2, 64, 64)
        torch.testing.assert_close(model(rgb=rgb, flow_pair=last)["attention"], a)  # flow of the last step unused
        first = flow.clone()
        first[:, 0] = torch.randn(1, 2, 64, 64)
        b = model(rgb=rgb, flow_pair=first)["attention"]
    torch.testing.assert_close(b[:, 0], a[:, 0])  # M_0 = 0
    assert (b[:, 1] - a[:, 1]).abs().max() > 1e-4


def test_motion_model_with_flow_stacks_backpropagates():
    model = videolstm_motion(3, flow_channels=10, motion_hidden=6, **SMALL)
    assert model.input_keys == ("rgb", "flow")
    with pytest.raises(ValueError, match="flow="):
        model(rgb=torch.randn(1, 2, 3, 64, 64))
    out = model(rgb=torch.randn(1, 2, 3, 64, 64), flow=torch.randn(1, 2, 10, 64, 64))
    out["logits"].sum().backward()
    params = dict(model.named_parameters())
    for name in ("motion.conv.weight", "alstm.attention.w_h.weight", "flow_backbone.conv1.weight",
                 "backbone.conv1.weight", "head.classifier.weight"):
        assert params[name].grad is not None and params[name].grad.abs().sum() > 0, name
