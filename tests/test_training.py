"""Training engine on a tiny prepared dataset: run directory, determinism, init, cache, resume, NaN, DDP.

The dataset: 3 classes x 4 subjects x 2 clips, 8 frames of 64x64; each class is a square of its own
colour at a random place on grey noise, so a frozen ImageNet backbone separates the classes easily.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from egoattn.data.clipstore import ClipWriter
from egoattn.data.manifest import ClipRecord, write_classes, write_manifest
from egoattn.data.transforms import Normalize
from egoattn.errors import BadInputError, ConfigError, EgoattnError
from egoattn.training.config import apply_overrides, load_recipe
from egoattn.training.features import cache_features, check_cacheable
from egoattn.training.run import (
    load_init_weights,
    load_run,
    make_datamodule,
    make_eval_loader,
    read_checkpoint,
    train,
)
from egoattn.training.task import ActionRecognitionTask

CLASSES = ["take_cup", "put_cup", "open_jar"]
COLOURS = [(230, 30, 30), (30, 230, 30), (30, 30, 230)]


def first_val_batch(dm) -> dict:
    """The first validation batch as the training step sees it (after the DataModule's on_after_batch_transfer)."""
    return dm.on_after_batch_transfer(next(iter(dm.val_dataloader())), 0)


# The demo recipe at test size: 48 px, 4 frames, a small ConvLSTM, validation on the test subject.
TINY = ["data.size=48", "data.resize=48", "data.num_frames=4", "data.batch_size=6", "data.num_workers=0",
        "data.val=test", "model.options.hidden=16", "model.options.input_proj=16", "model.options.input_size=48",
        "model.options.dropout=0", "optim.lr=0.01", "optim.milestones=[]", "train.epochs=3"]


def make_dataset(root: Path, frames: int = 8, size: int = 64) -> Path:
    rng = np.random.default_rng(0)
    records = []
    for subject in ("S1", "S2", "S3", "S4"):
        for label, colour in zip(CLASSES, COLOURS):
            for k in range(2):
                clip_id = f"{subject}_{label}_{k}"
                video = rng.integers(90, 160, size=(frames, size, size, 3), dtype=np.uint8)
                y, x = rng.integers(4, size - 28, size=2)
                for t in range(frames):
                    video[t, y:y + 24, x + t:x + t + 20] = colour
                motion = np.zeros((frames, size, size), np.uint8)
                motion[:, y:y + 24, x:x + 28] = 255
                flow = np.full((frames - 1, size, size, 2), 128, np.uint8)  # 0 px ...
                flow[:, y:y + 24, x:x + 20, 0] = 128 + 6 * (1 + CLASSES.index(label))  # ... but the square moves
                with ClipWriter(root / "clips" / f"{clip_id}.zip", clip_id, fps=15) as w:
                    w.add_rgb(video)
                    w.add_gray("motion", motion)
                    w.add_flow("flow", flow, bound=20, method="test")
                    w.add_flow("warp", flow, bound=20, method="test")
                verb, noun = label.split("_")
                records.append(ClipRecord(clip_id, f"clips/{clip_id}.zip", label, verb, noun, subject, 0, frames,
                                          15.0, frames))
    write_classes(root / "classes.txt", CLASSES)
    write_manifest(root / "manifest.csv", records)
    return root


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("runs") / "a"
    started = time.perf_counter()
    train("cpu_egornn", data=data, out=out, overrides=TINY)
    return out, time.perf_counter() - started


def test_run_writes_every_file_and_the_loss_decreases(first_run) -> None:
    out, _ = first_run
    for name in ("config.yaml", "classes.txt", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.csv",
                 "metrics.json"):
        assert (out / name).is_file(), name
    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert (out / "classes.txt").read_text().split() == CLASSES
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["size"] == 48 and saved["name"] == "cpu_egornn"
    rows = read_csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0], losses
    assert float(rows[0]["lr"]) == pytest.approx(0.01)
    summary = json.loads((out / "metrics.json").read_text())
    val = [float(r["val_acc"]) for r in rows]
    assert summary["best_val_acc"] == max(val)
    assert summary["best_epoch"] == val.index(max(val)) + 1
    ckpt = read_checkpoint(out / "checkpoints" / "best.ckpt")
    assert ckpt["epoch"] == summary["best_epoch"] - 1
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"] == 2


