"""Handcrafted baselines (seed 000 Table II): known-answer histograms, caching, SVM/KNN on a tiny
prepared dataset whose classes move in constant directions, and evaluate's metrics.json schema."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from egoattn.baselines import features as F
from egoattn.baselines.classify import run_baseline
from egoattn.data.clipstore import ClipWriter
from egoattn.data.flow import flow_to_uint8
from egoattn.data.manifest import ClipRecord, write_classes, write_manifest
from egoattn.errors import ConfigError
from egoattn.fileio import read_json

BOUND = 20.0
# class -> direction in degrees (image axes: +x right, +y down) and its HOF bin
DIRECTIONS = {"push_right": (0.0, 0), "pull_down": (90.0, 2), "lift_upleft": (225.0, 5)}
SUBJECTS = ("S1", "S2", "S3", "S4")
H = W = 24
FRAMES = 7


def _flow(angle_deg: float, speed: float, rng: np.random.Generator) -> np.ndarray:
    """(FRAMES-1, H, W, 2) float flow: constant direction + uniform noise of at most 0.5 px per axis."""
    a = np.deg2rad(angle_deg)
    base = np.array([np.cos(a), np.sin(a)], dtype=np.float32) * speed
    return base + rng.uniform(-0.5, 0.5, size=(FRAMES - 1, H, W, 2)).astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(0)
    classes = list(DIRECTIONS)
    records = []
    for subject in SUBJECTS:
        for label, (angle, _) in DIRECTIONS.items():
            clip_id = f"{subject}_{label}"
            path = f"clips/{clip_id}.zip"
            with ClipWriter(root / path, clip_id, fps=15) as w:
                w.add_rgb(np.zeros((FRAMES, H, W, 3), np.uint8))
                speed = rng.uniform(2.0, 6.0)
                w.add_flow("flow", flow_to_uint8(_flow(angle, speed, rng), BOUND), BOUND, "synthetic")
                # warp flow: the same motion turned by 90 degrees, so warp: features differ from flow ones
                w.add_flow("warp", flow_to_uint8(_flow(angle + 90, speed, rng), BOUND), BOUND, "synthetic")
            verb, _, noun = label.partition("_")
            records.append(ClipRecord(clip_id, path, label, verb, noun, subject, 0, FRAMES, 15.0, FRAMES))
    write_classes(root / "classes.txt", classes)
    write_manifest(root / "manifest.csv", records)
    return root


# --- known answers -------------------------------------------------------------------------------------

def test_orientation_bins_known_answers() -> None:
    angles = np.deg2rad(np.arange(0, 360, 45))
    bins = F.orientation_bins(np.cos(angles), np.sin(angles))
    assert bins.tolist() == list(range(8))
    # bin edges at +-22.5 degrees around each centre
    assert F.orientation_bins(np.cos(np.deg2rad([22.0, 23.0])), np.sin(np.deg2rad([22.0, 23.0]))).tolist() == [0, 1]


def test_hof_hmag_mbh_known_answers() -> None:
    flow = np.zeros((10, 10, 2), np.float32)
    flow[..., 1] = 4.0  # 4 px downwards everywhere
    flow[:5, :5] = 0.0  # a static quarter
    h = F.hof(flow, BOUND, min_motion=0.5)
    expected = np.zeros(9)
    expected[2] = 0.75 * 4.0 / BOUND
    expected[8] = 0.25
    np.testing.assert_allclose(h, expected, atol=1e-7)
    m = F.hmag(flow)
    assert m[0] == pytest.approx(0.25) and m[5] == pytest.approx(0.75)  # bins [0, .25) and [4, 8)
    assert m.sum() == pytest.approx(1.0)
    # constant flow has no motion boundary; a vertical edge in flow x points along -x (bin 4 of flow x)
    assert not F.mbh(np.full((8, 8, 2), 3.0, np.float32), BOUND).any()
    edge = np.zeros((8, 8, 2), np.float32)
    edge[:, :4, 0] = 5.0
    b = F.mbh(edge, BOUND)
    assert b.shape == (16,) and b[4] > 0 and np.count_nonzero(b) == 1
    # 2x2 grid: cell order row-major; only the top-left cell is static
    g = F.frame_histograms(flow, "hof", BOUND, grid=2)
    assert g.shape == (36,)
    assert g[8] == 1.0 and g[9 + 2] == pytest.approx(4.0 / BOUND)


def test_temporal_pyramid_known_answer() -> None:
    per_frame = np.arange(8, dtype=np.float32).reshape(8, 1)
    pooled = F.temporal_pyramid(per_frame, (1, 2, 4), "mean")
    np.testing.assert_allclose(pooled, [3.5, 1.5, 5.5, 0.5, 2.5, 4.5, 6.5])
    np.testing.assert_allclose(F.temporal_pyramid(per_frame, (2,), "max"), [3, 7])
    # fewer frames than segments: each segment takes the frame at its position
    np.testing.assert_allclose(F.temporal_pyramid(per_frame[:2], (4,), "mean"), [0, 0, 1, 1])


def test_feature_names_parse() -> None:
    assert F.parse_features("hof").name == "hof"
    spec = F.parse_features("warp:hof+mbh", grid=2)
    assert (spec.source, spec.kinds, spec.grid, spec.name) == ("warp", ("hof", "mbh"), 2, "warp:hof+mbh")
    for bad in ("hog", "rgb:hof", "hof+hof", ""):
        with pytest.raises(ConfigError):
            F.parse_features(bad)


def test_hof_of_the_dataset_puts_the_mass_in_the_direction_bin(dataset: Path, tmp_path: Path) -> None:
    spec = F.parse_features("hof", levels=(1,))
    records, x = F.extract_features(dataset, spec, cache_dir=tmp_path)
    assert x.shape == (len(SUBJECTS) * 3, 9)
    for rec, row in zip(records, x):
        b = DIRECTIONS[rec.label][1]
        assert row[b] > 2.0 / BOUND  # at least 2 px of motion, as generated
        assert np.count_nonzero(np.delete(row, b)) == 0  # no other orientation, no static pixel
    # warp flow is turned by 90 degrees: two bins further
    _, xw = F.extract_features(dataset, F.parse_features("warp:hof", levels=(1,)), cache_dir=tmp_path)
    for rec, row in zip(records, xw):
        assert row.argmax() == (DIRECTIONS[rec.label][1] + 2) % 8


def test_features_are_cached_per_kind_and_options(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    spec = F.parse_features("hof")
    _, first = F.extract_features(dataset, spec, cache_dir=tmp_path)
    assert first.shape[1] == 9 * 7  # 9 bins x (1 + 2 + 4) segments
    assert len(list(tmp_path.glob("flow-hof-*.npz"))) == 1
    computed: list[tuple[str, ...]] = []
    real = F.clip_features
    monkeypatch.setattr(F, "clip_features", lambda reader, s: computed.append(s.kinds) or real(reader, s))
    _, again = F.extract_features(dataset, spec, cache_dir=tmp_path)
    np.testing.assert_array_equal(again, first)
    assert computed == []  # served from the cache
    _, both = F.extract_features(dataset, F.parse_features("hof+mbh"), cache_dir=tmp_path)
    assert set(computed) == {("mbh",)}  # only the missing kind is computed
    np.testing.assert_array_equal(both[:, : first.shape[1]], first)
    computed.clear()
    F.extract_features(dataset, F.parse_features("hof", grid=2), cache_dir=tmp_path)
    assert set(computed) == {("hof",)}  # another option is another cache entry
    assert len(list(tmp_path.glob("flow-hof-*.npz"))) == 2


# --- classifiers and outputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("classifier,features", [("svm", "hof"), ("knn", "hof"), ("svm", "warp:hof+hmag+mbh")])
def test_classifiers_reach_100_percent(dataset: Path, tmp_path: Path, classifier: str, features: str) -> None:
    metrics = run_baseline(dataset, features, classifier, split="gtea61", out=tmp_path, progress=False)
    assert metrics["name"] == f"{classifier}-{features}"
    assert metrics["num_samples"] == 3  # subject S2
    assert metrics["top1"] == 1.0 and metrics["macro_f1"] == 1.0
    out = Path(metrics["run"])
    assert out.parent == tmp_path
    for name in ("metrics.json", "summary.md", "per_class.csv", "confusion.csv", "predictions.csv", "baseline.json"):
        assert (out / name).is_file()
    assert read_json(out / "metrics.json")["confusion"] == np.eye(3, dtype=int).tolist()
    assert read_json(out / "baseline.json")["classifier"] == classifier


def test_linear_svm_and_loso_split(dataset: Path, tmp_path: Path) -> None:
    metrics = run_baseline(dataset, "hof", "svm", split="loso:S4", kernel="linear", C=10.0, out=tmp_path,
                           progress=False)
    assert metrics["split"] == "loso:S4" and metrics["top1"] == 1.0
    assert Path(metrics["run"]).name == "svm-hof-loso-S4"


def test_bad_classifier_options(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="classifier"):
        run_baseline(dataset, "hof", "forest", out=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="neighbours"):
        run_baseline(dataset, "hof", "knn", k=50, out=tmp_path, progress=False)


class _TinyModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(1, 3)

    def forward(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(rgb.mean(dim=(1, 2, 3, 4)).unsqueeze(1))}


def test_metrics_json_has_the_schema_of_evaluate(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    """egoattn evaluate on a stand-in run and the baseline write metrics.json with the same keys and types."""
    from egoattn.evaluation.compare import compare_runs
    from egoattn.evaluation.evaluate import evaluate_run
    from egoattn.training.config import load_recipe

    classes = list(DIRECTIONS)
    fake = types.ModuleType("egoattn.training.run")
    fake.load_run = lambda run, which="best": SimpleNamespace(
        model=_TinyModel(), recipe=load_recipe("cpu_egornn"), classes=classes, run_dir=Path(run))
    batch = {"rgb": torch.randint(0, 256, (3, 1, 3, 4, 4), dtype=torch.uint8), "label": torch.tensor([0, 1, 2]), "clip_id": ["a", "b", "c"]}
    fake.make_eval_loader = lambda loaded, data, split: [batch]
    monkeypatch.setitem(sys.modules, "egoattn.training.run", fake)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    evaluate_run(run_dir, dataset, split="gtea61")
    theirs = read_json(run_dir / "eval-gtea61" / "metrics.json")

    ours = read_json(Path(run_baseline(dataset, "hof", "knn", out=tmp_path / "b", progress=False)["run"])
                     / "metrics.json")
    assert list(ours) == list(theirs)
    assert {k: type(v) for k, v in ours.items()} == {k: type(v) for k, v in theirs.items()}
    assert ours["per_class"].keys() == theirs["per_class"].keys()
    # compare lists the baseline beside the network
    rows = compare_runs([run_dir, tmp_path / "b" / "knn-hof-gtea61"])
    assert {r["group"] for r in rows} == {"cpu_egornn", "knn-hof"}


def test_cli_baseline(dataset: Path, tmp_path: Path) -> None:
    from egoattn.cli import app

    result = CliRunner().invoke(app, ["baseline", "--data", str(dataset), "--features", "hof+hmag",
                                      "--classifier", "knn", "--k", "1", "--levels", "1,2", "--grid", "2",
                                      "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "knn-hof+hmag on gtea61: top-1 100.0%" in result.output
    saved = read_json(tmp_path / "knn-hof+hmag-gtea61" / "baseline.json")
    assert (saved["levels"], saved["grid"], saved["feature_dim"]) == ([1, 2], 2, (9 + 8) * 4 * 3)
    bad = CliRunner().invoke(app, ["baseline", "--data", str(dataset), "--features", "hog", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "hog" in bad.output
