"""`egoattn evaluate`: run a trained model over a split and record every metric and figure.

Output folder (default RUN/eval-<split>): metrics.json, per_class.csv, confusion.csv,
confusion_normalized.csv, predictions.csv, summary.md, confusion.png, correlation.png and, when the
run has a metrics.csv, learning_curves.png.

Test-time augmentation:
- `flow_stacks=S` asks the loader for S evenly spaced flow stacks per clip ((B, S, 2L, H, W)); the
  flow model averages its logits over them.
- `crops=5` asks the loader for frames resized but not cropped, takes the four corner crops and
  the centre crop of the recipe's size here (torchvision `five_crop`, the same window on every
  frame and modality) and averages the five logits.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from egoattn.data.manifest import read_classes
from egoattn.data.transforms import Normalize
from egoattn.errors import BadInputError, ConfigError
from egoattn.evaluation.metrics import compute_metrics, headline, write_metrics
from egoattn.evaluation.plots import plot_confusion, plot_correlation, plot_learning_curves
from egoattn.models.precision import autocast_at
from egoattn.models.registry import model_inputs
from egoattn.training.config import Precision

#: Inputs that are images (last two dims H, W) and can be cropped.
SPATIAL_KEYS = ("rgb", "flow", "flow_pair")


def five_crops(inputs: Mapping[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """The four corner crops and the centre crop (torchvision order: tl, tr, bl, br, centre) of every input."""
    if "frame_features" in inputs:
        raise ConfigError("crops=5 needs images, but the batch holds cached frame_features")
    views: list[dict[str, torch.Tensor]] = [{} for _ in range(5)]
    for key, x in inputs.items():
        h, w = x.shape[-2:]
        if h < size or w < size:
            raise BadInputError(None, f"{key} frames are {h}x{w}, smaller than the crop size {size}")
        for view, crop in zip(views, TF.five_crop(x, [size, size])):
            view[key] = crop
    return views


@dataclass
class Predictions:
    logits: np.ndarray  # (N, K) float32, averaged over crops
    labels: np.ndarray  # (N,) int64
    clip_ids: list[str]


def _logits(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    out = model(**inputs)
    return out["logits"] if isinstance(out, Mapping) else out


def default_device() -> torch.device:
    """The machine's accelerator (CUDA, MPS, ...) when there is one, else the CPU."""
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


def predict_logits(model: torch.nn.Module, loader: Iterable[Mapping[str, Any]], device: torch.device | str | None = None,
                   crops: int = 1, crop_size: int | None = None, normalize: Normalize | None = None,
                   precision: Precision = "32") -> Predictions:
    """Run `model` over every batch of `loader` in eval mode without autograd, under autocast at
    `precision` (egoattn.models.precision.autocast_at; float32 logits either way).

    `device` defaults to where the model's parameters are. `normalize` turns each batch's uint8 inputs
    into the model's, on the device (egoattn's loaders ship uint8: pass `Normalize.for_model(model)`);
    None takes the batches as model inputs already. With `crops=5` each batch's frames must be larger
    than `crop_size`; the logits of the five crops are averaged.
    """
    if crops not in (1, 5):
        raise ConfigError(f"crops must be 1 or 5, got {crops}")
    if crops == 5 and crop_size is None:
        raise ConfigError("crops=5 needs a crop_size")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    model.eval()
    logits, labels, clip_ids = [], [], []
    with torch.inference_mode(), autocast_at(device, precision):
        for batch in loader:
            inputs = {k: v.to(device, non_blocking=True) for k, v in model_inputs(model, batch).items()}
            if normalize is not None:
                inputs = normalize(inputs)
            if crops == 5:
                z = torch.stack([_logits(model, view) for view in five_crops(inputs, crop_size)]).mean(0)
            else:
                z = _logits(model, inputs)
            logits.append(z.float().cpu())
            labels.append(torch.as_tensor(batch["label"]).reshape(-1).cpu())
            ids = batch["clip_id"]
            clip_ids.extend([ids] if isinstance(ids, str) else [str(i) for i in ids])
    if not logits:
        raise BadInputError(None, "the loader yielded no batches")
    result = Predictions(torch.cat(logits).numpy(), torch.cat(labels).numpy().astype(np.int64), clip_ids)
    if not (len(result.clip_ids) == len(result.labels) == len(result.logits)):
        raise BadInputError(None, f"{len(result.logits)} logits, {len(result.labels)} labels and "
                                  f"{len(result.clip_ids)} clip ids")
    return result


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _check_classes(data: Path, classes: list[str]) -> None:
    path = data / "classes.txt"
    have = read_classes(path)
    if have == list(classes):
        return
    missing = [c for c in classes if c not in have]
    extra = [c for c in have if c not in classes]
    detail = f"run has {len(classes)} classes, dataset {len(have)}"
    if missing or extra:
        detail += f"; missing from the dataset: {missing[:10]}; not in the run: {extra[:10]}"
    else:
        detail += "; same names in a different order (class ids would not match)"
    raise BadInputError(path, f"classes differ from the run's classes.txt ({detail})")