def test_same_seed_gives_the_same_metrics(first_run, data, tmp_path) -> None:
    out, _ = first_run
    again = train("cpu_egornn", data=data, out=tmp_path / "b", overrides=TINY)
    assert json.loads((again / "metrics.json").read_text()) == json.loads((out / "metrics.json").read_text())
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(read_csv(again / "metrics.csv")) == strip(read_csv(out / "metrics.csv"))


def test_best_checkpoint_reproduces_best_val_acc(first_run, data) -> None:
    out, _ = first_run
    loaded = load_run(out)
    assert loaded.classes == CLASSES and not loaded.model.training
    correct = total = 0
    normalize = Normalize.for_model(loaded.model)  # the loader ships uint8
    with torch.no_grad():
        for batch in make_eval_loader(loaded, data, batch_size=4):
            logits = loaded.model(rgb=normalize(batch)["rgb"])["logits"]
            correct += int((logits.argmax(1) == batch["label"]).sum())
            total += len(batch["label"])
    assert total == 6  # subject S2: 3 classes x 2 clips
    assert correct / total == pytest.approx(json.loads((out / "metrics.json").read_text())["best_val_acc"], abs=1e-6)


def test_existing_run_dir_is_refused_and_resume_continues(first_run, data, tmp_path) -> None:
    out, _ = first_run
    with pytest.raises(BadInputError, match="not empty.*--resume"):
        train("cpu_egornn", data=data, out=out, overrides=TINY)
    with pytest.raises(BadInputError, match="nothing to resume"):
        train("cpu_egornn", data=data, out=tmp_path / "empty", overrides=TINY, resume=True)
    # continue a copy of the 3-epoch run for one more epoch
    import shutil

    copy = tmp_path / "resumed"
    shutil.copytree(out, copy)
    train("cpu_egornn", data=data, out=copy, overrides=[*TINY, "train.epochs=4"], resume=True)
    rows, before = read_csv(copy / "metrics.csv"), read_csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert rows[:3] == before
    assert read_checkpoint(copy / "checkpoints" / "last.ckpt")["epoch"] == 3


def test_unknown_override_is_a_config_error_before_anything_is_written(data, tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'optim.lrate'"):
        train("cpu_egornn", data=data, out=tmp_path / "x", overrides=[*TINY, "optim.lrate=1"])
    assert not (tmp_path / "x").exists()


def test_stage2_init_loads_the_stage1_weights(first_run) -> None:
    out, _ = first_run
    stage2 = apply_overrides(load_recipe("cpu_ms_cls"), [*TINY, f"init.from_run={{'': {str(out)!r}}}"])
    task = ActionRecognitionTask(stage2, CLASSES)
    load_init_weights(task.model, stage2, CLASSES)
    saved = read_checkpoint(out / "checkpoints" / "best.ckpt")["state_dict"]
    own = task.model.state_dict()
    shared = [k for k in own if f"model.{k}" in saved]
    assert len(shared) > 100 and any(k.startswith("convlstm.") for k in shared)
    for k in shared:
        assert torch.equal(own[k], saved[f"model.{k}"]), k
    assert not any(f"model.{k}" in saved for k in own if k.startswith("ms_head."))  # new head: fresh weights

    wrong_model = apply_overrides(load_recipe("cpu_flow"), [f"init.from_run={{'': {str(out)!r}}}"])
    flow_task = ActionRecognitionTask(wrong_model, CLASSES)
    with pytest.raises(BadInputError, match=r"best\.ckpt: checkpoint is a 'egornn' model, this recipe builds 'flow'"):
        load_init_weights(flow_task.model, wrong_model, CLASSES)
    four = [*CLASSES, "close_jar"]
    with pytest.raises(BadInputError, match="checkpoint has 3 classes, the dataset has 4"):
        load_init_weights(ActionRecognitionTask(stage2, four).model, stage2, four)


def test_not_a_checkpoint_is_a_bad_input(tmp_path) -> None:
    bogus = tmp_path / "best.ckpt"
    bogus.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="best.ckpt: not a readable checkpoint"):
        read_checkpoint(bogus)
    torch.save({"weights": torch.zeros(2)}, bogus)
    with pytest.raises(BadInputError, match="not an egoattn training checkpoint"):
        read_checkpoint(bogus)


