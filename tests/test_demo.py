"""`egoattn demo` end to end on the small synthetic preset: every promised output exists and agrees."""

import csv
import json

import numpy as np
import pytest

from egoattn.demo import run_demo


def _probabilities(predictions_csv) -> dict[str, np.ndarray]:
    with open(predictions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    return {r["clip_id"]: np.array([float(v) for k, v in r.items() if k.startswith("p_")]) for r in rows}


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, preset="small", seed=0, overrides=["train.epochs=3", "data.num_workers=0"])
    for path in ["synthetic/manifest.csv", "prepared/manifest.csv", "run/checkpoints/best.ckpt",
                 "run/metrics.csv", "run-flow/checkpoints/best.ckpt", "eval/metrics.json", "eval/summary.md",
                 "eval/confusion.png", "eval-rgb/metrics.json", "eval-flow/metrics.json",
                 "attention/attention_scores.json", "report.html"]:
        assert (out / path).is_file(), path
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["top1"] == pytest.approx(result["metrics"]["top1"])
    # eval/ is the late fusion of the two streams: its logits are the mean of theirs, clip by clip
    assert metrics["runs"] == [str(out / "run"), str(out / "run-flow")]
    probs = {name: _probabilities(out / f"eval-{name}" / "predictions.csv") for name in ("rgb", "flow")}
    fused = _probabilities(out / "eval" / "predictions.csv")
    assert set(fused) == set(probs["rgb"]) == set(probs["flow"])
    for clip, p in fused.items():  # softmax of the mean logits = normalised geometric mean of the softmaxes
        rgb, flow = probs["rgb"][clip], probs["flow"][clip]
        g = np.sqrt(rgb * flow)
        # the CSVs round to 1e-6: compare ratios to the top class where every probability is >= 1e-3
        k = int(p.argmax())
        kept = (rgb >= 1e-3) & (flow >= 1e-3) & (p >= 1e-3)
        assert kept[k] and k == int(g.argmax()), clip
        np.testing.assert_allclose((p / p[k])[kept], (g / g[k])[kept], rtol=1e-2)
    # top-1 is the share of test clips (S2, 14 in the small preset) whose prediction is right
    predictions = (out / "eval" / "predictions.csv").read_text().splitlines()[1:]
    assert len(predictions) == 14
    correct = np.mean([row.split(",")[3] in ("True", "1", "true") for row in predictions])
    assert metrics["top1"] == pytest.approx(correct)
    assert len(list((out / "attention").glob("*.gif"))) == 4
