"""The VideoLSTM and pose-driven attention recipes (seeds 002, 003): they load, train what their headers say,
keep the frozen parts in eval mode, and the pose encoder of a pose_lstm run loads into the attention models."""

from __future__ import annotations

import functools
from typing import Any, Callable

import pytest
import torch

from egoattn.models.registry import create_model
from egoattn.training.config import apply_overrides, load_recipe
from egoattn.training.run import load_init_weights
from egoattn.training.task import ActionRecognitionTask

VIDEOLSTM = ["videolstm", "videolstm_motion", "cpu_videolstm", "cpu_videolstm_motion"]
POSE_LSTM = ["pose_lstm", "cpu_pose_lstm"]
POSE_ATTENTION = ["pose_separable", "pose_parts", "pose_granularity",
                  "cpu_pose_separable", "cpu_pose_parts", "cpu_pose_granularity"]
RECIPES = VIDEOLSTM + POSE_LSTM + POSE_ATTENTION

#: Small stand-ins with random weights (no download): the parameter names stay those of the recipe's
#: backbone family (VGG-16 / S3D / ResNet-34 / EfficientNet-Lite0 keep their names, only widths shrink).
TINY = {"weights": "none", "flow_weights": "none", "hidden": 8, "motion_hidden": 8, "attention_channels": 8,
        "head_channels": 8, "pose_hidden": 8, "attention_hidden": 8, "layers": 2, "pose_layers": 2}


def _tiny(name: str) -> dict[str, Any]:
    recipe = load_recipe(name)
    options = {k: TINY.get(k, v) for k, v in recipe.model.options.items()}
    if "num_frames" in options:  # the separable model's grid: a small clip keeps the probe cheap
        options.update(num_frames=8, input_size=64)
    if options.get("backbone") == "resnet34":
        options["backbone"] = "resnet18"  # same parameter names
    return options


@functools.lru_cache(maxsize=None)
def _task(name: str) -> ActionRecognitionTask:
    recipe = load_recipe(name)
    model = create_model(recipe.model.name, 3, **_tiny(name))
    return ActionRecognitionTask(recipe, ["a", "b", "c"], model=model)


def _head(*prefixes: str) -> Callable[[str], bool]:
    return lambda n: n.startswith(prefixes)


#: What each recipe's header says trains (everything else frozen).
EXPECTED_TRAINABLE: dict[str, Callable[[str], bool]] = {
    "videolstm": _head("alstm.", "head."),
    "videolstm_motion": _head("motion.", "alstm.", "head."),
    "cpu_videolstm": _head("input_proj.", "alstm.", "head."),
    "cpu_videolstm_motion": _head("input_proj.", "flow_proj.", "motion.", "alstm.", "head."),
    "pose_lstm": lambda n: True,
    "cpu_pose_lstm": lambda n: True,
    "pose_separable": _head("backbone.", "spatial.", "temporal.", "classifier."),
    "pose_parts": _head("backbone.", "attention.", "classifier."),
    "pose_granularity": _head("backbone.", "segment_attention.", "granularity_attention.", "classifier."),
    "cpu_pose_separable": _head("spatial.", "temporal.", "classifier."),
    "cpu_pose_parts": _head("attention.", "classifier."),
    "cpu_pose_granularity": _head("segment_attention.", "granularity_attention.", "classifier."),
}
#: Modules the header says stay in eval mode while training.
EXPECTED_EVAL: dict[str, tuple[str, ...]] = {
    "videolstm": ("backbone",), "cpu_videolstm": ("backbone",),
    "videolstm_motion": ("backbone", "flow_backbone"), "cpu_videolstm_motion": ("backbone", "flow_backbone"),
    "pose_lstm": (), "cpu_pose_lstm": (),
    "pose_separable": ("pose_encoder",), "pose_parts": ("pose_encoder",), "pose_granularity": ("pose_encoder",),
    "cpu_pose_separable": ("backbone", "pose_encoder"), "cpu_pose_parts": ("backbone", "pose_encoder"),
    "cpu_pose_granularity": ("backbone", "pose_encoder"),
}