def test_rgb_is_normalised_for_the_backbone(data) -> None:
    recipe = apply_overrides(load_recipe("cpu_egornn"), TINY)
    task = ActionRecognitionTask(recipe, CLASSES)
    dm = make_datamodule(recipe, data, task.model)
    dm.setup("fit")
    assert dm.normalize == Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # EfficientNet-Lite0, not ImageNet
    assert not any(isinstance(t, Normalize) for t in dm.train_set.transform.transforms)  # on the device, not in workers


def test_cached_step_equals_uncached_step(data) -> None:
    recipe = apply_overrides(load_recipe("cpu_egornn"), [*TINY, "model.options.dropout=0.5"])
    torch.manual_seed(0)
    task = ActionRecognitionTask(recipe, CLASSES)
    dm = make_datamodule(recipe, data, task.model)
    cached = cache_features(task, dm, torch.device("cpu"))
    assert len(cached.train_set) == 18 and len(cached.val_set) == 6

    # same clips through the deterministic pipeline, uncached
    batch = first_val_batch(dm)
    cached_batch = first_val_batch(cached)
    assert list(cached_batch["clip_id"]) == list(batch["clip_id"])
    assert "rgb" not in cached_batch
    task.train()  # training mode: backbone in eval, dropout active (same seed -> same mask)
    torch.manual_seed(1)
    uncached_loss = task.total_loss(task.compute_losses(batch)[0])
    torch.manual_seed(1)
    cached_loss = task.total_loss(task.compute_losses(cached_batch)[0])
    assert abs(cached_loss.item() - uncached_loss.item()) < 1e-5
    task.eval()
    with torch.no_grad():
        a = task.total_loss(task.compute_losses(batch)[0])
        b = task.total_loss(task.compute_losses(cached_batch)[0])
    assert abs(float(a) - float(b)) < 1e-5

    # a recipe that trains backbone parameters cannot be cached
    stage2 = apply_overrides(recipe, ["params.groups=[{match: ['convlstm.*', 'backbone.blocks.6.*']}]"])
    with pytest.raises(ConfigError, match="backbone parameters train"):
        check_cacheable(ActionRecognitionTask(stage2, CLASSES), ["rgb"])


def test_cache_of_the_trunk_when_the_last_stage_trains(data) -> None:
    """The demo recipe (train_last_stage): the cache holds the trunk, and the last stage trains from it
    with the loss and gradient of the uncached step."""
    recipe = apply_overrides(load_recipe("cpu_egornn_cam"), TINY)
    task = ActionRecognitionTask(recipe, CLASSES)
    dm = make_datamodule(recipe, data, task.model)
    cached = cache_features(task, dm, torch.device("cpu"))
    cached_batch = first_val_batch(cached)
    assert set(cached_batch["frame_features"]) == {"trunk"}  # blocks 0-4: 112 channels at stride 16
    assert cached_batch["frame_features"]["trunk"].shape[2:] == (112, 3, 3)  # 48 px / 16
    batch = first_val_batch(dm)
    task.train()
    losses = []
    for b in (batch, cached_batch):
        task.zero_grad()
        loss = task.total_loss(task.compute_losses(b)[0])
        loss.backward()
        losses.append((loss.item(), task.model.backbone.blocks[5][0].conv_pw.weight.grad.clone()))
    assert abs(losses[0][0] - losses[1][0]) < 1e-5
    torch.testing.assert_close(losses[0][1], losses[1][1], rtol=1e-4, atol=1e-6)
    assert losses[1][1].abs().sum() > 0  # the last stage learns from the cached trunk
    # the same parameter groups without the option: the cache would freeze the last stage
    without = apply_overrides(recipe, ["model.options.train_last_stage=false"])
    with pytest.raises(ConfigError, match="train_last_stage=true caches only the frozen trunk"):
        check_cacheable(ActionRecognitionTask(without, CLASSES), ["rgb"])
    # the trunk itself must stay frozen
    early = apply_overrides(recipe, ["params.groups=[{match: ['convlstm.*', 'backbone.blocks.4.*']}]"])
    with pytest.raises(ConfigError, match="backbone.blocks.4"):
        check_cacheable(ActionRecognitionTask(early, CLASSES), ["rgb"])


