"""Metrics against scikit-learn and hand counts; the files, figures and evaluate_run end to end."""

from __future__ import annotations

import csv
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from egoattn.data.transforms import Normalize
from egoattn.errors import BadInputError, ConfigError
from egoattn.evaluation.metrics import compute_metrics, write_metrics
from egoattn.evaluation.plots import class_correlation, plot_confusion, plot_correlation, plot_learning_curves

K = 14
CLASSES14 = [f"c{i:02d}" for i in range(K)]


@pytest.fixture
def random_case():
    rng = np.random.default_rng(0)
    y = rng.integers(0, K - 1, size=200)  # class K-1 never occurs in y_true
    y[:K - 1] = np.arange(K - 1)
    scores = rng.normal(size=(200, K))
    scores[np.arange(200), y] += 1.0  # better than chance
    scores[5, K - 1] = 50.0  # ... and the absent class is predicted once
    return y, scores


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_equal_sklearn(random_case):
    y, scores = random_case
    m = compute_metrics(y, scores, CLASSES14)
    pred = scores.argmax(1)
    assert (pred == K - 1).sum() >= 1 and K - 1 not in set(y)
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(K), zero_division=0)
    for i, c in enumerate(CLASSES14):
        assert m["per_class"][c]["precision"] == pytest.approx(p[i], abs=1e-9)
        assert m["per_class"][c]["recall"] == pytest.approx(r[i], abs=1e-9)
        assert m["per_class"][c]["f1"] == pytest.approx(f[i], abs=1e-9)
        assert m["per_class"][c]["support"] == s[i]
    present = sorted(set(y.tolist()))
    mp, mr, mf, _ = precision_recall_fscore_support(y, pred, labels=present, average="macro", zero_division=0)
    assert m["macro_precision"] == pytest.approx(mp, abs=1e-9)
    assert m["macro_recall"] == pytest.approx(mr, abs=1e-9)
    assert m["macro_f1"] == pytest.approx(mf, abs=1e-9)
    assert m["mean_class_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-9)
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted", zero_division=0), abs=1e-9)
    assert m["top1"] == pytest.approx((pred == y).mean(), abs=1e-9)
    assert m["top5"] == pytest.approx(top_k_accuracy_score(y, scores, k=5, labels=range(K)), abs=1e-9)
    assert m["top5_k"] == 5 and m["top1"] < m["top5"] < 1.0
    assert m["absent_classes"] == [CLASSES14[K - 1]]
    assert m["per_class"][CLASSES14[K - 1]] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    cm = confusion_matrix(y, pred, labels=range(K))
    assert np.array_equal(np.array(m["confusion"]), cm)
    norm = np.array(m["confusion_normalized"])
    assert np.allclose(norm[:-1].sum(1), 1.0) and np.all(norm[-1] == 0)  # absent class: an all-zero row
    assert m["num_samples"] == 200 and m["num_classes"] == K
    assert "verb_accuracy" not in m  # no underscores, no verb/noun
    json.dumps(m)  # JSON-ready


def test_probabilities_give_the_same_metrics_as_logits(random_case):
    y, scores = random_case
    probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    a, b = compute_metrics(y, scores, CLASSES14), compute_metrics(y, probs, CLASSES14)
    for key in ("top1", "top5", "macro_f1", "mean_class_accuracy"):
        assert a[key] == pytest.approx(b[key], abs=1e-12)
    assert a["confusion"] == b["confusion"]


def test_hand_checked_three_classes():
    # true  : a a a b b c
    # pred  : a a b b c c
    y = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    scores = np.eye(3)[pred] + np.array([0.0, 0.1, 0.2])  # argmax = pred, second choice = class 2 or 1
    m = compute_metrics(y, scores, ["a", "b", "c"])
    assert m["top1"] == pytest.approx(4 / 6)
    # a: P 2/2, R 2/3;  b: P 1/2, R 1/2;  c: P 1/2, R 1/1
    assert m["per_class"]["a"]["precision"] == pytest.approx(1.0)
    assert m["per_class"]["a"]["recall"] == pytest.approx(2 / 3)
    assert m["per_class"]["a"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.5)
    assert m["per_class"]["c"]["f1"] == pytest.approx(2 / 3)
    assert m["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert m["top5_k"] == 3 and m["top5"] == 1.0
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["confusion_normalized"][0] == pytest.approx([2 / 3, 1 / 3, 0])
    assert m["absent_classes"] == []


def test_top2_by_hand():
    scores = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]])
    # the true class is 2nd, 3rd and 2nd ranked
    m = compute_metrics([1, 0, 2], scores, ["a", "b", "c"])
    from egoattn.evaluation.metrics import topk_accuracy
    assert topk_accuracy(np.array([1, 0, 2]), scores, 2) == pytest.approx(2 / 3)
    assert m["top1"] == 0.0


