"""Recipes: loading, strict validation, overrides, and which parameters each shipped recipe trains."""

from __future__ import annotations

import functools
import re
from typing import Any, Callable

import pytest

from egoattn.errors import ConfigError
from egoattn.training.config import (
    ALIASES,
    Recipe,
    apply_overrides,
    dump_recipe,
    list_recipes,
    load_recipe,
    validate_recipe,
)
from egoattn.training.task import ActionRecognitionTask, assign_parameter_groups

SHIPPED = [name for name in list_recipes() if name not in ALIASES]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_recipe_loads_and_round_trips(name: str) -> None:
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.description
    import yaml

    assert validate_recipe(yaml.safe_load(dump_recipe(recipe)), "dump") == recipe


def test_expected_recipes_are_shipped() -> None:
    faithful = {"egornn_rgb_stage1", "egornn_rgb_stage2", "egornn_noattn_stage1", "flow", "twostream_joint",
                "ms_cls", "ms_reg", "ms_order", "two_in_one", "frame_average"}
    cpu = {"cpu_frame_average", "cpu_convlstm", "cpu_egornn", "cpu_flow", "cpu_twostream_joint", "cpu_ms_cls",
           "cpu_ms_reg", "cpu_ms_order", "cpu_two_in_one"}
    assert faithful | cpu <= set(SHIPPED)
    assert load_recipe("demo") == load_recipe("cpu_egornn_cam")


def test_paper_numbers_of_the_faithful_recipes() -> None:
    s1, s2, fl, ts = (load_recipe(n) for n in ("egornn_rgb_stage1", "egornn_rgb_stage2", "flow", "twostream_joint"))
    for r in (s1, s2):
        assert (r.optim.name, r.optim.weight_decay, r.optim.eps, r.optim.gamma) == ("adam", 4e-5, 1e-4, 0.1)
        assert (r.data.num_frames, r.data.batch_size, r.data.size) == (25, 32, 224)
        assert r.model.options["backbone"] == "resnet34" and r.model.options["weights"] == "imagenet"
    assert (s1.optim.lr, s1.optim.milestones, s1.train.epochs) == (1e-3, [25, 75, 150], 300)
    assert (s2.optim.lr, s2.optim.milestones, s2.train.epochs) == (1e-4, [25, 75], 150)
    assert (fl.optim.name, fl.optim.lr, fl.optim.momentum, fl.optim.weight_decay) == ("sgd", 1e-2, 0.9, 5e-4)
    assert (fl.optim.milestones, fl.optim.gamma, fl.train.epochs, fl.data.flow_stack) == ([150, 300, 500], 0.5, 750, 5)
    assert (ts.optim.name, ts.optim.per_epoch_gamma, ts.train.epochs) == ("sgd", 0.99, 250)
    assert [g.lr for g in ts.params.groups] == [1e-2, 1e-4]