def _eval_loader(run_module: Any, loaded: Any, data: Path, split: str, flow_stacks: int, crops: int) -> Any:
    """The run's eval loader, asking for the test-time options only when they are used."""
    make = run_module.make_eval_loader
    params = inspect.signature(make).parameters
    kwargs: dict[str, Any] = {}
    if flow_stacks != 1:
        if "flow_stacks" not in params:
            raise ConfigError("flow_stacks > 1 needs make_eval_loader(..., flow_stacks=S) in egoattn.training.run")
        kwargs["flow_stacks"] = flow_stacks
    if crops != 1:
        if "center_crop" not in params:
            raise ConfigError("crops=5 needs make_eval_loader(..., center_crop=False) in egoattn.training.run")
        kwargs["center_crop"] = False
    return make(loaded, data, split, **kwargs)


def print_headline(metrics: Mapping[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in headline(dict(metrics)):
        table.add_row(name, f"{100 * value:.1f}%")
    table.add_row("clips", str(metrics["num_samples"]))
    Console().print(table)


def _run_predictions(run: Path, data: Path, split: str | None, flow_stacks: int, crops: int,
                     precision: Precision) -> tuple[Any, str, Predictions]:
    """(the loaded best checkpoint, the split, its logits on that split)."""
    if flow_stacks < 1:
        raise ConfigError(f"flow_stacks must be >= 1, got {flow_stacks}")
    if crops not in (1, 5):
        raise ConfigError(f"crops must be 1 (centre) or 5 (corners and centre), got {crops}")
    # import_module (not `from ... import`) so that a stand-in module in sys.modules is honoured.
    run_module = importlib.import_module("egoattn.training.run")
    loaded = run_module.load_run(run, which="best")
    _check_classes(data, list(loaded.classes))
    split = split or loaded.recipe.data.split
    loader = _eval_loader(run_module, loaded, data, split, flow_stacks, crops)
    model = loaded.model.to(default_device())
    return loaded, split, predict_logits(model, loader, crops=crops, crop_size=loaded.recipe.data.size,
                                         normalize=Normalize.for_model(model), precision=precision)


def _write_evaluation(out: Path, metrics: dict[str, Any], classes: list[str], preds: Predictions, title: str,
                      curves: Path | None) -> None:
    probs = _softmax(preds.logits.astype(np.float64))
    rows = zip(preds.clip_ids, preds.labels.tolist(), preds.logits.argmax(1).tolist(), probs)
    write_metrics(out, metrics, classes, rows, title=title)
    plot_confusion(metrics["confusion_normalized"], classes, out / "confusion.png", title=f"{title}: confusion")
    plot_correlation(probs, classes, out / "correlation.png", title=f"{title}: class correlation")
    if curves is not None and curves.is_file():
        try:
            plot_learning_curves(curves, out / "learning_curves.png", title=f"{metrics['name']}: learning curves")
        except BadInputError as e:  # a run without loss/accuracy columns still gets its evaluation
            print(f"note: no learning curves ({e})")
    print_headline(metrics, f"{title} ({metrics['num_samples']} clips) -> {out}")


def evaluate_run(run: str | Path, data: str | Path, split: str | None = None, out: str | Path | None = None,
                 flow_stacks: int = 1, crops: int = 1, precision: Precision = "32") -> dict[str, Any]:
    """Evaluate the best checkpoint of `run` on `split` of the prepared dataset `data`; returns the metrics."""
    run, data = Path(run), Path(data)
    loaded, split, preds = _run_predictions(run, data, split, flow_stacks, crops, precision)
    out = Path(out) if out is not None else run / f"eval-{split.replace(':', '-')}"
    return _evaluate_predictions(run, loaded, data, split, preds, out, flow_stacks, crops, precision)


def _evaluate_predictions(run: Path, loaded: Any, data: Path, split: str, preds: Predictions, out: Path,
                          flow_stacks: int, crops: int, precision: Precision) -> dict[str, Any]:
    recipe, classes = loaded.recipe, list(loaded.classes)
    metrics = compute_metrics(preds.labels, preds.logits, classes)
    metrics = {"name": recipe.name, "seed": recipe.seed, "run": str(run), "checkpoint": "best", "data": str(data),
               "split": split, "flow_stacks": flow_stacks, "crops": crops, "precision": precision, **metrics}
    _write_evaluation(out, metrics, classes, preds, f"{recipe.name} on {split}", run / "metrics.csv")
    return metrics


def evaluate_late_fusion(runs: Sequence[str | Path], data: str | Path, split: str | None = None,
                         out: str | Path | None = None, flow_stacks: int = 1, crops: int = 1,
                         stream_outs: Sequence[str | Path] | None = None, precision: Precision = "32") -> dict[str, Any]:
    """Late fusion of separately trained streams (e.g. the RGB and the flow run of a two-stream model): each
    run predicts the split through its own input pipeline (frames, size, modality) and the fused logits
    are their mean, the 0.5 / 0.5 late fusion of ``twostream``. Writes the evaluation of the fused scores
    and, with ``stream_outs`` (one folder per run), each run's own evaluation from the same predictions;
    the returned metrics then hold the runs' metrics under ``"streams"``."""
    runs, data = [Path(r) for r in runs], Path(data)
    if len(runs) < 2:
        raise ConfigError(f"late fusion needs at least two runs, got {len(runs)}")
    if out is None:
        raise ConfigError("late fusion of several runs needs an output folder (out=)")
    predicted = [_run_predictions(run, data, split, flow_stacks, crops, precision) for run in runs]
    (first, split, base), rest = predicted[0], predicted[1:]
    classes = list(first.classes)
    index = {clip: i for i, clip in enumerate(base.clip_ids)}
    logits = [base.logits.astype(np.float64)]
    for run, (loaded, run_split, preds) in zip(runs[1:], rest):
        if list(loaded.classes) != classes:
            raise BadInputError(run / "classes.txt", f"classes differ from those of {runs[0]}")
        if run_split != split:
            raise ConfigError(f"{run} evaluates split {run_split!r}, {runs[0]} split {split!r}: pass split=")
        if sorted(preds.clip_ids) != sorted(base.clip_ids):
            raise BadInputError(data, f"{run} and {runs[0]} predicted different clips of split {split!r}")
        order = np.argsort([index[c] for c in preds.clip_ids])
        logits.append(preds.logits[order].astype(np.float64))
    fused = Predictions(np.mean(logits, axis=0), base.labels, base.clip_ids)
    if stream_outs is not None and len(stream_outs) != len(runs):
        raise ConfigError(f"stream_outs needs one folder per run ({len(runs)}), got {len(stream_outs)}")
    streams = [_evaluate_predictions(run, loaded, data, split, preds, Path(o), flow_stacks, crops, precision)
               for run, (loaded, _, preds), o in zip(runs, predicted, stream_outs or [])]
    names = [loaded.recipe.name for loaded, _, _ in predicted]
    metrics = compute_metrics(fused.labels, fused.logits, classes)
    metrics = {"name": "late fusion: " + " + ".join(names), "seed": first.recipe.seed,
               "runs": [str(r) for r in runs], "fusion": "mean of logits", "checkpoint": "best", "data": str(data),
               "split": split, "flow_stacks": flow_stacks, "crops": crops, "precision": precision, **metrics}
    _write_evaluation(Path(out), metrics, classes, fused, f"{metrics['name']} on {split}", None)
    return {**metrics, "streams": streams} if streams else metrics