def test_verb_noun_accuracy():
    classes = ["take_cup", "take_spoon", "open_jam", "close_jam", "open_peanut_butter"]
    # (true, pred): same verb & noun / same verb / same noun / neither / verb ok, noun 'peanut_butter' != 'jam'
    pairs = [(0, 0), (0, 1), (2, 3), (1, 2), (2, 4)]
    y = np.array([t for t, _ in pairs])
    scores = np.eye(5)[[p for _, p in pairs]]
    m = compute_metrics(y, scores, classes)
    assert m["top1"] == pytest.approx(1 / 5)
    assert m["verb_accuracy"] == pytest.approx(3 / 5)  # pairs 0, 1, 4
    assert m["noun_accuracy"] == pytest.approx(2 / 5)  # pairs 0, 2


def test_bad_inputs_are_named():
    with pytest.raises(BadInputError, match="columns"):
        compute_metrics([0, 1], np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(BadInputError, match="labels must lie"):
        compute_metrics([0, 5], np.zeros((2, 2)), ["a", "b"])


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_write_metrics_files_parse(tmp_path, random_case):
    y, scores = random_case
    m = compute_metrics(y, scores, CLASSES14)
    probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    preds = [(f"clip{i}", int(y[i]), int(scores[i].argmax()), probs[i]) for i in range(len(y))]
    write_metrics(tmp_path, m, CLASSES14, preds)
    assert json.loads((tmp_path / "metrics.json").read_text())["top1"] == pytest.approx(m["top1"])
    per_class = list(csv.DictReader((tmp_path / "per_class.csv").open()))
    assert [r["class"] for r in per_class] == CLASSES14
    assert float(per_class[3]["f1"]) == pytest.approx(m["per_class"]["c03"]["f1"], abs=1e-12)
    conf = list(csv.reader((tmp_path / "confusion.csv").open()))
    assert conf[0][1:] == CLASSES14 and sum(int(v) for row in conf[1:] for v in row[1:]) == 200
    norm = list(csv.reader((tmp_path / "confusion_normalized.csv").open()))
    assert float(norm[1][1]) == pytest.approx(m["confusion_normalized"][0][0], abs=1e-6)
    rows = list(csv.DictReader((tmp_path / "predictions.csv").open()))
    assert len(rows) == 200 and rows[0]["true"] == CLASSES14[y[0]]
    assert sum(int(r["correct"]) for r in rows) == round(m["top1"] * 200)
    assert sum(float(rows[0][f"p_{c}"]) for c in CLASSES14) == pytest.approx(1.0, abs=1e-4)
    md = (tmp_path / "summary.md").read_text()
    assert "| Precision |" in md and "| F-score |" in md and "Ave." in md
    assert f"{100 * m['macro_f1']:.1f}%" in md and f"{100 * m['top1']:.1f}%" in md
    # 14 classes in blocks of 12: the second block holds 2 classes and the average
    assert md.count("| Metric | c") == 2


def test_pngs(tmp_path, random_case):
    y, scores = random_case
    m = compute_metrics(y, scores, CLASSES14)
    w14, h14 = _png_size(plot_confusion(m["confusion_normalized"], CLASSES14, tmp_path / "c14.png"))
    classes61 = [f"verb{i % 9}_noun{i}" for i in range(61)]
    eye = np.eye(61)
    w61, h61 = _png_size(plot_confusion(eye, classes61, tmp_path / "c61.png"))
    assert 500 < w14 < 2500 and 500 < h14 < 2500
    assert w61 > w14 and h61 > h14 and w61 < 3000  # grows with the class count
    probs = np.exp(scores) / np.exp(scores).sum(1, keepdims=True)
    w, h = _png_size(plot_correlation(probs, CLASSES14, tmp_path / "corr.png"))
    assert w > 500 and h > 500


def test_class_correlation_values():
    rng = np.random.default_rng(1)
    a = rng.random(50)
    probs = np.stack([a, 2 * a + 1, -a, np.full(50, 0.3)], axis=1)  # last column constant
    c = class_correlation(probs)
    assert c.shape == (4, 4)
    assert c[0, 1] == pytest.approx(1.0) and c[0, 2] == pytest.approx(-1.0)
    assert np.all(c[3] == 0) and np.all(c[:, 3] == 0)
    assert np.allclose(c, c.T)


def test_learning_curves_from_lightning_style_csv(tmp_path):
    # Lightning's CSVLogger: sparse rows, train and val logged on different rows of an epoch
    text = "epoch,step,train_loss_step,train_loss_epoch,train_acc,val_loss,val_acc\n"
    for e in range(4):
        text += f"{e},{e * 10 + 5},{2.0 - 0.1 * e},,,,\n"
        text += f"{e},{e * 10 + 9},,,,{1.8 - 0.2 * e},{0.2 + 0.1 * e}\n"
        text += f"{e},{e * 10 + 9},,{1.9 - 0.3 * e},{0.3 + 0.1 * e},,\n"
    (tmp_path / "metrics.csv").write_text(text)
    from egoattn.evaluation.plots import read_epoch_metrics
    series = read_epoch_metrics(tmp_path / "metrics.csv")
    assert series["val_acc"] == pytest.approx({0: 0.2, 1: 0.3, 2: 0.4, 3: 0.5})
    w, h = _png_size(plot_learning_curves(tmp_path / "metrics.csv", tmp_path / "curves.png"))
    assert w > 600 and h > 250
    (tmp_path / "bad.csv").write_text("epoch,lr\n0,0.1\n")
    with pytest.raises(BadInputError, match="no loss or accuracy"):
        plot_learning_curves(tmp_path / "bad.csv", tmp_path / "bad.png")


# --- evaluate_run with a stand-in run ------------------------------------------------------------

torch = pytest.importorskip("torch")


class TinyModel(torch.nn.Module):
    """Logits from the mean colour of the clip; rejects keys the real models do not take."""

    input_keys = ("rgb", "flow")

    def __init__(self, k: int) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, k)
        self.seen: list[dict[str, tuple]] = []

    def forward(self, rgb=None, flow=None):
        self.seen.append({"rgb": tuple(rgb.shape), "flow": None if flow is None else tuple(flow.shape)})
        return {"logits": self.fc(rgb.mean(dim=(1, 3, 4))) + flow.mean() * 0, "attention": None}