def test_frozen_modules_stay_in_eval_mode_while_lightning_trains(data) -> None:
    """Lightning keeps the modes a module has when fit starts: the task applies params.eval_modules itself,
    so an uncached run's frozen backbone does not train its BatchNorm statistics."""
    import lightning as L

    recipe = apply_overrides(load_recipe("cpu_egornn"), [*TINY, "train.epochs=2"])
    task = ActionRecognitionTask(recipe, CLASSES)
    assert task.model.backbone.training  # a fresh module is in train mode
    running_mean = task.model.backbone.bn1.running_mean.clone()
    modes = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            modes.append((pl_module.model.backbone.bn1.training, pl_module.model.classifier.training))

    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[Spy()])
    trainer.fit(task, datamodule=make_datamodule(recipe, data, task.model))
    assert len(modes) == 6 and set(modes) == {(False, True)}, modes  # both epochs, after validation too
    assert torch.equal(task.model.backbone.bn1.running_mean, running_mean)


def _cached_and_uncached_losses(recipe, data) -> tuple[ActionRecognitionTask, dict, dict]:
    """Each loss term of the first val batch, uncached and from the cache (training mode, same dropout)."""
    torch.manual_seed(0)
    task = ActionRecognitionTask(recipe, CLASSES)
    dm = make_datamodule(recipe, data, task.model)
    cached = cache_features(task, dm, torch.device("cpu"))
    task.train()
    losses = []
    for batch in (first_val_batch(dm), first_val_batch(cached)):
        torch.manual_seed(1)
        losses.append({k: v.item() for k, v in task.compute_losses(batch)[0].items()})
    return task, losses[0], losses[1]


def test_cache_keeps_the_other_modalities(data) -> None:
    """A motion-segmentation head trains from cached features and the stored motion maps; a two-stream
    model caches its RGB stream and a motion-attention VideoLSTM its RGB backbone, both reading the
    stored flow: each loss term as uncached."""
    ms = apply_overrides(load_recipe("cpu_ms_cls"), [*TINY, "model.options.dropout=0.5"])
    _, uncached, cached = _cached_and_uncached_losses(ms, data)
    assert set(cached) == {"cls", "ms"} and cached["ms"] > 0
    assert all(abs(cached[k] - uncached[k]) < 1e-5 for k in uncached), (cached, uncached)

    joint = apply_overrides(load_recipe("cpu_twostream_joint"), [
        *[o.replace("model.options.", "model.options.rgb_options.") for o in TINY if "model.options" in o],
        *[o for o in TINY if "model.options" not in o], "model.options.rgb_options.weights=bundled"])
    task, uncached, cached = _cached_and_uncached_losses(joint, data)
    assert abs(cached["cls"] - uncached["cls"]) < 1e-5, (cached, uncached)
    # the RGB stream's backbone must be frozen, whatever the stream is called in the model
    trains_rgb = apply_overrides(joint, ["params.groups=[{match: ['classifier.*', 'rgb.backbone.blocks.6.*']}]"])
    with pytest.raises(ConfigError, match=r"rgb\.backbone\.blocks\.6"):
        check_cacheable(ActionRecognitionTask(trains_rgb, CLASSES), ["rgb", "warp"])
    with pytest.raises(ConfigError, match="loads \\['warp'\\]"):
        check_cacheable(task, ["warp"])

    # VideoLSTM motion attention: cached RGB features, its flow backbone on the stored flow pairs
    motion = apply_overrides(load_recipe("cpu_videolstm_motion"), [
        *[o for o in TINY if "model.options" not in o], "model.options.hidden=16", "model.options.motion_hidden=16",
        "model.options.input_proj=16", "model.options.attention_channels=16", "model.options.head_channels=16"])
    _, uncached, cached = _cached_and_uncached_losses(motion, data)
    assert abs(cached["cls"] - uncached["cls"]) < 1e-5, (cached, uncached)


