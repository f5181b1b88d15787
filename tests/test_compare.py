"""compare_runs over fake run directories: grouping, mean/std over seeds, best per column, files."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
import yaml

from egoattn.errors import BadInputError
from egoattn.evaluation.compare import compare_runs, format_cell

TOP1 = {"convlstm": [0.50, 0.56, 0.59], "attention": [0.61, 0.66, 0.62]}
MCA = {"convlstm": [0.48, 0.52, 0.53], "attention": [0.47, 0.50, 0.49]}


def _make_runs(root, with_eval=True):
    paths = []
    for name in TOP1:
        for seed in range(3):
            run = root / f"{name}-s{seed}"
            run.mkdir(parents=True)
            config = {"name": name, "seed": seed, "model": {"name": "egornn", "options": {"attention": name != "convlstm"}}}
            (run / "config.yaml").write_text(yaml.safe_dump(config))
            # training's own metrics.json: worse numbers that must NOT be used when an evaluation exists
            (run / "metrics.json").write_text(json.dumps({"top1": 0.01, "best_epoch": 3}))
            if with_eval:
                ev = run / "eval-gtea61"
                ev.mkdir()
                (ev / "metrics.json").write_text(json.dumps({
                    "top1": TOP1[name][seed], "mean_class_accuracy": MCA[name][seed],
                    "macro_f1": 0.4, "verb_accuracy": 0.7 + 0.01 * seed}))
            paths.append(run)
    return paths


def test_means_stds_and_best(tmp_path):
    paths = _make_runs(tmp_path)
    rows = compare_runs(paths, out=tmp_path / "table")
    assert [r["group"] for r in rows] == ["convlstm", "attention"]
    for row in rows:
        name = row["group"]
        assert row["n"] == 3 and row["seeds"] == [0, 1, 2]
        assert row["metrics"]["top1"]["mean"] == pytest.approx(np.mean(TOP1[name]))
        assert row["metrics"]["top1"]["std"] == pytest.approx(np.std(TOP1[name], ddof=1))
        assert row["metrics"]["mean_class_accuracy"]["mean"] == pytest.approx(np.mean(MCA[name]))
        assert row["metrics"]["verb_accuracy"]["std"] == pytest.approx(np.std([0.70, 0.71, 0.72], ddof=1))
        assert "noun_accuracy" not in row["metrics"]
    best = {r["group"]: r["best"] for r in rows}
    assert "top1" in best["attention"] and "top1" not in best["convlstm"]
    assert "mean_class_accuracy" in best["convlstm"] and "mean_class_accuracy" not in best["attention"]
    assert "macro_f1" in best["convlstm"] and "macro_f1" in best["attention"]  # a tie: both bold

    md = (tmp_path / "table.md").read_text()
    att = next(line for line in md.splitlines() if line.startswith("| attention"))
    cell = format_cell(rows[1]["metrics"]["top1"])
    assert cell == f"{100 * np.mean(TOP1['attention']):.1f} ± {100 * np.std(TOP1['attention'], ddof=1):.1f} (3)"
    assert f"**{cell}**" in att
    assert "**" + format_cell(rows[1]["metrics"]["mean_class_accuracy"]) + "**" not in att
    assert "Noun" not in md.splitlines()[0]
    table = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [r["configuration"] for r in table] == ["convlstm", "attention"]
    assert float(table[0]["top1_mean"]) == pytest.approx(np.mean(TOP1["convlstm"]))
    assert float(table[1]["top1_std"]) == pytest.approx(np.std(TOP1["attention"], ddof=1))


def test_group_by_dotted_key_and_single_runs(tmp_path):
    paths = _make_runs(tmp_path)
    rows = compare_runs(paths, group_by="model.options.attention")
    assert [r["group"] for r in rows] == ["False", "True"]
    rows = compare_runs(paths, group_by="seed")  # one run per (seed) group has no std
    assert [r["n"] for r in rows] == [2, 2, 2]
    with pytest.raises(BadInputError, match="no key 'model.nope'"):
        compare_runs(paths, group_by="model.nope")


def test_training_metrics_used_without_evaluation(tmp_path):
    paths = _make_runs(tmp_path, with_eval=False)
    rows = compare_runs(paths)
    assert rows[0]["metrics"]["top1"]["mean"] == pytest.approx(0.01)
    assert rows[0]["metrics"]["top1"]["std"] == pytest.approx(0.0)


def test_newest_evaluation_wins(tmp_path):
    run = _make_runs(tmp_path)[0]
    other = run / "eval-loso-S1"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({"top1": 0.9}))
    os.utime(other / "metrics.json", (1e10, 1e10))
    assert compare_runs([run])[0]["metrics"]["top1"]["mean"] == pytest.approx(0.9)


def test_baseline_metrics_json_grouped_by_name(tmp_path):
    files = []
    for i, (name, acc) in enumerate([("svm", 0.3), ("svm", 0.4), ("knn", 0.2)]):
        f = tmp_path / f"b{i}" / "metrics.json"
        f.parent.mkdir()
        f.write_text(json.dumps({"name": name, "top1": acc, "macro_f1": acc / 2}))
        files.append(f)
    rows = compare_runs(files, group_by="model.name")
    assert [(r["group"], r["n"]) for r in rows] == [("svm", 2), ("knn", 1)]
    assert rows[0]["metrics"]["top1"]["mean"] == pytest.approx(0.35)
    assert rows[1]["metrics"]["top1"]["std"] is None
    assert format_cell(rows[1]["metrics"]["top1"]) == "20.0 (1)"
    assert rows[0]["best"] == ["top1", "macro_f1"]


def test_bad_inputs(tmp_path):
    with pytest.raises(BadInputError, match="no such run"):
        compare_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no eval"):
        compare_runs([tmp_path / "empty"])
    f = tmp_path / "x" / "metrics.json"
    f.parent.mkdir()
    f.write_text(json.dumps({"name": "x", "top1": 73.7}))
    with pytest.raises(BadInputError, match="fraction"):
        compare_runs([f])