@dataclass
class FakeLoaded:
    model: torch.nn.Module
    recipe: object
    classes: list
    run_dir: Path


def _fake_batches(n: int, k: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, n, 4):
        b = min(4, n - start)
        batches.append({
            # uint8, as egoattn's loaders ship them (evaluate normalises them on the device)
            "rgb": torch.randint(0, 256, (b, 2, 3, size, size), generator=g, dtype=torch.uint8),
            "warp": torch.randint(0, 256, (b, 10, size, size), generator=g, dtype=torch.uint8),
            "mask": torch.randint(0, 2, (b, 2, size, size), generator=g, dtype=torch.uint8),
            "label": torch.randint(0, k, (b,), generator=g),
            "clip_id": [f"S2_clip{start + i}" for i in range(b)],
            "frame_indices": torch.zeros(b, 2, dtype=torch.int64),
        })
    return batches


@pytest.fixture
def fake_run(tmp_path, monkeypatch):
    from egoattn.data.manifest import write_classes
    from egoattn.training.config import validate_recipe

    classes = ["take_cup", "take_jam", "open_jam", "close_jam"]
    data = tmp_path / "data"
    write_classes(data / "classes.txt", classes)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,train_loss,val_loss,val_acc\n0,1.5,1.4,0.3\n1,1.2,1.3,0.4\n")
    recipe = validate_recipe({"name": "tiny", "seed": 3, "model": {"name": "tiny"},
                              "data": {"split": "loso:S2", "size": 16}}, "test")
    torch.manual_seed(0)
    model = TinyModel(len(classes))
    calls = {}

    def load_run(run_dir, which="best"):
        calls["load"] = (Path(run_dir), which)
        return FakeLoaded(model, recipe, classes, Path(run_dir))

    def make_eval_loader(loaded, data_root, split, batch_size=None, flow_stacks=1, center_crop=True):
        calls["loader"] = (Path(data_root), split, flow_stacks, center_crop)
        return _fake_batches(10, len(classes), 16 if center_crop else 20)

    fake = types.ModuleType("egoattn.training.run")
    fake.load_run, fake.make_eval_loader = load_run, make_eval_loader
    monkeypatch.setitem(sys.modules, "egoattn.training.run", fake)
    return run, data, model, classes, calls


