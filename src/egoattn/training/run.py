"""`egoattn train`: a recipe + a prepared dataset -> a run directory.

    OUT/config.yaml             the resolved recipe (after --set overrides and --init)
    OUT/classes.txt             the class list the model was trained on (ids = line numbers)
    OUT/checkpoints/best.ckpt   best validation accuracy (the reference keeps this one)
    OUT/checkpoints/last.ckpt   the latest epoch (what --resume continues from)
    OUT/metrics.csv             per epoch: epoch, train_loss, train_acc, val_loss, val_acc, lr, seconds
    OUT/tb/                     TensorBoard scalars
    OUT/metrics.json            best_val_acc, best_epoch, final numbers (evaluate may add test numbers)

Epochs are counted from 1 in metrics.csv / metrics.json (the number of completed epochs).

Interruptions: checkpoints are written beside and renamed, so a kill never leaves a half-written one,
and are read with weights_only=True (a checkpoint cannot run code). `--resume` restores weights,
optimiser, scheduler, loop counters and the random generators (RandomState): a run killed at any
moment and resumed ends with the same metrics and checkpoints as an uninterrupted one (bit for bit on
the CPU). A run killed before its first checkpoint starts again from the beginning on `--resume`.
"""

from __future__ import annotations

import csv
import io
import math
import os
import pickle
import random
import shutil
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader

from egoattn.data.dataset import EgoDataModule
from egoattn.data.manifest import read_classes, write_classes
from egoattn.data.transforms import Normalize
from egoattn.errors import BadInputError, ConfigError, EgoattnError
from egoattn.models.registry import create_model
from egoattn.models.precision import warn_if_emulated
from egoattn.fileio import atomic_path, read_yaml, write_json, write_text_atomic
from egoattn.training.config import Recipe, apply_overrides, dump_recipe, load_recipe, validate_recipe
from egoattn.training.task import ActionRecognitionTask

#: (checkpoint model, recipe model) pairs whose weights fit although the names differ: the two-in-one
#: stream is an Ego-RNN plus motion layers, so it starts from an Ego-RNN stage-1 run.
INIT_COMPATIBLE = {("egornn", "two_in_one")}
CSV_FIELDS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
#: How long a DDP process waits in a collective for the others: a killed rank makes the survivors
#: fail after this long at most instead of hanging (torch's default is 30 minutes).
DDP_TIMEOUT = timedelta(minutes=5)
console = Console(stderr=True)


# --- checkpoints ----------------------------------------------------------------------------------