def test_unknown_key_in_a_file_names_the_key_and_the_file(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodel: {name: egornn}\noptim: {lr: 0.1, momentom: 0.9}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml.*unknown key 'optim\.momentom'"):
        load_recipe(path)


def test_wrong_type_names_the_key(tmp_path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nmodel: {name: egornn}\ndata: {num_frames: many}\n")
    with pytest.raises(ConfigError, match=r"r\.yaml.*data\.num_frames"):
        load_recipe(path)
    path.write_text("name: x\nmodel: {name: egornn}\noptim: {name: rmsprop}\n")
    with pytest.raises(ConfigError, match=r"optim\.name"):
        load_recipe(path)


def test_unknown_recipe_name_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="cpu_egornn"):
        load_recipe("no_such_recipe")


def test_overrides_are_yaml_typed_and_validated() -> None:
    base = load_recipe("cpu_egornn")
    r = apply_overrides(base, ["optim.lr=0.01", "data.num_frames=8", "data.modalities=[rgb, motion]",
                               "model.options.hidden=32", "init.from_run.rgb=runs/a", "train.precision=32"])
    assert r.optim.lr == 0.01 and isinstance(r.data.num_frames, int) and r.data.num_frames == 8
    assert r.data.modalities == ["rgb", "motion"]
    assert r.model.options["hidden"] == 32 and r.init.from_run == {"rgb": "runs/a"}
    assert r.train.precision == "32"
    assert base.optim.lr == 1e-3  # the original is untouched
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        apply_overrides(base, ["optim.lrr=0.01"])
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        apply_overrides(base, ["nope=1"])
    with pytest.raises(ConfigError, match="data.num_frames"):
        apply_overrides(base, ["data.num_frames=-3"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(base, ["optim.lr"])


def test_a_group_that_matches_nothing_is_an_error() -> None:
    from torch import nn

    recipe = apply_overrides(load_recipe("cpu_egornn"), ["params.groups=[{match: [convlstmm.*]}]"])
    with pytest.raises(ConfigError, match=r"params.groups\[0\]"):
        assign_parameter_groups(nn.Linear(2, 2), recipe.params, recipe.optim)


# --- what each recipe trains ------------------------------------------------------------------------

TINY = {"weights": "none", "hidden": 16, "input_proj": 8, "backbone": "resnet18"}


def _tiny(options: dict[str, Any]) -> dict[str, Any]:
    """The recipe's options at tiny size with random weights (no download), recursively.

    ResNet-34 becomes ResNet-18 (the same parameter names, two blocks per stage instead of 3-6).
    """
    out = {}
    for k, v in options.items():
        if isinstance(v, dict):
            out[k] = _tiny(v)
        elif k in TINY and v is not None and not (k == "backbone" and v != "resnet34"):
            out[k] = TINY[k]
        else:
            out[k] = v
    return out


@functools.lru_cache(maxsize=None)
def _task(name: str) -> ActionRecognitionTask:
    from egoattn.models.registry import create_model

    recipe = load_recipe(name)
    model = create_model(recipe.model.name, 3, **_tiny(recipe.model.options))
    return ActionRecognitionTask(recipe, ["a", "b", "c"], model=model)


def _head(*prefixes: str) -> Callable[[str], bool]:
    return lambda n: n.startswith(prefixes)


RESNET_L4_CONV = re.compile(r"(rgb\.)?backbone\.layer4\.\d\.conv\d\.weight")
STAGE1 = _head("convlstm.", "classifier.")
STAGE2 = lambda n: STAGE1(n) or bool(RESNET_L4_CONV.fullmatch(n)) or n.startswith("backbone.fc.")  # noqa: E731
CPU_STAGE1 = _head("input_proj.", "convlstm.", "classifier.")
CPU_STAGE2 = _head("input_proj.", "convlstm.", "classifier.", "backbone.fc.")
# The CPU stage 2 of EfficientNet-Lite0 (cpu_egornn_cam): also its last stage, blocks 5-6 and the conv head.
CPU_LAST_STAGE = _head("input_proj.", "convlstm.", "classifier.", "backbone.fc.", "backbone.blocks.5.",
                       "backbone.blocks.6.", "backbone.conv_head.", "backbone.bn2.")

EXPECTED_TRAINABLE: dict[str, Callable[[str], bool]] = {
    "egornn_rgb_stage1": STAGE1,
    "egornn_noattn_stage1": STAGE1,
    "egornn_rgb_stage2": STAGE2,
    "ms_cls": lambda n: STAGE2(n) or n.startswith("ms_head."),
    "ms_reg": lambda n: STAGE2(n) or n.startswith("ms_head."),
    "ms_order": lambda n: STAGE2(n) or n.startswith(("ms_head.", "order_head.")),
    "two_in_one": lambda n: STAGE2(n) or n.startswith(("motion_condition.", "motion_modulation.")),
    "frame_average": _head("classifier."),
    "flow": lambda n: True,
    "twostream_joint": lambda n: (n.startswith(("classifier.", "rgb.convlstm.", "rgb.backbone.fc.",
                                                "flow.backbone.layer4."))
                                  or bool(RESNET_L4_CONV.fullmatch(n))),
    "cpu_frame_average": _head("classifier."),
    "cpu_convlstm": CPU_STAGE1,
    "cpu_egornn": CPU_STAGE1,
    "cpu_egornn_cam": CPU_LAST_STAGE,
    "cpu_ms_cls": lambda n: CPU_LAST_STAGE(n) or n.startswith("ms_head."),
    "cpu_ms_reg": lambda n: CPU_LAST_STAGE(n) or n.startswith("ms_head."),
    "cpu_ms_order": lambda n: CPU_LAST_STAGE(n) or n.startswith(("ms_head.", "order_head.")),
    "cpu_two_in_one": lambda n: CPU_STAGE2(n) or n.startswith(("motion_condition.", "motion_modulation.")),
    "cpu_flow": lambda n: True,
    "cpu_twostream_joint": _head("classifier.", "rgb.input_proj.", "rgb.convlstm.", "rgb.backbone.fc.",
                                 "flow.backbone.blocks.6.", "flow.backbone.conv_head.", "flow.backbone.bn2."),
}


def test_every_shipped_recipe_has_an_expectation() -> None:
    assert set(EXPECTED_TRAINABLE) <= set(SHIPPED)  # other recipes (STANet) are tested by their authors


@pytest.mark.parametrize("name", sorted(EXPECTED_TRAINABLE))
def test_trainable_parameters_are_those_of_models_md(name: str) -> None:
    task = _task(name)
    named = dict(task.model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable == {n for n in named if EXPECTED_TRAINABLE[name](n)}
    # the optimiser sees exactly the trainable parameters, each once
    in_groups = [id(p) for g in task.param_groups for p in g["params"]]
    assert len(in_groups) == len(set(in_groups)) == len(trainable)
    # modules kept in eval mode while training
    task.train()
    backbone = task.model.rgb.backbone if name.endswith("twostream_joint") else task.model.backbone
    frozen_backbone = name not in ("flow", "cpu_flow")
    assert all(not m.training for m in backbone.modules()) == frozen_backbone
    assert task.model.classifier.training


def test_stage2_trains_layer4_convs_but_not_their_bn_or_downsample() -> None:
    named = dict(_task("egornn_rgb_stage2").model.named_parameters())
    assert named["backbone.layer4.0.conv1.weight"].requires_grad
    assert named["backbone.layer4.1.conv2.weight"].requires_grad
    assert named["backbone.fc.weight"].requires_grad
    assert not named["backbone.layer4.0.bn1.weight"].requires_grad
    assert not named["backbone.layer4.0.downsample.0.weight"].requires_grad
    assert not named["backbone.layer3.0.conv1.weight"].requires_grad
    stage1 = dict(_task("egornn_rgb_stage1").model.named_parameters())
    assert not stage1["backbone.layer4.0.conv1.weight"].requires_grad and not stage1["backbone.fc.weight"].requires_grad


def test_twostream_joint_group_learning_rates_and_modes() -> None:
    task = _task("twostream_joint")
    lr_of = {n: g["lr"] for g in task.param_groups for n in g["names"]}
    assert lr_of["classifier.1.weight"] == lr_of["rgb.convlstm.cell.conv.weight"] == 1e-2
    assert lr_of["rgb.backbone.layer4.1.conv2.weight"] == lr_of["rgb.backbone.fc.weight"] == 1e-2
    assert lr_of["flow.backbone.layer4.0.bn1.weight"] == lr_of["flow.backbone.layer4.1.conv1.weight"] == 1e-4
    assert "flow.backbone.layer3.0.conv1.weight" not in lr_of
    task.train()
    assert task.model.flow.backbone.layer4.training and not task.model.flow.backbone.layer3.training
    assert not task.model.rgb.backbone.layer4.training
    optimizer = task.configure_optimizers()
    assert [g["lr"] for g in optimizer["optimizer"].param_groups] == [1e-2, 1e-4]


def test_schedules() -> None:
    import torch

    task = _task("cpu_frame_average")
    cfg = task.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["eps"] == 1e-4
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[9] == pytest.approx(1e-3) and lrs[10] == pytest.approx(1e-4)  # x0.1 after 10 epochs
    ts = _task("twostream_joint").configure_optimizers()
    opt, sched = ts["optimizer"], ts["lr_scheduler"]["scheduler"]
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-2 * 0.99, 1e-4 * 0.99])


def test_recipe_type_is_exported() -> None:
    assert isinstance(load_recipe("demo"), Recipe)
