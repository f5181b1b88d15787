"""STANet (seed 000): selectable spatial attention, per-step features, second-order temporal pooling,
and the 3-stage recipes (each stage trains its own parameters and no others)."""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import pytest
import torch

from egoattn.errors import ConfigError
from egoattn.models.egornn import EgoRNN
from egoattn.models.flow_stream import flow as build_flow
from egoattn.models.stanet import STANet, align_stacks, stanet, stanet_rgb
from egoattn.models.stanet_attention import ChannelWeightedAttention
from egoattn.training.config import load_recipe
from egoattn.training.task import ActionRecognitionTask

K = 3
SMALL = {"backbone": "resnet18", "hidden": 8}


@functools.lru_cache(maxsize=None)
def _rgb(attention: str) -> Any:
    torch.manual_seed(0)
    return stanet_rgb(K, attention=attention, **SMALL).eval()


@functools.lru_cache(maxsize=None)
def _flow() -> Any:
    torch.manual_seed(1)
    return build_flow(K, backbone="resnet18").eval()


def _inputs(b: int = 2, t: int = 4, s: int = 1, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(b, t, 3, size, size, generator=g), torch.randn(b, s, 10, size, size, generator=g)


def _stanet(attention: str = "cam", rank: int = 1, rgb_steps: str = "convlstm") -> STANet:
    model = STANet(_rgb(attention), _flow(), K, rank=rank, rgb_steps=rgb_steps).eval()
    torch.nn.init.normal_(model.classifier.top_down.bias)  # non-zero biases so the equation test sees them
    torch.nn.init.normal_(model.classifier.bottom_up.bias)
    return model


# --- the RGB network ---------------------------------------------------------------------------------

def test_cam_rgb_network_is_ego_rnn() -> None:
    """attention="cam" is exactly Ego-RNN (same weights -> same logits), so stage 1 is Ego-RNN's stage 1."""
    rgb = _rgb("cam")
    ego = EgoRNN(rgb.backbone, K, attention=True, hidden=SMALL["hidden"]).eval()
    ego.load_state_dict(rgb.state_dict())
    x, _ = _inputs()
    with torch.no_grad():
        ours, theirs = rgb(rgb=x), ego(rgb=x)
    torch.testing.assert_close(ours["logits"], theirs["logits"])
    torch.testing.assert_close(ours["attention"], theirs["attention"])


@pytest.mark.parametrize("attention", ["cam", "channel", "none"])
def test_rgb_per_step_features(attention: str) -> None:
    rgb = _rgb(attention)
    x, _ = _inputs(b=2, t=4)
    with torch.no_grad():
        ff = rgb.encode_frames(x)
        out = rgb.forward_features(ff)
    assert out["step_features"].shape == (2, 4, SMALL["hidden"])
    assert out["attended_features"].shape == (2, 4, rgb.backbone.out_channels)
    # the last step's pooled cell state is the feature stage 1's classifier reads (c_T)
    torch.testing.assert_close(out["step_features"][:, -1], out["features"])
    if attention == "none":
        assert "attention" not in out
        torch.testing.assert_close(out["attended_features"], ff["f_bn"].mean(dim=(3, 4)))
        return
    a = out["attention"]
    assert a.shape == (2, 4, 2, 2)
    torch.testing.assert_close(a.sum(dim=(2, 3)), torch.ones(2, 4))
    # attended features = attention-weighted average of f_pre
    torch.testing.assert_close(out["attended_features"], torch.einsum("bthw,btchw->btc", a, ff["f_pre"]))
    if attention == "channel":
        expected = ChannelWeightedAttention()(ff["f_bn"])["attention"]
        torch.testing.assert_close(a, expected)


def test_channel_and_cam_attention_differ() -> None:
    x, _ = _inputs()
    rgb_cam, rgb_ch = _rgb("cam"), _rgb("channel")
    with torch.no_grad():
        ff = rgb_cam.encode_frames(x)
        a_cam = rgb_cam.forward_features(ff)["attention"]
        a_ch = rgb_ch.forward_features(ff)["attention"]
    assert (a_cam - a_ch).abs().max() > 1e-3


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="attention"):
        stanet_rgb(K, attention="spatial", **SMALL)
    with pytest.raises(ConfigError, match="rgb_steps"):
        STANet(_rgb("cam"), _flow(), K, rgb_steps="hidden")