def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, loaded without executing code (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's text suggests weights_only=False, the one thing never to do with an untrusted file
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        code = next((line.split("WeightsUnpickler error: ")[-1].split(" Please use")[0] for line in lines
                     if "Unsupported global" in line), None)
        if code is not None:
            raise BadInputError(path, f"refused: the checkpoint holds objects other than tensors and plain data, "
                                      f"and loading them could run code ({code})") from None
        detail = next((line for line in lines if line.startswith("Unsupported")), lines[0] if lines else "")
        raise BadInputError(path, f"not a readable checkpoint (damaged, or not a torch checkpoint: {detail})") from None
    except Exception as e:  # truncated files, foreign formats
        raise BadInputError(path, f"not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "recipe" not in ckpt.get("hyper_parameters", {}):
        raise BadInputError(path, "not an egoattn training checkpoint (no state_dict / recipe)")
    return ckpt


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, but safe against interruption and against hostile files.

    Saving: written beside the target and renamed (Lightning's own save goes through a temporary
    file in the system temp folder, which becomes a copy - not a rename - when that folder is on
    another file system, and leaves the temporary behind when killed). Loading: always
    weights_only=True, whatever TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD says, so a checkpoint cannot run code.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location or (lambda storage, loc: storage),
                                       weights_only=True)


def model_state(ckpt: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The model's own state dict (the task stores it under `model.`)."""
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def _checkpoint_of(run: str | Path) -> Path:
    run = Path(run)
    return run if run.suffix == ".ckpt" else run / "checkpoints" / "best.ckpt"


def load_init_weights(model: nn.Module, recipe: Recipe, classes: list[str]) -> None:
    """Load recipe.init.from_run: {"": run} into the model, {"rgb": run1, "flow": run2} into submodules.

    Keys the checkpoint lacks keep their fresh initialisation (e.g. a new MS head in stage 2); a wrong
    model, class count or tensor shape is a BadInputError naming the checkpoint.
    """
    for prefix, run in recipe.init.from_run.items():
        path = _checkpoint_of(run)
        ckpt = read_checkpoint(path)
        theirs = ckpt["hyper_parameters"]
        their_model, their_classes = theirs["recipe"]["model"]["name"], list(theirs["classes"])
        if prefix == "" and their_model != recipe.model.name and (their_model, recipe.model.name) not in INIT_COMPATIBLE:
            raise BadInputError(path, f"checkpoint is a {their_model!r} model, this recipe builds {recipe.model.name!r}")
        if len(their_classes) != len(classes):
            raise BadInputError(path, f"checkpoint has {len(their_classes)} classes, the dataset has {len(classes)}")
        if their_classes != classes:
            console.print(f"[yellow]warning: {path}: class names differ from the dataset's classes.txt")
        try:
            target = model.get_submodule(prefix) if prefix else model
        except AttributeError:
            raise ConfigError(f"init.from_run: model {recipe.model.name!r} has no submodule {prefix!r}") from None
        state, own = model_state(ckpt), target.state_dict()
        shapes = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                  if k in own and v.shape != own[k].shape]
        if shapes:
            raise BadInputError(path, f"tensor shapes do not match the model{' .' + prefix if prefix else ''}: "
                                      f"{'; '.join(shapes[:3])}")
        common = [k for k in state if k in own]
        if len(common) < len(state) / 2:
            raise BadInputError(path, f"checkpoint ({their_model!r}) does not fit "
                                      f"{'model.' + prefix if prefix else 'the model'}: only {len(common)} of its "
                                      f"{len(state)} tensors have a place")
        target.load_state_dict({k: state[k] for k in common}, strict=False)
        fresh = sorted({k.rsplit(".", 2)[0] for k in own if k not in state})
        where = f"model.{prefix}" if prefix else "model"
        console.print(f"init: {where} <- {path} ({len(common)} tensors)"
                      + (f"; fresh: {', '.join(fresh[:6])}" if fresh else ""))
    if recipe.init.joint_classifier == "late_fusion":
        if not hasattr(model, "classifier_from_streams") or set(recipe.init.from_run) != {"rgb", "flow"}:
            raise ConfigError("init.joint_classifier=late_fusion needs a two-stream model and "
                              "init.from_run.rgb / init.from_run.flow")
        model.classifier_from_streams()
        console.print("init: model.classifier <- the late fusion of model.rgb's and model.flow's classifiers")


# --- data -----------------------------------------------------------------------------------------

def make_datamodule(recipe: Recipe, data: str | Path, model: nn.Module, split: str | None = None,
                    batch_size: int | None = None, val: str | None = None, flow_test_stacks: int = 1) -> EgoDataModule:
    """The recipe's EgoDataModule, normalising rgb as the model's backbone expects."""
    d = recipe.data
    options: dict[str, Any] = dict(
        root=data, split=split or d.split, modalities=d.modalities, num_frames=d.num_frames, sampler=d.sampler,
        size=d.size, resize=d.resize, flow_stack=d.flow_stack, batch_size=batch_size or d.batch_size,
        num_workers=d.num_workers, seed=recipe.seed, val=val or d.val, val_fraction=d.val_fraction,
        flow_test_stacks=flow_test_stacks, flow_train_start=d.flow_train_start,
        flow_train_jitter=d.flow_train_jitter, flow_size=d.flow_size,
    )
    norm = Normalize.for_model(model)
    return EgoDataModule(**options, mean=norm.mean, std=norm.std)


# --- callbacks ------------------------------------------------------------------------------------

class EpochMetrics(L.Callback):
    """metrics.csv: one row per epoch (rank 0 writes; rows of a resumed run are kept)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.started = 0.0
        self.lr = math.nan

    def read_rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()
        self.lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else math.nan

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or getattr(pl_module, "nonfinite_at", None) is not None:
            return
        m = trainer.callback_metrics
        value = lambda key: float(m[key]) if key in m else math.nan  # noqa: E731
        epoch = trainer.current_epoch + 1
        rows = [r for r in self.read_rows() if int(r["epoch"]) < epoch]
        rows.append({"epoch": epoch, "train_loss": value("train_loss"), "train_acc": value("train_acc"),
                     "val_loss": value("val_loss"), "val_acc": value("val_acc"), "lr": self.lr,
                     "seconds": round(time.perf_counter() - self.started, 3)})
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(self.path, buf.getvalue())


class DatasetEpoch(L.Callback):
    """Tell the datamodule the epoch (new random crops per epoch even when DDP wraps the sampler)."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        set_epoch = getattr(trainer.datamodule, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(trainer.current_epoch)


class RandomState(L.Callback):
    """The torch / numpy / python random states, saved in every checkpoint and restored on --resume.

    Lightning restores weights, optimiser, scheduler and loop counters but not the random generators,
    and `train` seeds them afresh; without this a resumed run draws other dropout masks (and other
    DataLoader worker seeds) than an uninterrupted one. The loader's crops and frame draws need no
    state: they are seeded by (seed, epoch, index). Under DDP rank 0's states are saved and restored
    on every rank (all ranks start from the same seed).
    """

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                                 "numpy": [name, keys.tolist(), pos, has_gauss, gauss]}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        random.setstate(state_dict["python"])
        name, keys, pos, has_gauss, gauss = state_dict["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class GoodCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that saves nothing once the loss went NaN/inf, so the last good one stays."""

    def _diverged(self, pl_module: L.LightningModule) -> bool:
        return getattr(pl_module, "nonfinite_at", None) is not None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._diverged(pl_module):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._diverged(pl_module):
            super().on_validation_end(trainer, pl_module)


# --- the run --------------------------------------------------------------------------------------

def _is_main_process() -> bool:
    """False in the processes a DDP launcher starts (they must not create or check the run dir)."""
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _trainer_options(recipe: Recipe, devices: int | None, num_nodes: int) -> dict[str, Any]:
    t = recipe.train
    accelerator = t.accelerator
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()
                                      and not torch.backends.mps.is_available())
    if on_cpu:
        accelerator = "cpu"
    devices = devices or t.devices or 1
    precision = "bf16-mixed" if on_cpu and t.precision == "16-mixed" else t.precision
    if on_cpu:
        warn_if_emulated("cpu", precision)
    if devices * num_nodes > 1:
        strategy: Any = DDPStrategy(process_group_backend="gloo" if on_cpu else None, timeout=DDP_TIMEOUT)
    else:
        strategy = "auto"
    return dict(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                precision=precision, gradient_clip_val=t.gradient_clip, max_epochs=t.epochs,
                deterministic=True if on_cpu else "warn")


