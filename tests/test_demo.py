"""`egoattn demo` end to end on the small synthetic preset: every promised output exists and agrees."""

import json

import numpy as np
import pytest

from egoattn.demo import run_demo


@pytest.mark.slow
def test_demo_end_to_end_small(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, preset="small", seed=0, overrides=["train.epochs=3", "data.num_workers=0"])
    for path in ["synthetic/manifest.csv", "prepared/manifest.csv", "run/checkpoints/best.ckpt",
                 "run/metrics.csv", "eval/metrics.json", "eval/summary.md", "eval/confusion.png",
                 "attention/attention_scores.json", "report.html"]:
        assert (out / path).is_file(), path
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["top1"] == pytest.approx(result["metrics"]["top1"])
    # top-1 is the share of test clips (S2, 14 in the small preset) whose prediction is right
    predictions = (out / "eval" / "predictions.csv").read_text().splitlines()[1:]
    assert len(predictions) == 14
    correct = np.mean([row.split(",")[3] in ("True", "1", "true") for row in predictions])
    assert metrics["top1"] == pytest.approx(correct)
    assert len(list((out / "attention").glob("*.gif"))) == 4
