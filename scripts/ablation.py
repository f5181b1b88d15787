"""The Ego-RNN family's ablation table on the synthetic dataset, in the form of the seeds' tables.

    python scripts/ablation.py --out runs/ablation [--seeds 0 1 2] [--rows frame_average convlstm ...]

Generates a synthetic preset (--preset; default compact, the 336-clip preset ABLATION.md was made with)
and prepares it (RGB, warp flow, raw flow and motion maps at short side 160) unless --data names a
prepared dataset, then trains every row once per seed, evaluates
each run on the held-out subject S2, and writes ABLATION.md (and .csv): mean and std over the seeds
per row, plus the *pair accuracy* the synthetic design is about - over the test clips of the
time-reversed pairs (take/put, open/close of each noun), how often the model gives the true class a
higher probability than its time reverse (50 % = blind to frame order).

Every run is resumable: a (row, seed) with a finished evaluation is skipped, so the command can be
re-run after an interruption or with more rows.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from egoattn.data.manifest import read_classes, read_manifest
from egoattn.data.prepare import PrepareOptions, prepare_dataset
from egoattn.data.synth import REVERSE_OF, generate_synthetic
from egoattn.evaluation.compare import aggregate, cell_stat, format_cell, load_run_result, table_csv, table_markdown
from egoattn.evaluation.evaluate import evaluate_late_fusion, evaluate_run
from egoattn.fileio import write_text_atomic
from egoattn.denormals import flush_denormals
from egoattn.memory import keep_freed_memory
from egoattn.training.run import train

# The rows the RGB models share with the demo recipe (cpu_egornn_cam): 10 frames at 160 px.
RGB_160 = ("data.size=160", "data.resize=160", "data.num_frames=10")


@dataclass(frozen=True)
class Row:
    label: str  # the row title in the table
    recipe: str
    overrides: tuple[str, ...] = ()
    init: dict[str, str] = field(default_factory=dict)  # init.from_run key -> label of an earlier row
    cache_features: bool = False
    fuse: tuple[str, ...] = ()  # no training: the late fusion (mean of logits) of these earlier rows' runs

    @property
    def needs(self) -> set[str]:
        return set(self.init.values()) | set(self.fuse)


# The demo recipe as it was when ABLATION.md was made: only the fc behind the CAM trains in the backbone
# (the demo now also fine-tunes the last stage, which the ConvLSTM row does not), classifier dropout 0.7.
ATTENTION = (*RGB_160, "model.options.train_last_stage=false", "model.options.dropout=0.7", "train.epochs=50",
             "optim.milestones=[40]", "train.channels_last=false")
ATTENTION_GROUP = "'input_proj.*', 'convlstm.*', 'classifier.*', 'backbone.fc.*'"


ROWS = {
    "frame_average": Row("Frame average", "cpu_frame_average", RGB_160, cache_features=True),
    "convlstm": Row("ConvLSTM", "cpu_convlstm", (*RGB_160, "model.options.input_size=160"), cache_features=True),
    "convlstm_attention": Row("ConvLSTM-attention", "cpu_egornn_cam", (
        *ATTENTION, f"params.groups=[{{match: [{ATTENTION_GROUP}]}}]"), cache_features=True),
    "flow": Row("Flow (warp)", "cpu_flow"),
    "twostream_late": Row("Two-stream late fusion", "-", fuse=("convlstm_attention", "flow")),
    # The RGB stream at the input it was trained on (10 frames at 160 px; the recipe resizes flow to 112 px,
    # cpu_flow's size, and starts the joint classifier as the two streams' late fusion).
    "twostream": Row("Two-stream joint", "cpu_twostream_joint", (*RGB_160, "model.options.rgb_options.input_size=160"),
        init={"rgb": "convlstm_attention", "flow": "flow"}, cache_features=True),
    # SparNet / SAMSOP add their self-supervised heads in stage 2, where the backbone's last stage trains
    # (on a frozen backbone their losses cannot change the classifier's input). Their base row is the CPU
    # stage 2, the demo's RGB recipe; each MS recipe is that recipe plus its heads and losses.
    "stage2": Row("ConvLSTM-attention, last stage fine-tuned", "cpu_egornn_cam", cache_features=True),
    "ms_cls": Row("+ MS classification", "cpu_ms_cls", cache_features=True),
    "ms_reg": Row("+ MS regression", "cpu_ms_reg", cache_features=True),
    "ms_order": Row("+ MS + order", "cpu_ms_order", cache_features=True),
    # A fine-tuning stage of the ConvLSTM-attention run, on its frames (10 uniformly sampled at 160 px, not
    # the recipe's 8 consecutive at 112: that run falls from 55 % to 8 % of its validation clips on those).
    # The modulation starts at zero, i.e. as that run; the new motion layers train at 1e-3, the loaded
    # ones at 2e-4, 3 epochs (each step runs the whole backbone backward: ~5 min an epoch here).
    "two_in_one": Row("Two-in-one", "cpu_two_in_one", (
        *RGB_160, "data.sampler=uniform", "model.options.input_size=160", "train.epochs=3", "optim.milestones=[]",
        "params.groups=[{match: ['motion_condition.*', 'motion_modulation.*'], lr: 1.0e-3}, "
        f"{{match: [{ATTENTION_GROUP}], lr: 2.0e-4}}]"), init={"": "convlstm_attention"}),
}


def verb_pairs(classes: list[str], verbs: list[tuple[str, str]]) -> dict[str, str]:
    """class -> its partner with the other verb of a pair on the same noun, both ways."""
    pairs = {}
    for a, b in verbs:
        for c in classes:
            verb, _, noun = c.partition("_")
            if verb == a and f"{b}_{noun}" in classes:
                pairs[c], pairs[f"{b}_{noun}"] = f"{b}_{noun}", c
    return pairs


def reversed_pairs(classes: list[str]) -> dict[str, str]:
    """class -> its time reverse (take_cup <-> put_cup, open_jar <-> close_jar, ...)."""
    return verb_pairs(classes, [(forward, reverse) for reverse, forward in REVERSE_OF.items()])


def motion_pairs(classes: list[str]) -> dict[str, str]:
    """stir_x <-> shake_x: one frame cannot tell them apart, only the object's motion can."""
    return verb_pairs(classes, [("stir", "shake")])