def _resolve(recipe: str | Path | Recipe, init: str | Path | Mapping[str, str | Path] | None,
             overrides: list[str] | tuple[str, ...]) -> Recipe:
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    recipe = apply_overrides(recipe, list(overrides))
    if init is not None:
        mapping = {"": init} if isinstance(init, (str, Path)) else dict(init)
        recipe = recipe.model_copy(update={"init": recipe.init.model_copy(
            update={"from_run": {k: str(v) for k, v in mapping.items()}})})
    return recipe


def _prepare_run_dir(out: Path, resume: bool, recipe: Recipe, classes: list[str]) -> Path | None:
    """Create OUT (or check it for --resume); return the checkpoint to resume from."""
    last = out / "checkpoints" / "last.ckpt"
    if resume:
        if not last.is_file():
            if not (out / "config.yaml").is_file():
                raise BadInputError(last, "nothing to resume: the run has no last checkpoint")
            # killed in its first epoch (a kill skips the clean-up below): nothing to lose, start again
            console.print(f"[yellow]warning: {out} has no checkpoint yet; starting the run from the beginning")
            return None
        theirs = read_checkpoint(last)["hyper_parameters"]  # a clear error for a damaged or foreign file
        if theirs["recipe"]["model"]["name"] != recipe.model.name or list(theirs["classes"]) != classes:
            raise BadInputError(last, f"checkpoint of a {theirs['recipe']['model']['name']!r} model with "
                                      f"{len(theirs['classes'])} classes; the recipe builds {recipe.model.name!r} "
                                      f"with {len(classes)}")
        for tmp in (out / "checkpoints").glob(".*.tmp.ckpt"):  # left by a kill during a save
            tmp.unlink(missing_ok=True)
        saved = validate_recipe(read_yaml_dict(out / "config.yaml"), out / "config.yaml")
        if saved.model_dump() != recipe.model_dump():
            console.print(f"[yellow]warning: {out}/config.yaml differs from the given recipe; resuming with the given one")
        if read_classes(out / "classes.txt") != classes:
            raise BadInputError(out / "classes.txt", "the run was trained on other classes than the dataset's")
        return last
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(out, "run directory exists and is not empty; choose another --out, or pass --resume "
                                 "to continue an interrupted run")
    out.mkdir(parents=True, exist_ok=True)
    return None


