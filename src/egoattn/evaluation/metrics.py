"""Classification metrics of one evaluation, and the files that record them.

Conventions (the same in every number written here):

- Per-class precision, recall and F1 come from scikit-learn with `labels=range(K)` and
  `zero_division=0`, so the table always lists all K classes. A class absent from `y_true` has
  support 0 and recall 0; its precision is 0 whether or not it was predicted.
- Macro averages (precision, recall, F1) are taken over the classes PRESENT in `y_true` only: a
  class that cannot be recalled on this split says nothing about the model (GTEA61's S2 lacks some
  classes). So `macro_recall == mean_class_accuracy` (scikit-learn's balanced accuracy).
  Predictions of an absent class still count as errors of the true class. `absent_classes` lists
  the classes left out.
- `weighted_f1` weights by support, so absent classes carry no weight either way.
- Scores may be logits or probabilities: every metric depends only on their ranking per row.
- Rates are fractions in [0, 1]; only the Markdown summary shows percentages.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from egoattn.data.manifest import split_label
from egoattn.errors import BadInputError
from egoattn.fileio import write_json, write_text_atomic

TOPK = 5


def _check_inputs(y_true: np.ndarray, scores: np.ndarray, classes: Sequence[str]) -> None:
    if scores.ndim != 2:
        raise BadInputError(None, f"scores must be (N, K), got shape {scores.shape}")
    if y_true.ndim != 1 or y_true.shape[0] != scores.shape[0]:
        raise BadInputError(None, f"y_true must be (N,) with N = {scores.shape[0]}, got shape {y_true.shape}")
    if scores.shape[1] != len(classes):
        raise BadInputError(None, f"scores have {scores.shape[1]} columns but there are {len(classes)} classes")
    if y_true.size == 0:
        raise BadInputError(None, "no samples to evaluate")
    if y_true.min() < 0 or y_true.max() >= len(classes):
        raise BadInputError(None, f"labels must lie in 0..{len(classes) - 1}, got {y_true.min()}..{y_true.max()}")


def topk_accuracy(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of samples whose true class is among the k highest scores (ties: lower class id first)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == y_true[:, None]).any(axis=1).mean())


def is_verb_noun(classes: Sequence[str]) -> bool:
    """Labels are verb_noun(s) when every class name has an underscore (split at the first one)."""
    return all("_" in c for c in classes)


def compute_metrics(y_true: Any, logits_or_probs: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Every number of an evaluation as a JSON-ready dict (see the module docstring for conventions)."""
    y_true = np.asarray(y_true).astype(np.int64)
    scores = np.asarray(logits_or_probs, dtype=np.float64)
    classes = list(classes)
    _check_inputs(y_true, scores, classes)
    n, k_classes = scores.shape
    labels = list(range(k_classes))
    y_pred = scores.argmax(axis=1)

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = sorted(set(y_true.tolist()))
    mp, mr, mf, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average="macro", zero_division=0)
    _, _, wf, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="weighted", zero_division=0)
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    row = cm.sum(axis=1, keepdims=True)
    cm_norm = np.divide(cm, row, out=np.zeros(cm.shape, dtype=np.float64), where=row > 0)

    k = min(TOPK, k_classes)
    metrics: dict[str, Any] = {
        "num_samples": int(n),
        "num_classes": int(k_classes),
        "top1": float((y_pred == y_true).mean()),
        "top5": topk_accuracy(y_true, scores, k),
        "top5_k": int(k),
        "mean_class_accuracy": float(mr),  # = sklearn balanced_accuracy_score
        "macro_precision": float(mp),
        "macro_recall": float(mr),
        "macro_f1": float(mf),
        "weighted_f1": float(wf),
    }
    if is_verb_noun(classes):
        verbs = np.array([split_label(c)[0] for c in classes])
        nouns = np.array([split_label(c)[1] for c in classes])
        metrics["verb_accuracy"] = float((verbs[y_pred] == verbs[y_true]).mean())
        metrics["noun_accuracy"] = float((nouns[y_pred] == nouns[y_true]).mean())
    metrics["absent_classes"] = [classes[i] for i in labels if s[i] == 0]
    metrics["averaging"] = (
        "per-class: sklearn labels=range(K), zero_division=0; macro: over the classes present in y_true; "
        "weighted: by support"
    )
    metrics["classes"] = classes
    metrics["per_class"] = {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(classes)
    }
    metrics["confusion"] = cm.astype(int).tolist()
    metrics["confusion_normalized"] = cm_norm.tolist()
    return metrics


# --- files --------------------------------------------------------------------------------------

def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