def test_evaluate_run_writes_everything(fake_run):
    from egoattn.evaluation.evaluate import evaluate_run, predict_logits

    run, data, model, classes, calls = fake_run
    m = evaluate_run(run, data)
    out = run / "eval-loso-S2"
    assert calls["load"] == (run, "best") and calls["loader"] == (data, "loso:S2", 1, True)
    for name in ("metrics.json", "per_class.csv", "confusion.csv", "confusion_normalized.csv", "predictions.csv",
                 "summary.md", "confusion.png", "correlation.png", "learning_curves.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["name"] == "tiny" and saved["seed"] == 3 and saved["split"] == "loso:S2"
    assert saved["num_samples"] == 10 and "verb_accuracy" in saved
    # warp was passed as flow; mask, label, clip_id were not passed at all
    assert model.seen[0] == {"rgb": (4, 2, 3, 16, 16), "flow": (4, 10, 16, 16)}
    # the written metrics are those of the model's own logits
    batches = _fake_batches(10, len(classes), 16)
    preds = predict_logits(model, batches, normalize=Normalize())
    labels = torch.cat([b["label"] for b in batches]).numpy()
    assert m["top1"] == pytest.approx((preds.logits.argmax(1) == labels).mean())
    assert preds.clip_ids[:2] == ["S2_clip0", "S2_clip1"]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert [r["clip_id"] for r in rows] == preds.clip_ids


def test_evaluate_five_crops_average_the_crop_logits(fake_run, tmp_path):
    from egoattn.evaluation.evaluate import evaluate_run, five_crops

    run, data, model, classes, calls = fake_run
    m = evaluate_run(run, data, out=tmp_path / "ev5", crops=5)
    assert calls["loader"][3] is False  # asked for uncropped frames
    assert model.seen[-1]["rgb"][-2:] == (16, 16)  # crops of the recipe's size
    batches = _fake_batches(10, len(classes), 20)
    with torch.inference_mode():
        expect = []
        for b in batches:
            views = five_crops({"rgb": b["rgb"], "flow": b["warp"]}, 16)
            assert torch.equal(views[0]["rgb"], b["rgb"][..., :16, :16])  # top-left corner
            assert torch.equal(views[4]["rgb"], b["rgb"][..., 2:18, 2:18])  # centre
            expect.append(torch.stack([model(**Normalize()(v))["logits"] for v in views]).mean(0))
    expect = torch.cat(expect).numpy()
    labels = torch.cat([b["label"] for b in batches]).numpy()
    assert m["top1"] == pytest.approx((expect.argmax(1) == labels).mean())
    rows = list(csv.DictReader((tmp_path / "ev5" / "predictions.csv").open()))
    assert [r["pred"] for r in rows] == [classes[i] for i in expect.argmax(1)]


def test_evaluate_rejects_other_classes(fake_run):
    from egoattn.data.manifest import write_classes
    from egoattn.evaluation.evaluate import evaluate_run

    run, data, model, classes, calls = fake_run
    write_classes(data / "classes.txt", list(reversed(classes)))
    with pytest.raises(BadInputError, match="different order"):
        evaluate_run(run, data)
    write_classes(data / "classes.txt", classes[:3])
    with pytest.raises(BadInputError, match="classes.txt"):
        evaluate_run(run, data)


def _reversed_batches(batches: list[dict]) -> list[dict]:
    """The same clips, last first (a second stream's loader need not keep the first one's order)."""
    flat = [{k: v[i] for k, v in b.items()}
            for b in batches for i in range(len(b["clip_id"]))][::-1]
    return [{k: ([x[k] for x in flat[s:s + 4]] if k == "clip_id" else torch.stack([x[k] for x in flat[s:s + 4]]))
             for k in flat[0]} for s in range(0, len(flat), 4)]


def test_late_fusion_averages_the_logits_of_each_run_clip_by_clip(fake_run, tmp_path, monkeypatch):
    from egoattn.evaluation.evaluate import evaluate_late_fusion, evaluate_run, predict_logits

    run, data, model, classes, calls = fake_run
    fake = sys.modules["egoattn.training.run"]
    other_run = tmp_path / "run-flow"
    torch.manual_seed(1)
    other = TinyModel(len(classes))
    load_first = fake.load_run
    fake.load_run = lambda d, which="best": (FakeLoaded(other, load_first(d).recipe, classes, Path(d))
                                            if Path(d) == other_run else load_first(d, which))
    batches = _fake_batches(10, len(classes), 16)
    fake.make_eval_loader = lambda loaded, root, split, **kw: (
        _reversed_batches(batches) if loaded.model is other else batches)
    m = evaluate_late_fusion([run, other_run], data, out=tmp_path / "fused")

    labels = torch.cat([b["label"] for b in batches]).numpy()
    norm = Normalize()
    expect = (predict_logits(model, batches, normalize=norm).logits + predict_logits(other, batches, normalize=norm).logits) / 2
    assert m["top1"] == pytest.approx((expect.argmax(1) == labels).mean())
    assert m["name"] == "late fusion: tiny + tiny" and m["runs"] == [str(run), str(other_run)]
    rows = list(csv.DictReader((tmp_path / "fused" / "predictions.csv").open()))
    assert [r["clip_id"] for r in rows] == [f"S2_clip{i}" for i in range(10)]
    assert [r["pred"] for r in rows] == [classes[i] for i in expect.argmax(1)]
    # stream_outs: each run's own evaluation from the same predictions, as evaluate_run writes it
    m2 = evaluate_late_fusion([run, other_run], data, out=tmp_path / "fused2",
                              stream_outs=[tmp_path / "s-rgb", tmp_path / "s-flow"])
    own = evaluate_run(run, data, out=tmp_path / "own")
    assert m2["top1"] == pytest.approx(m["top1"]) and len(m2["streams"]) == 2
    assert m2["streams"][0]["top1"] == pytest.approx(own["top1"])
    assert (tmp_path / "s-rgb" / "predictions.csv").read_text() == (tmp_path / "own" / "predictions.csv").read_text()
    assert m2["streams"][1]["top1"] == pytest.approx((predict_logits(other, batches, normalize=norm).logits.argmax(1) == labels).mean())
    # fusing a run with itself changes nothing
    same = evaluate_late_fusion([run, run], data, out=tmp_path / "self")
    single = predict_logits(model, batches, normalize=norm).logits
    assert same["top1"] == pytest.approx((single.argmax(1) == labels).mean())
    with pytest.raises(ConfigError, match="at least two runs"):
        evaluate_late_fusion([run], data, out=tmp_path / "one")
    fake.make_eval_loader = lambda loaded, root, split, **kw: batches[:1] if loaded.model is other else batches
    with pytest.raises(BadInputError, match="different clips"):
        evaluate_late_fusion([run, other_run], data, out=tmp_path / "bad")