# --- temporal alignment and second-order pooling ---------------------------------------------------------

def test_align_stacks_known_answers() -> None:
    one = torch.arange(3.0).view(1, 1, 3)
    torch.testing.assert_close(align_stacks(one, 4), one.expand(1, 4, 3))  # one stack: broadcast
    five = torch.arange(5.0).view(1, 5, 1)
    assert align_stacks(five, 25).flatten().tolist() == [t // 5 for t in range(25)]
    two = torch.tensor([[[10.0], [20.0]]])
    assert align_stacks(two, 3).flatten().tolist() == [10.0, 10.0, 20.0]


@pytest.mark.parametrize("rank", [1, 3])
def test_stanet_logits_are_second_order_pooling_of_the_concatenated_steps(rank: int) -> None:
    """score_k = sum_p mean_t (x_t . a_kp + c_kp)(x_t . b_p + d_p), x_t = [flow, rgb c_t]."""
    model = _stanet(rank=rank)
    rgb, flow = _inputs(b=2, t=4, s=1)
    with torch.no_grad():
        out = model(rgb=rgb, flow=flow)
        rgb_steps = model.rgb.forward_features(model.rgb.encode_frames(rgb))["step_features"]
        flow_feat = model.flow.stack_features(flow)  # (B, 1, Cf)
    x = torch.cat([flow_feat.expand(-1, 4, -1), rgb_steps], dim=2)
    assert x.shape == (2, 4, 512 + SMALL["hidden"])
    torch.testing.assert_close(out["step_features"], x)
    td, bu = model.classifier.top_down, model.classifier.bottom_up
    a = td.weight.flatten(1).view(K, rank, -1)
    c = td.bias.view(K, rank)
    b, d = bu.weight.flatten(1), bu.bias
    top = torch.einsum("btf,kpf->btkp", x, a) + c  # (B, T, K, P)
    bottom = torch.einsum("btf,pf->btp", x, b) + d  # (B, T, P)
    expected = (top * bottom.unsqueeze(2)).sum(-1).mean(1)
    torch.testing.assert_close(out["logits"], expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out["temporal_saliency"], bottom.transpose(1, 2))
    assert out["attention"].shape == (2, 4, 2, 2)


def test_attended_steps_and_several_flow_stacks() -> None:
    model = _stanet(attention="channel", rgb_steps="attended")
    rgb, flow = _inputs(b=1, t=4, s=2)
    with torch.no_grad():
        out = model(rgb=rgb, flow=flow)
        stacks = model.flow.stack_features(flow)
    assert out["step_features"].shape == (1, 4, 512 + 512)
    # steps 0, 1 carry stack 0 and steps 2, 3 stack 1
    flow_part = out["step_features"][0, :, :512]
    torch.testing.assert_close(flow_part, stacks[0, [0, 0, 1, 1]])
    assert out["logits"].shape == (1, K)


def test_stage_checkpoints_load_into_the_streams() -> None:
    """Stage 1 (stanet_rgb) and stage 2 (flow) state dicts load strictly into model.rgb / model.flow."""
    torch.manual_seed(5)
    model = stanet(K, rgb_options=dict(attention="cam", **SMALL), flow_options={"backbone": "resnet18"})
    model.rgb.load_state_dict(_rgb("cam").state_dict())
    model.flow.load_state_dict(_flow().state_dict())
    model.eval()
    rgb, flow = _inputs()
    with torch.no_grad():
        out = model(rgb=rgb, flow=flow)
        stage1 = _rgb("cam").forward_features(_rgb("cam").encode_frames(rgb))["step_features"]
    torch.testing.assert_close(out["step_features"][..., 512:], stage1)
    # cached frame features give the same logits (the engine's --cache-features path)
    with torch.no_grad():
        cached = model(frame_features=model.encode_frames(rgb), flow=flow)
    torch.testing.assert_close(cached["logits"], out["logits"])


# --- the recipes -------------------------------------------------------------------------------------------

BUILDERS: dict[str, Callable[..., torch.nn.Module]] = {"stanet_rgb": stanet_rgb, "stanet": stanet, "flow": build_flow}


def _tiny(options: dict[str, Any]) -> dict[str, Any]:
    """Recipe options at tiny size with random weights: ResNet-34 -> ResNet-18 (same parameter names)."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, dict):
            out[k] = _tiny(v)
        elif k == "weights":
            out[k] = "none"
        elif k == "backbone" and v == "resnet34":
            out[k] = "resnet18"
        elif k in ("hidden", "input_proj") and v is not None:
            out[k] = 8
        else:
            out[k] = v
    return out


def _task(name: str) -> ActionRecognitionTask:
    recipe = load_recipe(name)
    model = BUILDERS[recipe.model.name](K, **_tiny(recipe.model.options))
    return ActionRecognitionTask(recipe, ["a", "b", "c"], model=model)


def _prefix(*prefixes: str) -> Callable[[str], bool]:
    return lambda n: n.startswith(prefixes)


STAGES: dict[str, tuple[Callable[[str], bool], tuple[str, ...]]] = {
    # recipe: (which parameters train, which submodules must stay in eval mode)
    "stanet_stage1_rgb": (_prefix("convlstm.", "classifier."), ("backbone",)),
    "stanet_stage2_flow": (lambda n: True, ()),
    "stanet_stage3": (_prefix("classifier."), ("rgb", "flow")),
    "cpu_stanet_stage1_rgb": (_prefix("input_proj.", "convlstm.", "classifier."), ("backbone",)),
    "cpu_stanet_stage2_flow": (lambda n: True, ()),
    "cpu_stanet_stage3": (_prefix("classifier."), ("rgb", "flow")),
}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_each_stage_trains_its_parameters_and_no_others(name: str) -> None:
    expected, frozen_modules = STAGES[name]
    task = _task(name)
    named = dict(task.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable == {n for n in named if expected(n)}
    assert trainable  # every stage trains something
    in_groups = [id(p) for g in task.param_groups for p in g["params"]]
    assert len(in_groups) == len(set(in_groups)) == len(trainable)
    task.train()
    for prefix in frozen_modules:
        assert all(not m.training for m in task.model.get_submodule(prefix).modules())
    assert task.model.classifier.training
    if name.endswith("stage3"):
        # the stream networks' own classifiers are removed from the computation: no gradient reaches them
        s = load_recipe(name).data
        steps = min(s.num_frames, 3)
        batch = {"rgb": torch.randn(2, steps, 3, 32, 32), "label": torch.tensor([0, 2])}
        batch["flow"] = torch.randn(2, 1, 2 * s.flow_stack, 32, 32)
        losses, _ = task.compute_losses(batch)
        losses["cls"].backward()
        got_grad = {n for n, p in named.items() if p.grad is not None}
        assert got_grad == {n for n in trainable}


def test_paper_recipes_follow_seed_000() -> None:
    stages = [load_recipe(n) for n in ("stanet_stage1_rgb", "stanet_stage2_flow", "stanet_stage3")]
    for recipe, epochs in zip(stages, (300, 150, 100)):
        d, o = recipe.data, recipe.optim
        assert (d.split, d.size, d.resize, d.flow_stack) == ("fpvo", 224, 256, 5)
        assert (o.name, o.momentum, o.weight_decay, o.lr) == ("sgd", 0.9, 5e-4, 1e-3)
        assert recipe.train.epochs == epochs
        assert math.isclose(o.lr * o.per_epoch_gamma ** epochs, 1e-7, rel_tol=1e-3)  # 1e-3 -> 1e-7
    assert stages[0].data.num_frames == stages[2].data.num_frames == 25
    assert stages[1].model.options["in_channels"] == 10
    assert stages[2].model.options["rank"] == 1
    assert set(stages[2].data.modalities) == {"rgb", "flow"}
    # the CPU stage 3 reads the streams stages 1 and 2 train (same shapes, same modality, same size)
    cpu = [load_recipe(n) for n in ("cpu_stanet_stage1_rgb", "cpu_stanet_stage2_flow", "cpu_stanet_stage3")]
    assert {k: v for k, v in cpu[2].model.options["rgb_options"].items() if k != "weights"} == \
        {k: v for k, v in cpu[0].model.options.items() if k != "weights"}
    assert cpu[2].model.options["flow_options"]["in_channels"] == cpu[1].model.options["in_channels"]
    assert cpu[1].data.modalities[0] in cpu[2].data.modalities
    assert cpu[0].data.size == cpu[1].data.size == cpu[2].data.size
