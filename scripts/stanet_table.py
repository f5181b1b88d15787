"""STANet beside the Ego-RNN models and the handcrafted SVM/KNN baselines on the synthetic dataset, and
the activity accuracy on P-FGSM-protected versus original test clips (issue #5; seed 000 Tables I, II).

    python scripts/stanet_table.py --data PREPARED --out runs/stanet [--seeds 0] [--protect-per-class 1]
        [--reuse ROW=RUN ...] [--table STANET.md]

Trains the three CPU STANet stages (cpu_stanet_stage1_rgb, cpu_stanet_stage2_flow, then cpu_stanet_stage3
initialised from both), the demo Ego-RNN (cpu_egornn_cam with --cache-features) and the flow stream
(cpu_flow) once per seed with scripts/ablation.py's run_row, fits the SVM and KNN baselines on pooled
HOF + MBH features, evaluates everything on the held-out subject S2 and writes STANET.md (and .csv):

1. one table in the form of seed 000's (top-1, mean class accuracy, macro F1, verb/noun accuracy) and
   the time-reversed pair accuracy of ablation.py;
2. STANet's per-class precision, recall and F-score in the form of seed 000 Table I;
3. the activity accuracy of the demo model and STANet on original versus P-FGSM-protected S2 clips.
   `egoattn protect` works on a whole prepared dataset, so the script first writes a sub-dataset of
   the first --protect-per-class S2 clips of each class (P-FGSM costs about a minute of one core per
   32-frame clip here), protects it with the bundled ImageNet classifier and its default private set
   (sigma = 0.99), and evaluates both copies with split `all` (every clip is a test clip).

Resumable like ablation.py: a finished run, evaluation, baseline or protected clip is not redone. The
seconds of each step are kept in OUT/timings.json when the step runs, so a re-run that only rewrites the
table still reports what the steps cost.
`--reuse ROW=RUN` copies an already trained run into OUT/ROW/seed<S> instead of training it; its
config.yaml must equal what the script would train (recipe, seed and overrides), else it stops.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

import ablation  # scripts/ablation.py, beside this file
from ablation import Row, pair_accuracy, pair_accuracy_table, run_row
from egoattn.baselines.classify import run_baseline
from egoattn.data.manifest import read_classes, read_manifest, write_manifest
from egoattn.errors import BadInputError, ConfigError
from egoattn.evaluation.compare import aggregate, load_run_result, table_csv, table_markdown
from egoattn.evaluation.evaluate import evaluate_run
from egoattn.fileio import read_json, read_yaml, write_json, write_text_atomic
from egoattn.denormals import flush_denormals
from egoattn.memory import keep_freed_memory
from egoattn.privacy.protect import ProtectOptions, protect
from egoattn.training.config import apply_overrides, dump_recipe, load_recipe

# One loader process: the script is meant to use one core (the machine is shared).
ONE_CORE = ("data.num_workers=0",)
# Fewer epochs than the recipes (25, 20, 15), the learning-rate step kept at about the same share of the
# run: on one shared core an epoch of cpu_egornn_cam took ~110 s and one of stage 3 (uncached: RGB and flow
# backbones at every step) ~3 min, and all runs + P-FGSM had to fit about 70 minutes.
SHORT_DEMO = ("train.epochs=8", "optim.milestones=[6]")
SHORT_STAGE2 = ("train.epochs=12", "optim.milestones=[9]")
SHORT_STAGE3 = ("train.epochs=4", "optim.milestones=[3]")

ROWS: dict[str, Row] = {
    "egornn_cam": Row("Ego-RNN stage 2, CAM (demo, cpu_egornn_cam)", "cpu_egornn_cam", (*ONE_CORE, *SHORT_DEMO),
                      cache_features=True),
    "egornn_flow": Row("Ego-RNN flow, warp (cpu_flow)", "cpu_flow", ONE_CORE),
    "stanet_rgb": Row("STANet stage 1: RGB, CAM + ConvLSTM", "cpu_stanet_stage1_rgb", ONE_CORE, cache_features=True),
    "stanet_flow": Row("STANet stage 2: flow, warp", "cpu_stanet_stage2_flow", (*ONE_CORE, *SHORT_STAGE2)),
    "stanet": Row("STANet stage 3: [flow, RGB] + 2nd-order pooling", "cpu_stanet_stage3", (*ONE_CORE, *SHORT_STAGE3),
                  init={"rgb": "stanet_rgb", "flow": "stanet_flow"}),
}
# run_row looks rows up in ablation.ROWS; the keys above are not among ablation's own.
if set(ROWS) & set(ablation.ROWS):
    raise RuntimeError(f"row keys {sorted(set(ROWS) & set(ablation.ROWS))} clash with scripts/ablation.py's")
ablation.ROWS.update(ROWS)

FEATURES = "hof+mbh"  # pooled histograms of flow orientation + motion boundaries (seed 000 Table II)
CLASSIFIERS = {"svm": "SVM", "knn": "KNN"}
PROTECT_ROWS = ("egornn_cam", "stanet")  # the RGB models: P-FGSM changes RGB frames only
TEST_SUBJECT = "S2"


def expected_config(key: str, seed: int, out: Path) -> dict[str, Any]:
    """The config.yaml run_row would write for (row, seed): recipe + the same overrides, in its order."""
    row = ROWS[key]
    overrides = [f"seed={seed}", *row.overrides]
    overrides += [f"init.from_run.{k}={out / dep / f'seed{seed}'}" for k, dep in row.init.items()]
    return yaml.safe_load(dump_recipe(apply_overrides(load_recipe(row.recipe), overrides)))


def reuse_run(key: str, seed: int, source: Path, out: Path) -> None:
    """Copy a finished run into OUT/key/seed<S>, after checking it is the run the script would train."""
    dst = out / key / f"seed{seed}"
    if (dst / "metrics.json").exists():
        return
    if not (source / "metrics.json").is_file():
        raise BadInputError(source, "not a finished run (no metrics.json)")
    theirs = read_yaml(source / "config.yaml")
    ours = expected_config(key, seed, out)
    if theirs != ours:
        differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        raise ConfigError(f"--reuse {key}={source}: its config.yaml differs from what the script trains "
                          f"(sections {differ})")
    shutil.copytree(source, dst, ignore=shutil.ignore_patterns("eval-*", "explain-*"))


def test_subset(data: Path, out: Path, per_class: int) -> Path:
    """A prepared sub-dataset of the first `per_class` S2 clips of each class (clip zips copied)."""
    if (out / "manifest.csv").exists():
        return out
    classes = read_classes(data / "classes.txt")
    chosen = []
    for name in classes:
        clips = sorted((r for r in read_manifest(data / "manifest.csv", classes)
                        if r.subject == TEST_SUBJECT and r.label == name), key=lambda r: r.clip_id)
        if len(clips) < per_class:
            raise BadInputError(data / "manifest.csv", f"{TEST_SUBJECT} has {len(clips)} clips of {name}, "
                                                       f"fewer than --protect-per-class {per_class}")
        chosen += clips[:per_class]
    (out / "clips").mkdir(parents=True, exist_ok=True)
    for rec in chosen:
        shutil.copyfile(data / rec.path, out / rec.path)
    for name in ("classes.txt", "prepare.json"):
        shutil.copyfile(data / name, out / name)
    write_manifest(out / "manifest.csv", chosen)  # last: a manifest means a complete copy
    return out


def evaluated(run: Path, data: Path, split: str, name: str) -> dict[str, Any]:
    """Metrics of `run` on (data, split) in RUN/<name>, evaluating only when not done yet."""
    path = run / name / "metrics.json"
    if not path.exists():
        evaluate_run(run, data=data, split=split, out=run / name)
    return read_json(path)


class Timings:
    """Seconds per step, recorded only when the step did its work, kept in OUT/timings.json."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seconds: dict[str, float] = read_json(path) if path.exists() else {}

    def record(self, step: str, started: float) -> None:
        self.seconds[step] = time.perf_counter() - started
        write_json(self.path, self.seconds)


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def table_one(metrics: dict[str, Any], title: str) -> list[str]:
    """Per-class precision / recall / F-score rows with the macro average, as seed 000 Table I."""
    classes = metrics["classes"]
    per = metrics["per_class"]
    lines = [f"| {title} | " + " | ".join(classes) + " | Ave. |", "|---" + "|---:" * (len(classes) + 1) + "|"]
    for key, label, macro in (("precision", "Precision", "macro_precision"), ("recall", "Recall", "macro_recall"),
                              ("f1", "F-score", "macro_f1")):
        lines.append(f"| {label} | " + " | ".join(pct(per[c][key]) for c in classes) + f" | {pct(metrics[macro])} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()  # as the egoattn command does
    flush_denormals()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepared synthetic dataset (compact or default preset)")
    parser.add_argument("--out", type=Path, default=Path("runs/stanet"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--protect-per-class", type=int, default=1,
                        help="S2 clips per class in the protected test subset")
    parser.add_argument("--reuse", nargs="*", default=[], metavar="ROW=RUN",
                        help=f"an already trained run of a row ({', '.join(ROWS)}), first seed only")
    parser.add_argument("--table", type=Path, default=Path("STANET.md"))
    args = parser.parse_args(argv)
    reuse: dict[str, Path] = {}
    for item in args.reuse:
        key, sep, run = item.partition("=")
        if not sep or key not in ROWS:
            parser.error(f"--reuse {item!r}: expected ROW=RUN with ROW one of {list(ROWS)}")
        reuse[key] = Path(run)

    args.out.mkdir(parents=True, exist_ok=True)
    timings = Timings(args.out / "timings.json")
    results, pair_acc, runs = [], {}, {}
    for key, row in ROWS.items():  # in order: stage 3's init rows come first
        pair_acc[row.label] = []
        for seed in args.seeds:
            t = time.perf_counter()
            if key in reuse and seed == args.seeds[0]:
                reuse_run(key, seed, reuse[key], args.out)
            todo = not (args.out / key / f"seed{seed}" / "eval-test" / "metrics.json").exists()
            run = run_row(key, seed, args.data, args.out)
            if todo:
                timings.record(f"{key} seed {seed}: train + evaluate" + (" (reused run: copy + evaluate)"
                                                                         if key in reuse else ""), t)
            runs[key, seed] = run
            result = load_run_result(run / "eval-test" / "metrics.json")
            result["group"] = row.label
            results.append(result)
            pair_acc[row.label].append(pair_accuracy(run / "eval-test" / "predictions.csv"))

    for classifier, title in CLASSIFIERS.items():  # deterministic: no seeds
        t = time.perf_counter()
        metrics_path = args.out / "baselines" / f"{classifier}-{FEATURES}-gtea61" / "metrics.json"
        if not metrics_path.exists():
            run_baseline(args.data, FEATURES, classifier=classifier, split="gtea61", out=args.out / "baselines")
            timings.record(f"{classifier} baseline (features extracted once, for both)", t)
        result = load_run_result(metrics_path)
        result["group"] = f"{title}, {FEATURES.upper().replace('+', ' + ')} (handcrafted)"
        results.append(result)
        pair_acc[result["group"]] = [pair_accuracy(metrics_path.parent / "predictions.csv")]

    t = time.perf_counter()
    original = test_subset(args.data, args.out / f"s2-{args.protect_per_class}-per-class", args.protect_per_class)
    protected_dir = original.with_name(original.name + "-protected")
    todo = not (protected_dir / "manifest.csv").exists()
    options = ProtectOptions()  # seed 000 / models.md section 6 defaults: sigma 0.99, eps 8, delta 1, 100 steps
    report = protect(original, protected_dir, classifier="bundled", options=options)
    if todo:
        timings.record("subset + protect", t)
    protection = []
    for key in PROTECT_ROWS:
        for seed in args.seeds:
            t = time.perf_counter()
            todo = not (runs[key, seed] / f"eval-{protected_dir.name}" / "metrics.json").exists()
            before = evaluated(runs[key, seed], original, "all", f"eval-{original.name}")
            after = evaluated(runs[key, seed], protected_dir, "all", f"eval-{protected_dir.name}")
            if todo:
                timings.record(f"{key} seed {seed}: evaluate on the subset, original and protected", t)
            protection.append((key, seed, before, after))

    rows = aggregate(results, group_by="name")
    command = "python scripts/stanet_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    n_test = read_json(runs["stanet", args.seeds[0]] / "eval-test" / "metrics.json")["num_samples"]
    lines = [
        "# STANet, Ego-RNN and handcrafted baselines on the synthetic dataset", "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{platform.processor() or platform.machine()}; {sum(timings.seconds.values()) / 60:.0f} min of one core "
        "(OMP_NUM_THREADS=1, data.num_workers=0) for all steps, per step at the end  ",
        f"Data: `{args.data}` (synthetic, seed 0: train S1, S3, S4 - test {TEST_SUBJECT}, {n_test} "
        f"clips, 14 classes, chance 7.1 %); seeds {args.seeds}.", "",
        "## S2 test set (seed 000 Table II form, beside the Ego-RNN models)", "",
        table_markdown(rows, group_by="row"),
        "Pair accuracy: over the S2 clips of take/put and open/close, how often the true class gets a higher "
        "probability than its time reverse (50 % = blind to frame order; for the baselines the softmax of the "
        "classifier's scores; 1-NN gives one-hot scores, so a tie between the true class and its reverse counts as "
        "a miss and its pair accuracy is only its hit rate on these clips).", "",
        *pair_accuracy_table(pair_acc),
    ]
    lines += ["", "Rows, as trained (recipes in src/egoattn/recipes/; every run also `--set seed=S`). The demo, "
              "stage 2 and stage 3 ran for fewer epochs than their recipes (25, 20, 15) to fit about 70 minutes of "
              "one shared core, the learning-rate step kept at about the same share of the run; the demo's 75.0 % "
              "(README) is its full 25-epoch run, so its row here is an under-trained demo model.", ""]
    for key, row in ROWS.items():
        how = f"`{row.recipe}`" + "".join(f" `--set {o}`" for o in row.overrides)
        how += " `--cache-features`" if row.cache_features else ""
        how += "".join(f" init.from_run.{k} = {dep}" for k, dep in row.init.items())
        how += f"; reused run `{reuse[key]}` (config checked equal)" if key in reuse else ""
        lines.append(f"- {row.label}: {how}")
    lines.append(f"- SVM / KNN: `egoattn baseline --features {FEATURES} --classifier svm|knn` (RBF SVM C = 1; "
                 "1-NN; temporal pyramid 1, 2, 4; features standardised)")

    for seed in args.seeds:
        stanet_metrics = read_json(runs["stanet", seed] / "eval-test" / "metrics.json")
        lines += ["", f"## STANet per class (seed 000 Table I form), seed {seed}", "",
                  f"Test subject {TEST_SUBJECT}, {stanet_metrics['num_samples']} clips; in %. Ave. = macro average.", "",
                  *table_one(stanet_metrics, f"{TEST_SUBJECT} test set")]
        for key, s, before, after in protection:
            if key == "stanet" and s == seed:
                lines += ["", *table_one(before, f"{original.name}, original"), "",
                          *table_one(after, f"{original.name}, with privacy protection")]

    agg, opts = report["aggregate"], report["options"]
    lines += [
        "", "## Activity accuracy on protected versus original S2 clips", "",
        f"P-FGSM (`egoattn protect`, classifier {report['classifier']}, private set = the top classes reaching "
        f"sigma = {opts['sigma']}, eps = {opts['eps'] * 255:.0f}/255, delta = {opts['delta'] * 255:.0f}/255, at most "
        f"{opts['max_iter']} steps, stop at p(target) > {opts['stop_confidence']}) on `{original}`: the first "
        f"{args.protect_per_class} {TEST_SUBJECT} clip(s) of each class ({agg['clips']} clips, {agg['units']} frames; "
        "protecting all 84 test clips does not fit the time budget). Protected frames stored as PNG; flow, warp flow "
        "and motion maps are copied unchanged, so flow-only models are unaffected by construction.", "",
        f"Protection rate {pct(agg['protection_rate'])} % ({agg['protected_units']} of {agg['units']} frames whose "
        f"top-1 left the private set); mean PSNR {agg['mean_psnr']:.2f} dB; mean SSIM {agg['mean_ssim']:.4f}; "
        f"mean {agg['mean_iterations']:.1f} steps; mean top-1 confidence {agg['mean_conf_before']:.3f} before, "
        f"{agg['mean_conf_after']:.3f} after.", "",
        "| Model | seed | clips | Top-1 original | Top-1 protected | Macro F1 original | Macro F1 protected "
        "| Verb acc. original | Verb acc. protected |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, seed, before, after in protection:
        lines.append(f"| {ROWS[key].label} | {seed} | {before['num_samples']} | {pct(before['top1'])} | "
                     f"{pct(after['top1'])} | {pct(before['macro_f1'])} | {pct(after['macro_f1'])} | "
                     f"{pct(before['verb_accuracy'])} | {pct(after['verb_accuracy'])} |")
    lines += ["", "Evaluated with `egoattn evaluate RUN --data DIR --split all` on the sub-dataset and on its "
                  "protected copy (same clips, same frames sampled).", "",
              "## Time per step (wall seconds on one core while other jobs shared the machine)", "",
              "| step | s |", "|---|---:|", *[f"| {k} | {v:.0f} |" for k, v in timings.seconds.items()]]
    write_text_atomic(args.table, "\n".join(lines) + "\n")
    write_text_atomic(args.table.with_suffix(".csv"), table_csv(rows))
    print(f"wrote {args.table}")


if __name__ == "__main__":
    main()