def test_cached_views_are_the_training_pipelines_draws(data) -> None:
    """train.cache_views: view 0 is the test transform, view v what an uncached run loads at epoch v,
    and each epoch reads one view per clip, reproducibly."""
    recipe = apply_overrides(load_recipe("cpu_egornn"), TINY)
    task = ActionRecognitionTask(recipe, CLASSES)
    dm = make_datamodule(recipe, data, task.model)
    cached = cache_features(task, dm, torch.device("cpu"), views=3)
    views = cached.train_set.views
    assert [len(v) for v in views] == [18, 18, 18]
    assert [item["clip_id"] for item in views[2]] == [item["clip_id"] for item in views[0]]
    features = lambda item: next(iter(item["frame_features"].values()))  # noqa: E731
    differ = [not torch.allclose(features(a), features(b)) for a, b in zip(views[0], views[1])]
    assert sum(differ) >= 12, differ  # random scale, corner and flip: most clips look different
    dm.train_set.set_epoch(2)
    clip = dm.train_set[5]
    with torch.no_grad():
        expected = next(iter(task.model.encode_frames(dm.normalize({"rgb": clip["rgb"][None]})["rgb"]).values()))[0]
    torch.testing.assert_close(features(views[2][5]), expected, rtol=1e-4, atol=1e-4)  # batch of 6 vs 1

    def drawn(epoch: int) -> list[int]:
        cached.set_epoch(epoch)
        return [next(v for v in range(3) if cached.train_set[i] is views[v][i]) for i in range(18)]

    assert drawn(1) == drawn(1)
    assert drawn(1) != drawn(2)
    assert {v for epoch in range(4) for v in drawn(epoch)} == {0, 1, 2}
    assert len(cached.val_set) == 6 and len(cached.val_set.views) == 1


def test_cached_run(data, tmp_path) -> None:
    out = train("cpu_egornn", data=data, out=tmp_path / "cached", overrides=[*TINY, "train.epochs=2"],
                cache_features=True)
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == 2 and all(0.0 <= float(r["val_acc"]) <= 1.0 for r in rows)
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch) -> None:
    original = ActionRecognitionTask.total_loss

    def nan_in_second_epoch(self, losses):
        loss = original(self, losses)
        return loss * float("nan") if self.current_epoch == 1 else loss

    monkeypatch.setattr(ActionRecognitionTask, "total_loss", nan_in_second_epoch)
    with pytest.raises(EgoattnError, match="NaN/inf in epoch 2"):
        train("cpu_egornn", data=data, out=tmp_path / "nan", overrides=TINY)
    rows = read_csv(tmp_path / "nan" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1]
    last = read_checkpoint(tmp_path / "nan" / "checkpoints" / "last.ckpt")
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert "non-finite" in json.loads((tmp_path / "nan" / "metrics.json").read_text())["stopped"]