HEADLINE = (
    ("top1", "Top-1 accuracy"),
    ("top5", "Top-5 accuracy"),
    ("mean_class_accuracy", "Mean class accuracy"),
    ("macro_precision", "Macro precision"),
    ("macro_recall", "Macro recall"),
    ("macro_f1", "Macro F1"),
    ("weighted_f1", "Weighted F1"),
    ("verb_accuracy", "Verb accuracy"),
    ("noun_accuracy", "Noun accuracy"),
)


def headline(metrics: dict[str, Any]) -> list[tuple[str, float]]:
    """(display name, value) of the headline numbers present in `metrics`."""
    out = []
    for key, name in HEADLINE:
        if key == "top5" and metrics.get("top5_k", 0) >= metrics.get("num_classes", 0):
            continue  # top-K of K classes is always 100%
        if key in metrics:
            label = f"Top-{metrics['top5_k']} accuracy" if key == "top5" else name
            out.append((label, float(metrics[key])))
    return out


def summary_markdown(metrics: dict[str, Any], classes: Sequence[str], title: str = "Evaluation",
                     columns_per_block: int = 12) -> str:
    """Headline numbers, then the per-class table in the form of seed 000's Table I.

    Rows are Precision / Recall / F-score / Support, columns the classes and "Ave." (the macro
    average). Wide class lists are cut into blocks of `columns_per_block` classes so the table stays
    readable; "Ave." closes the last block.
    """
    lines = [f"# {title}", "", f"{metrics['num_samples']} clips, {metrics['num_classes']} classes.", "",
             "| Metric | Value |", "|---|---|"]
    lines += [f"| {name} | {_pct(value)} |" for name, value in headline(metrics)]
    lines += ["", "## Per-class precision, recall and F-score", ""]
    pc = metrics["per_class"]
    blocks = [list(classes[i:i + columns_per_block]) for i in range(0, len(classes), columns_per_block)]
    for b, block in enumerate(blocks):
        last = b == len(blocks) - 1
        cols = block + (["Ave."] if last else [])
        lines.append("| Metric | " + " | ".join(cols) + " |")
        lines.append("|---" * (len(cols) + 1) + "|")
        for key, name, ave in (("precision", "Precision", "macro_precision"), ("recall", "Recall", "macro_recall"),
                               ("f1", "F-score", "macro_f1")):
            cells = [_pct(pc[c][key]) for c in block] + ([_pct(metrics[ave])] if last else [])
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        cells = [str(pc[c]["support"]) for c in block] + ([str(metrics["num_samples"])] if last else [])
        lines.append("| Support | " + " | ".join(cells) + " |")
        lines.append("")
    if metrics.get("absent_classes"):
        lines.append("Classes absent from this split (support 0; left out of the averages): "
                     + ", ".join(metrics["absent_classes"]) + ".")
        lines.append("")
    lines.append("Ave. = macro average over the classes present in the split; Ave. recall = mean class accuracy.")
    return "\n".join(lines) + "\n"


def write_metrics(out_dir: str | Path, metrics: dict[str, Any], classes: Sequence[str],
                  predictions: Iterable[tuple[str, int, int, Sequence[float]]] | None = None,
                  title: str = "Evaluation") -> Path:
    """Write metrics.json, per_class.csv, confusion.csv, confusion_normalized.csv, summary.md and,
    given `predictions` as (clip_id, true id, predicted id, class probabilities), predictions.csv.

    Each file is written atomically. Returns `out_dir`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = list(classes)
    write_json(out / "metrics.json", metrics)
    pc = metrics["per_class"]
    write_text_atomic(out / "per_class.csv", _csv_text(
        ("class", "precision", "recall", "f1", "support"),
        ((c, repr(pc[c]["precision"]), repr(pc[c]["recall"]), repr(pc[c]["f1"]), pc[c]["support"]) for c in classes),
    ))
    write_text_atomic(out / "confusion.csv", _csv_text(
        ["true\\pred", *classes], ([c, *row] for c, row in zip(classes, metrics["confusion"]))))
    write_text_atomic(out / "confusion_normalized.csv", _csv_text(
        ["true\\pred", *classes],
        ([c, *(f"{v:.6f}" for v in row)] for c, row in zip(classes, metrics["confusion_normalized"]))))
    if predictions is not None:
        rows = []
        for clip_id, t, p, probs in predictions:
            probs = [float(x) for x in probs]
            if len(probs) != len(classes):
                raise BadInputError(out / "predictions.csv",
                                    f"clip {clip_id}: {len(probs)} probabilities for {len(classes)} classes")
            rows.append([clip_id, classes[int(t)], classes[int(p)], int(int(t) == int(p)), *(f"{x:.6f}" for x in probs)])
        write_text_atomic(out / "predictions.csv", _csv_text(
            ["clip_id", "true", "pred", "correct", *(f"p_{c}" for c in classes)], rows))
    write_text_atomic(out / "summary.md", summary_markdown(metrics, classes, title=title))
    return out