def pair_accuracy(predictions_csv: Path, make_pairs: Callable[[list[str]], dict[str, str]] = reversed_pairs) -> float | None:
    """Share of the test clips of paired classes (default: time-reversed pairs) whose true class beats its
    pair in probability."""
    with open(predictions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    classes = [k[2:] for k in rows[0] if k.startswith("p_")]
    pairs = make_pairs(classes)
    wins = [float(r[f"p_{r['true']}"]) > float(r[f"p_{pairs[r['true']]}"]) for r in rows if r["true"] in pairs]
    return sum(wins) / len(wins) if wins else None


def data_description(data: Path) -> str:
    """What the table's data holds, read from it (the synthetic presets differ in clips per class)."""
    test = sum(r.subject == "S2" for r in read_manifest(data / "manifest.csv"))
    return f"synthetic: train S1, S3, S4 - test S2, {test} clips, {len(read_classes(data / 'classes.txt'))} classes"


def pair_accuracy_table(pair_acc: dict[str, list[float | None]]) -> list[str]:
    """Markdown rows: label | mean ± std (n) | the per-seed values (a run without pair clips is left out)."""
    lines = ["| Row | Pair accuracy | per seed |", "|---|---:|---|"]
    for label, accs in pair_acc.items():
        vals = [a for a in accs if a is not None]
        lines.append(f"| {label} | {format_cell(cell_stat(vals)) if vals else '–'} | "
                     + ", ".join(f"{100 * a:.1f}" for a in vals) + " |")
    return lines


def run_row(key: str, seed: int, data: Path, out: Path) -> Path:
    row = ROWS[key]
    run = out / key / f"seed{seed}"
    eval_dir = run / "eval-test"
    if (eval_dir / "metrics.json").exists():
        return run
    if row.fuse:
        evaluate_late_fusion([out / dep / f"seed{seed}" for dep in row.fuse], data=data, split="gtea61", out=eval_dir)
        return run
    overrides = [f"seed={seed}", *row.overrides]
    overrides += [f"init.from_run.{k}={out / dep / f'seed{seed}'}" for k, dep in row.init.items()]
    t = time.perf_counter()
    if not (run / "metrics.json").exists():
        train(row.recipe, data=data, out=run, overrides=overrides, cache_features=row.cache_features,
              resume=(run / "checkpoints" / "last.ckpt").exists())
    evaluate_run(run, data=data, split="gtea61", out=eval_dir)
    print(f"{key} seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
    return run


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()  # as the egoattn command does
    flush_denormals()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--data", type=Path, default=None, help="a prepared dataset (default: generate one)")
    parser.add_argument("--preset", default="compact", help="the synthetic preset generated without --data")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--table", type=Path, default=Path("ABLATION.md"))
    args = parser.parse_args(argv)
    missing = {dep for k in args.rows for dep in ROWS[k].needs} - set(args.rows)
    if missing:
        parser.error(f"rows {sorted(missing)} are needed to initialise others; add them to --rows")

    data = args.data
    if data is None:
        generate_synthetic(args.out / "synthetic", preset=args.preset, seed=0)
        data = args.out / "prepared"
        prepare_dataset(args.out / "synthetic", data, PrepareOptions(format="synthetic", short_side=160))

    started = time.perf_counter()
    results, pair_acc, motion_acc = [], {}, {}
    for key in args.rows:  # rows in order: an init dependency is always trained first
        accs, motion = [], []
        for seed in args.seeds:
            run = run_row(key, seed, data, args.out)
            result = load_run_result(run / "eval-test" / "metrics.json")
            result["group"] = ROWS[key].label
            results.append(result)
            accs.append(pair_accuracy(run / "eval-test" / "predictions.csv"))
            motion.append(pair_accuracy(run / "eval-test" / "predictions.csv", motion_pairs))
        pair_acc[ROWS[key].label], motion_acc[ROWS[key].label] = accs, motion

    rows = aggregate(results, group_by="name")
    command = "python scripts/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Ablation on the synthetic dataset", "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, "
        f"{time.perf_counter() - started:.0f} s for the runs not already done  ",
        f"Data: `{data}` ({data_description(data)}); "
        f"seeds {args.seeds}.", "",
        table_markdown(rows, group_by="row"),
        "## Pair accuracy (time-reversed pairs)", "",
        "Over the S2 clips of take/put and open/close: how often the true class gets a higher probability "
        "than its time reverse. 50 % = blind to the order of the frames.", "",
        *pair_accuracy_table(pair_acc), "",
        "## Motion pairs (stir / shake)", "",
        "Over the S2 clips of stir and shake: how often the true class gets a higher probability than the other "
        "verb on the same object. A single frame cannot tell them apart (the hand circles over a static object "
        "vs hand and object oscillate); 50 % = blind to the object's motion.", "",
        *pair_accuracy_table(motion_acc),
    ]
    write_text_atomic(args.table, "\n".join(lines) + "\n")
    write_text_atomic(args.table.with_suffix(".csv"), table_csv(rows))
    print(f"wrote {args.table}")


if __name__ == "__main__":
    main()
