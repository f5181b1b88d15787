"""Figures of an evaluation: confusion matrix, class correlation matrix, learning curves.

Matplotlib with the Agg backend (no display needed); every figure is saved atomically as a PNG.
Sizes and fonts scale with the number of classes so that 14 to 61 class names stay legible.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from egoattn.errors import BadInputError  # noqa: E402
from egoattn.fileio import atomic_path  # noqa: E402

DPI = 110


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _matrix_figure(k: int) -> tuple[Any, Any, float]:
    """Figure, axes and tick font size for a k x k matrix with class names on both axes."""
    side = max(6.0, 3.0 + 0.22 * k)
    font = 9.0 if k <= 20 else 7.5 if k <= 70 else 6.0  # a row is ~0.17 inch (12 pt) high at any k
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    return fig, ax, font


def _draw_matrix(ax: Any, fig: Any, matrix: np.ndarray, classes: Sequence[str], font: float, cmap: str,
                 vmin: float, vmax: float, annotate: bool) -> None:
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    k = len(classes)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(classes, rotation=90, fontsize=font)
    ax.set_yticklabels(classes, fontsize=font)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if annotate:
        for i in range(k):
            for j in range(k):
                v = matrix[i, j]
                if abs(v) >= 0.005:
                    dark = (v - vmin) / (vmax - vmin) > 0.6
                    ax.text(j, i, f"{v:.2f}".lstrip("0") if 0 < v < 1 else f"{v:.2g}", ha="center", va="center",
                            fontsize=font - 1, color="white" if dark else "black")


def plot_confusion(confusion_normalized: Any, classes: Sequence[str], path: str | Path,
                   title: str = "Normalised confusion matrix") -> Path:
    """Row-normalised confusion matrix: true labels on the vertical axis, predictions horizontal (seed 000, Fig. 4)."""
    m = np.asarray(confusion_normalized, dtype=np.float64)
    if m.shape != (len(classes), len(classes)):
        raise BadInputError(path, f"confusion matrix of shape {m.shape} for {len(classes)} classes")
    fig, ax, font = _matrix_figure(len(classes))
    _draw_matrix(ax, fig, m, classes, font, "Blues", 0.0, 1.0, annotate=len(classes) <= 20)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(title)
    return _save(fig, path)


def class_correlation(probs: Any) -> np.ndarray:
    """Pearson correlation between the classes' predicted-probability vectors over the clips.

    `probs` is (N, K); entry (i, j) correlates column i with column j. A class whose probability is
    constant over the clips (range <= 1e-12) has no defined correlation: its row and column are 0
    (diagonal included).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise BadInputError(None, f"probabilities must be (N, K), got shape {p.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.atleast_2d(np.corrcoef(p, rowvar=False))
    constant = np.ptp(p, axis=0) <= 1e-12
    c[constant, :] = 0.0
    c[:, constant] = 0.0
    return np.nan_to_num(c, nan=0.0)


def plot_correlation(probs: Any, classes: Sequence[str], path: str | Path,
                     title: str = "Class correlation of predicted probabilities") -> Path:
    """Correlation matrix of the classes' predicted probabilities (seed 004, Figs. 13, 15, 17)."""
    c = class_correlation(probs)
    if c.shape != (len(classes), len(classes)):
        raise BadInputError(path, f"probabilities with {c.shape[0]} classes for {len(classes)} class names")
    fig, ax, font = _matrix_figure(len(classes))
    _draw_matrix(ax, fig, c, classes, font, "coolwarm", -1.0, 1.0, annotate=False)
    ax.set_title(title)
    return _save(fig, path)


# --- learning curves ----------------------------------------------------------------------------

def read_epoch_metrics(metrics_csv: str | Path) -> dict[str, dict[int, float]]:
    """Per-epoch values of every numeric column of a run's metrics.csv: {column: {epoch: value}}.

    Works with Lightning's CSVLogger (sparse rows, one per logging call; the last value logged in
    an epoch wins) and with one-row-per-epoch files. Without an `epoch` column the row number is
    the epoch.
    """
    path = Path(metrics_csv)
    if not path.is_file():
        raise BadInputError(path, "metrics.csv not found")
    series: dict[str, dict[int, float]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise BadInputError(path, "empty file (no header)")
        for i, row in enumerate(reader):
            try:
                epoch = int(float(row["epoch"])) if row.get("epoch") not in (None, "") else i
            except ValueError:
                raise BadInputError(f"{path}:{i + 2}", f"epoch {row['epoch']!r} is not a number") from None
            for name, value in row.items():
                if name in (None, "epoch", "step") or value in (None, ""):
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                if math.isfinite(v):
                    series.setdefault(name, {})[epoch] = v
    return series


def _curve_columns(series: dict[str, dict[int, float]], word: Sequence[str]) -> list[str]:
    """Columns whose name contains one of `word`; per-step columns are dropped when an epoch one exists."""
    names = [n for n in series if any(w in n.lower() for w in word)]
    names = [n for n in names if not (n.endswith("_step") and n[: -len("_step")] + "_epoch" in series)]
    names = [n for n in names if not (n.endswith("_step") and n[: -len("_step")] in series)]
    return sorted(names, key=lambda n: (not n.lower().startswith("train"), n))


def plot_learning_curves(metrics_csv: str | Path, path: str | Path, title: str = "Learning curves") -> Path:
    """Loss (left) and accuracy (right) per epoch, train and validation, from a run's metrics.csv."""
    series = read_epoch_metrics(metrics_csv)
    losses = _curve_columns(series, ("loss",))
    accs = _curve_columns(series, ("acc", "top1"))
    if not losses and not accs:
        raise BadInputError(metrics_csv, f"no loss or accuracy columns (found {sorted(series)})")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, names, ylabel in ((axes[0], losses, "loss"), (axes[1], accs, "accuracy")):
        for name in names:
            epochs = sorted(series[name])
            ax.plot(epochs, [series[name][e] for e in epochs], marker="o" if len(epochs) < 30 else None,
                    markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if names:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {ylabel} logged", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title)
    return _save(fig, path)
