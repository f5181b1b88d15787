"""`egoattn baseline`: handcrafted motion features + SVM or KNN (seed 000 Table II), evaluated like a network.

Features (``egoattn.baselines.features``) are standardised (StandardScaler, fitted on the training
clips) and classified by an SVM (sklearn SVC, RBF or linear kernel, ``C``) or a KNN (``k`` neighbours).
The test side of the split is scored and written exactly as ``egoattn evaluate`` writes a run:
compute_metrics + write_metrics (metrics.json with the same keys, summary.md, per-class and
confusion CSVs, predictions.csv), so ``egoattn compare`` lists baselines beside the networks.
Their ``name`` is ``<classifier>-<features>`` (e.g. ``svm-hof``, ``knn-warp:hof+mbh``).

Output: ``OUT/<name>-<split>/`` (``:`` replaced by ``-`` in the folder name), plus
``baseline.json`` there with every option; the feature cache is ``OUT/features/``.
Fields of metrics.json that describe a network evaluation take these values: ``run`` = the output
folder, ``checkpoint`` = "none", ``flow_stacks`` = 0 (no stacks: the whole clip's flow is pooled),
``crops`` = 0 (full frames, no crop), ``seed`` = the classifier's seed (KNN and SVC are deterministic).
Scores: SVC's one-vs-rest decision function (``break_ties`` so its argmax is the prediction), KNN's
neighbour vote fractions; a class without training clips gets the lowest score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from egoattn.baselines.features import FeatureSpec, extract_features, parse_features
from egoattn.data.dataset import load_prepared
from egoattn.data.manifest import split_records
from egoattn.errors import BadInputError, ConfigError
from egoattn.evaluation.metrics import compute_metrics, write_metrics
from egoattn.fileio import write_json

CLASSIFIERS = ("svm", "knn")
KERNELS = ("rbf", "linear")


def make_classifier(classifier: str, C: float = 1.0, kernel: str = "rbf", k: int = 1, seed: int = 0) -> Pipeline:
    """StandardScaler -> SVC(C, kernel) or KNeighborsClassifier(k)."""
    if classifier == "svm":
        if kernel not in KERNELS:
            raise ConfigError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if C <= 0:
            raise ConfigError(f"C must be positive, got {C}")
        model: Any = SVC(C=C, kernel=kernel, gamma="scale", decision_function_shape="ovr", break_ties=True,
                         random_state=seed)
    elif classifier == "knn":
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        model = KNeighborsClassifier(n_neighbors=k)
    else:
        raise ConfigError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    return Pipeline([("scale", StandardScaler()), (classifier, model)])


def class_scores(pipeline: Pipeline, x: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, num_classes) scores whose row argmax is the pipeline's prediction."""
    known = pipeline.classes_.astype(np.int64)
    if len(known) == 1:
        part = np.ones((x.shape[0], 1))
    elif isinstance(pipeline[-1], SVC):
        part = pipeline.decision_function(x)
        if part.ndim == 1:  # binary: positive = classes_[1]
            part = np.stack([-part, part], axis=1)
    else:
        part = pipeline.predict_proba(x)
    scores = np.full((x.shape[0], num_classes), part.min() - 1.0, dtype=np.float64)
    scores[:, known] = part
    return scores


def run_baseline(data: str | Path, features: str, classifier: str = "svm", split: str = "gtea61",
                 out: str | Path = "baselines", C: float = 1.0, kernel: str = "rbf", k: int = 1,
                 levels: tuple[int, ...] = (1, 2, 4), grid: int = 1, pool: str = "mean",
                 max_flows: int = 64, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Extract (or load cached) features, fit on the split's training clips, evaluate on its test clips.

    Returns the metrics dict written to ``OUT/<name>-<split>/metrics.json``.
    """
    data = Path(data)
    spec: FeatureSpec = parse_features(features, levels=tuple(levels), grid=grid, pool=pool, max_flows=max_flows)
    pipeline = make_classifier(classifier, C=C, kernel=kernel, k=k, seed=seed)
    base = Path(out)
    name = f"{classifier}-{spec.name}"
    out_dir = base / f"{name}-{split}".replace(":", "-")

    classes, _ = load_prepared(data)
    records, x = extract_features(data, spec, cache_dir=base / "features", progress=progress)
    row = {r.clip_id: i for i, r in enumerate(records)}
    label = {c: i for i, c in enumerate(classes)}
    train, test = split_records(records, split)
    tr = np.array([row[r.clip_id] for r in train])
    te = np.array([row[r.clip_id] for r in test])
    y = np.array([label[r.label] for r in records], dtype=np.int64)
    if classifier == "knn" and k > len(tr):
        raise ConfigError(f"k = {k} neighbours but the split has only {len(tr)} training clips")
    if classifier == "svm" and len(set(y[tr].tolist())) < 2:
        raise BadInputError(data / "manifest.csv", f"split {split!r}: the training clips hold only one class")
    pipeline.fit(x[tr], y[tr])
    scores = class_scores(pipeline, x[te], len(classes))

    metrics = compute_metrics(y[te], scores, classes)
    metrics = {"name": name, "seed": seed, "run": str(out_dir), "checkpoint": "none", "data": str(data),
               "split": split, "flow_stacks": 0, "crops": 0, "precision": "float64", **metrics}  # scikit-learn
    pred = scores.argmax(axis=1)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs = e / e.sum(axis=1, keepdims=True)  # softmax of the scores, for predictions.csv only
    rows = zip([r.clip_id for r in test], y[te].tolist(), pred.tolist(), probs)
    write_metrics(out_dir, metrics, classes, rows, title=f"{name} on {split}")
    write_json(out_dir / "baseline.json", {
        "name": name, "features": spec.name, "source": spec.source, "kinds": list(spec.kinds),
        "levels": list(spec.levels), "grid": spec.grid, "pool": spec.pool, "min_motion": spec.min_motion,
        "max_flows": spec.max_flows, "feature_dim": int(x.shape[1]), "classifier": classifier,
        "C": C if classifier == "svm" else None, "kernel": kernel if classifier == "svm" else None,
        "k": k if classifier == "knn" else None, "num_train": int(len(tr)), "num_test": int(len(te)),
        "data": str(data), "split": split,
    })
    return metrics