def _peer_failed(e: BaseException) -> bool:
    """A collective that failed because another process of a DDP run died (socket closed) or hung (timeout)."""
    text = str(e).lower()
    return isinstance(e, torch.distributed.DistError) or (isinstance(e, RuntimeError) and any(
        marker in text for marker in ("closed by peer", "reset by peer", "timed out", "broken pipe")))


def read_yaml_dict(path: Path) -> dict[str, Any]:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise BadInputError(path, "expected a mapping")
    return data


def train(recipe: str | Path | Recipe, data: str | Path, out: str | Path,
          init: str | Path | Mapping[str, str | Path] | None = None, overrides: list[str] | tuple[str, ...] = (),
          devices: int | None = None, num_nodes: int = 1, resume: bool = False,
          cache_features: bool = False) -> Path:
    """Train a recipe on a prepared dataset; returns the run directory (see the module docstring).

    If the run fails before its first checkpoint (bad data, bad option), the files it wrote are
    removed again, so the same command can simply be re-run.
    """
    recipe = _resolve(recipe, init, overrides)
    data, out = Path(data), Path(out)
    classes = read_classes(data / "classes.txt")
    main = _is_main_process()
    created = not out.exists()
    resume_from = _prepare_run_dir(out, resume, recipe, classes) if main else (
        out / "checkpoints" / "last.ckpt" if resume else None)
    try:
        if main:
            write_text_atomic(out / "config.yaml", dump_recipe(recipe))
            write_classes(out / "classes.txt", classes)
        task, trainer = _fit(recipe, data, out, classes, resume_from, devices, num_nodes, cache_features)
    except BaseException as e:
        if main and not resume and not (out / "checkpoints").exists():
            for child in out.iterdir():  # the directory was empty when this run started
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            if created:
                out.rmdir()
        if _peer_failed(e):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EgoattnError(f"training stopped: another DDP process died or stopped answering ({first}); the "
                               f"checkpoints so far are kept in {out / 'checkpoints'}; continue with --resume") from e
        raise

    if trainer.is_global_zero:
        write_json(out / "metrics.json", summarise(out, recipe, task))
    if task.nonfinite_at is not None:
        epoch, batch = task.nonfinite_at
        raise EgoattnError(f"training stopped: the loss became NaN/inf in epoch {epoch + 1}, batch {batch}; "
                           f"the last good checkpoints are kept in {out / 'checkpoints'}. Lower optim.lr or set "
                           f"train.gradient_clip.")
    return out


def _fit(recipe: Recipe, data: Path, out: Path, classes: list[str], resume_from: Path | None, devices: int | None,
         num_nodes: int, cache_features: bool) -> tuple[ActionRecognitionTask, L.Trainer]:
    L.seed_everything(recipe.seed, workers=True, verbose=False)
    task = ActionRecognitionTask(recipe, classes)
    if recipe.init.from_run and resume_from is None:
        load_init_weights(task.model, recipe, classes)
    dm: L.LightningDataModule = make_datamodule(recipe, data, task.model)

    # Two checkpointers: Lightning's save_last only writes when the best one did. Both save at the
    # end of the training epoch, after EpochMetrics wrote the epoch's row, so a kill between the two
    # writes can only lose a row that the resumed run writes again.
    best = GoodCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_acc", mode="max", save_top_k=1,
                          auto_insert_metric_name=False, enable_version_counter=False, save_on_train_epoch_end=True)
    last = GoodCheckpoint(dirpath=out / "checkpoints", filename="last", monitor=None, save_top_k=1,
                          auto_insert_metric_name=False, enable_version_counter=False, save_on_train_epoch_end=True)
    trainer = L.Trainer(
        **_trainer_options(recipe, devices, num_nodes),
        callbacks=[best, last, EpochMetrics(out / "metrics.csv"), DatasetEpoch(), RandomState(), RichProgressBar()],
        logger=TensorBoardLogger(save_dir=out, name="tb", version="", default_hp_metric=False),
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0, log_every_n_steps=1, enable_model_summary=False,
    )
    if cache_features:
        from egoattn.training.features import cache_features as build_cache

        dm = build_cache(task, dm, trainer.strategy.root_device, recipe.train.cache_views)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        # eval_modules (a frozen backbone) are in eval mode on purpose
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        trainer.fit(task, datamodule=dm, ckpt_path=resume_from, weights_only=True)
    return task, trainer