def test_every_new_recipe_has_its_expectations() -> None:
    assert set(EXPECTED_TRAINABLE) == set(EXPECTED_EVAL) == set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_trainable_and_frozen_parameters_are_those_of_the_header(name: str) -> None:
    task = _task(name)
    named = dict(task.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable == {n for n in named if EXPECTED_TRAINABLE[name](n)}
    if name in POSE_LSTM:
        assert trainable == set(named)  # the encoder pretraining trains all of it
    else:
        assert trainable and trainable != set(named)  # something trains, something is frozen
    in_groups = [id(p) for g in task.param_groups for p in g["params"]]
    assert len(in_groups) == len(set(in_groups)) == len(trainable)
    task.train()
    for module_name, module in task.model.named_children():
        frozen = module_name in EXPECTED_EVAL[name]
        assert all(not m.training for m in module.modules()) == frozen, module_name


@pytest.mark.parametrize("name", ["cpu_videolstm", "cpu_pose_separable", "cpu_pose_parts", "cpu_pose_granularity",
                                  "cpu_videolstm_motion"])
def test_cpu_recipes_use_the_bundled_weights_and_their_frames(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.model.options["weights"] == "bundled"
    assert recipe.model.options["backbone"] == "efficientnet_lite0"
    assert (recipe.data.num_frames, recipe.data.size) == (4, 112)
    if "num_frames" in recipe.model.options:  # the separable attention's grid follows the clip
        assert (recipe.model.options["num_frames"], recipe.model.options["input_size"]) == (4, 112)


def test_pose_recipes_read_keypoints_and_pair_with_their_encoder() -> None:
    pairs = [(n, "cpu_pose_lstm" if n.startswith("cpu_") else "pose_lstm") for n in POSE_ATTENTION]
    for stage2, stage1 in pairs:
        a, b = load_recipe(stage2), load_recipe(stage1)
        assert "keypoints" in a.data.modalities and b.data.modalities == ["keypoints"]
        assert a.model.options["freeze_pose"] is True
        # the pretrained encoder must fit: same layout, width, depth and sequence length
        assert (a.model.options["pose_hidden"], a.model.options["pose_layers"], a.model.options["layout"]) == (
            b.model.options["hidden"], b.model.options["layers"], b.model.options["layout"])
        assert a.data.num_frames == b.data.num_frames
        assert a.init.from_run == {}  # given on the command line: --set init.from_run.pose_encoder=RUN


def test_paper_settings_of_the_faithful_recipes() -> None:
    for name in ("videolstm", "videolstm_motion"):
        r = load_recipe(name)
        o = r.model.options
        assert (o["backbone"], o["weights"], o["hidden"], o["head_channels"], o["dropout"], o["aggregate"]) == (
            "vgg16", "imagenet", 512, 1024, 0.7, "sum")
        assert (r.data.num_frames, r.data.batch_size, r.data.size) == (30, 15, 224)  # seed 003
    p = load_recipe("pose_lstm").model.options
    assert (p["hidden"], p["layers"]) == (512, 3)
    s = load_recipe("pose_separable").model.options
    assert (s["alpha_reg"], s["beta_reg"], s["dropout"]) == (1e-5, 1e-5, 0.5)
    assert load_recipe("pose_granularity").model.options["granularities"] == [2, 3, 4]


@pytest.mark.parametrize("name", ["cpu_pose_separable", "cpu_pose_parts", "cpu_pose_granularity"])
def test_a_pose_lstm_checkpoint_loads_into_the_frozen_encoder(name: str, tmp_path) -> None:
    stage1 = load_recipe("cpu_pose_lstm")
    encoder = create_model("pose_lstm", 3, **{**stage1.model.options, "hidden": 8, "layers": 2})
    torch.save({"state_dict": {f"model.{k}": v for k, v in encoder.state_dict().items()},
                "hyper_parameters": {"recipe": stage1.model_dump(mode="json"), "classes": ["a", "b", "c"]}},
               tmp_path / "pose.ckpt")
    recipe = apply_overrides(load_recipe(name), [f"init.from_run.pose_encoder={tmp_path / 'pose.ckpt'}"])
    task = ActionRecognitionTask(recipe, ["a", "b", "c"], model=create_model(recipe.model.name, 3, **_tiny(name)))
    before = {k: v.clone() for k, v in task.model.state_dict().items() if not k.startswith("pose_encoder.")}
    load_init_weights(task.model, recipe, ["a", "b", "c"])
    for k, v in encoder.state_dict().items():
        torch.testing.assert_close(task.model.pose_encoder.state_dict()[k], v)
    for k, v in task.model.state_dict().items():  # nothing else is touched
        if k in before:
            torch.testing.assert_close(v, before[k])
    assert not any(p.requires_grad for p in task.model.pose_encoder.parameters())