@pytest.mark.slow
def test_two_process_cpu_ddp(data, tmp_path) -> None:
    out = tmp_path / "ddp"
    sets = [a for s in [*TINY, "train.epochs=2"] for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "egoattn.cli", "train", "cpu_egornn", "--data", str(data),
                             "--out", str(out), "--devices", "2", *sets],
                            capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stdout + result.stderr and "gloo" in result.stdout + result.stderr
    rows = read_csv(out / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 2


def test_ms_and_order_losses_are_added_with_their_weights(data) -> None:
    recipe = apply_overrides(load_recipe("cpu_ms_order"), [*TINY, "loss.ms_weight=0.5", "loss.order_weight=2"])
    task = ActionRecognitionTask(recipe, CLASSES)
    dm = make_datamodule(recipe, data, task.model)
    batch = first_val_batch(dm)
    assert batch["order_rgb"].shape[1:3] == (4, 3) and batch["motion"].shape == (6, 4, 48, 48)
    task.eval()
    with torch.no_grad():
        losses, out = task.compute_losses(batch)
        total = task.total_loss(losses)
    assert set(losses) == {"cls", "ms", "order"}
    assert out["ms_logits"].shape == (6, 4, 2, 2, 2) and out["order_logits"].shape == (6, 12)
    expected = losses["cls"] + 0.5 * losses["ms"] + 2 * losses["order"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["order"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(out["order_logits"], batch["order_label"]).item(), rel=1e-6)


def test_ms_and_order_losses_reach_the_fine_tuned_last_stage(data) -> None:
    """The self-supervised losses are useful only through the features they change: in the CPU stage-2
    recipes each of them alone sends gradient into the backbone's trainable last stage (and nowhere
    into its frozen trunk), so it can change what the classifier sees."""
    recipe = apply_overrides(load_recipe("cpu_ms_order"), TINY)
    task = ActionRecognitionTask(recipe, CLASSES)
    batch = first_val_batch(make_datamodule(recipe, data, task.model))
    task.train()
    named = dict(task.model.named_parameters())
    for term in ("ms", "order"):
        task.model.zero_grad(set_to_none=True)
        losses, _ = task.compute_losses(batch)
        losses[term].backward()
        reached = {n for n, p in named.items() if p.grad is not None and p.grad.abs().sum() > 0}
        assert any(n.startswith("backbone.blocks.6.") for n in reached), (term, sorted(reached))
        assert not any(n.startswith(("backbone.blocks.0.", "backbone.conv_stem.")) for n in reached), term
        assert not any(n.startswith(("classifier.", "convlstm.")) for n in reached), term


CPU_RECIPES = ["cpu_frame_average", "cpu_convlstm", "cpu_egornn", "cpu_flow", "cpu_ms_cls", "cpu_ms_reg",
               "cpu_ms_order", "cpu_two_in_one"]


@pytest.mark.slow
@pytest.mark.parametrize("name", CPU_RECIPES)
def test_every_cpu_recipe_trains_one_epoch(name, data, tmp_path) -> None:
    overrides = [t for t in TINY if not t.startswith("model.options.")] + ["train.epochs=1"]
    if name == "cpu_flow":
        overrides += ["data.flow_stack=3", "model.options.in_channels=6"]
    elif name != "cpu_frame_average":
        overrides += ["model.options.hidden=16", "model.options.input_proj=16", "model.options.input_size=48"]
    out = train(name, data=data, out=tmp_path / name, overrides=overrides)
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["epochs"] == 1 and 0.0 <= summary["best_val_acc"] <= 1.0
    assert math.isfinite(summary["final_train_loss"])


@pytest.mark.slow
def test_joint_twostream_from_rgb_and_flow_runs(data, tmp_path) -> None:
    base = [t for t in TINY if not t.startswith("model.options.")] + ["train.epochs=1", "data.flow_stack=3"]
    rgb = train("cpu_egornn", data=data, out=tmp_path / "rgb", overrides=[*TINY, "train.epochs=1"])
    flow = train("cpu_flow", data=data, out=tmp_path / "flow", overrides=[*base, "model.options.in_channels=6"])
    out = train("cpu_twostream_joint", data=data, out=tmp_path / "joint", init={"rgb": rgb, "flow": flow},
                overrides=[*base, "model.options.rgb_options.hidden=16", "model.options.rgb_options.input_proj=16",
                           "model.options.rgb_options.input_size=48", "model.options.flow_options.in_channels=6",
                           "data.flow_size=40"])
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["init"]["from_run"] == {"rgb": str(rgb), "flow": str(flow)}
    # the joint model's frozen parts are still the stage runs' weights
    joint = read_checkpoint(out / "checkpoints" / "last.ckpt")["state_dict"]
    rgb_state = read_checkpoint(rgb / "checkpoints" / "best.ckpt")["state_dict"]
    flow_state = read_checkpoint(flow / "checkpoints" / "best.ckpt")["state_dict"]
    key = "backbone.blocks.3.0.conv_pw.weight"
    assert torch.equal(joint[f"model.rgb.{key}"], rgb_state[f"model.{key}"])
    assert torch.equal(joint[f"model.flow.{key}"], flow_state[f"model.{key}"])


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_behind(data, tmp_path) -> None:
    out = tmp_path / "bad"
    with pytest.raises(EgoattnError):  # the split names a subject that does not exist
        train("cpu_egornn", data=data, out=out, overrides=[*TINY, "data.split=loso:S9"])
    assert not out.exists()
    out.mkdir()
    with pytest.raises(EgoattnError):
        train("cpu_egornn", data=data, out=out, overrides=[*TINY, "data.split=loso:S9"])
    assert out.is_dir() and not any(out.iterdir())