def summarise(out: Path, recipe: Recipe, task: ActionRecognitionTask) -> dict[str, Any]:
    """metrics.json: the best epoch by validation accuracy (first of ties, as ModelCheckpoint keeps it)."""
    rows = EpochMetrics(out / "metrics.csv").read_rows()
    summary: dict[str, Any] = {"name": recipe.name, "model": recipe.model.name, "seed": recipe.seed,
                               "epochs": len(rows), "best_val_acc": None, "best_epoch": None}
    if rows:
        best = max(rows, key=lambda r: (float(r["val_acc"]), -int(r["epoch"])))
        last = rows[-1]
        summary.update(best_val_acc=float(best["val_acc"]), best_epoch=int(best["epoch"]),
                       best_val_loss=float(best["val_loss"]), final_train_loss=float(last["train_loss"]),
                       final_train_acc=float(last["train_acc"]), final_val_acc=float(last["val_acc"]))
    if task.nonfinite_at is not None:
        summary["stopped"] = f"non-finite loss in epoch {task.nonfinite_at[0] + 1}, batch {task.nonfinite_at[1]}"
    return summary


# --- loading a finished run -----------------------------------------------------------------------

@dataclass
class LoadedRun:
    model: nn.Module  # in eval mode
    recipe: Recipe
    classes: list[str]
    run_dir: Path


def _random_weights(options: Mapping[str, Any]) -> dict[str, Any]:
    """Model options with every `weights` (also in rgb_options / flow_options) set to "none"."""
    return {k: "none" if k == "weights" else _random_weights(v) if isinstance(v, Mapping) else v
            for k, v in options.items()}


def load_run(run_dir: str | Path, which: str = "best") -> LoadedRun:
    """The trained model of a run directory (checkpoints/<which>.ckpt), in eval mode and in the memory
    format it trained in (`train.channels_last`: evaluate and predict then run the faster channels-last
    kernels too; on the 2-core CPU the demo model's backbone ran 1.3-1.5x faster than contiguous)."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{which}.ckpt"
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    recipe = validate_recipe(hp["recipe"], path)
    classes = list(hp["classes"])
    # Build with random weights (the checkpoint holds them all; no ImageNet download).
    model = create_model(recipe.model.name, len(classes), **_random_weights(recipe.model.options))
    try:
        model.load_state_dict(model_state(ckpt))
    except RuntimeError as e:
        raise BadInputError(path, f"checkpoint does not fit the model of its recipe ({e})") from None
    if recipe.train.channels_last:
        model.to(memory_format=torch.channels_last)
    model.eval()
    return LoadedRun(model=model, recipe=recipe, classes=classes, run_dir=run_dir)


def make_eval_loader(loaded: LoadedRun, data_root: str | Path, split: str | None = None,
                     batch_size: int | None = None, flow_test_stacks: int = 1) -> DataLoader:
    """The test side of `split` (default: the run's split) with the deterministic test transform.

    `flow_test_stacks` > 1 gives that many evenly spaced flow stacks per clip (S, 2L, H, W); the
    flow models average their logits over the stacks.
    """
    classes = read_classes(Path(data_root) / "classes.txt")
    if classes != loaded.classes:
        raise BadInputError(Path(data_root) / "classes.txt",
                            f"classes differ from the run's ({len(classes)} vs {len(loaded.classes)} classes)")
    dm = make_datamodule(loaded.recipe, data_root, loaded.model, split=split, batch_size=batch_size, val="test",
                         flow_test_stacks=flow_test_stacks)
    dm.setup("test")
    return dm.test_dataloader()
