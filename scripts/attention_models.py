"""VideoLSTM and the pose-driven attention models beside the Ego-RNN family on the synthetic dataset.

    python scripts/attention_models.py --data DIR --out runs/attention [--seeds 0 1 2] [--rows ...]

Trains every row once per seed on a prepared synthetic dataset (it needs rgb, masks and hand keypoints, and
flow for the motion-attention row: `egoattn prepare SYNTH DIR --flow dis`), evaluates each run on the held-out
subject S2 and writes ATTENTION_MODELS.md (and .csv): mean and std over the seeds per row, the pair accuracy of
scripts/ablation.py (time-reversed pairs), and for the models that expose a spatial map the pointing game of
`egoattn explain` against the active-object masks, beside the centre prior.

All rows see the same frames (4 uniformly sampled, 112 px; the cpu_* recipes of these models are made so, and
the Ego-RNN rows are pinned to it here): a budget that fits three seeds of every row in about an hour of one
CPU core. The RGB models train from the feature cache (the motion model's flow backbone runs at every step on
the stored flow pairs); the pose models read keypoints and have no frame backbone to cache. The pose attention
rows load the pose encoder of the pose-LSTM row
of the same seed (`init.from_run.pose_encoder`).

Resumable as scripts/ablation.py: a (row, seed) with a finished evaluation (and pointing game) is skipped.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/ is not a package

import ablation  # noqa: E402  (the Row type, run_row, pair_accuracy)
from ablation import Row, data_description, pair_accuracy, pair_accuracy_table, run_row  # noqa: E402

from egoattn.evaluation.compare import aggregate, cell_stat, format_cell, load_run_result, table_csv, table_markdown  # noqa: E402
from egoattn.explain.explain import explain_run  # noqa: E402
from egoattn.fileio import read_json, write_text_atomic  # noqa: E402

#: The frames every row sees (the cpu_videolstm / cpu_pose_* recipes' own settings).
FRAMES_112 = ("data.num_frames=4", "data.size=112", "data.resize=112")
#: One process, one core: the loader runs in the training process.
ONE_CORE = ("data.num_workers=0",)


@dataclass(frozen=True)
class AttentionRow:
    row: Row  # what scripts/ablation.py's run_row trains and evaluates
    spatial_map: bool  # the model returns `attention` (B, T, h, w): scored with the pointing game


ROWS: dict[str, AttentionRow] = {
    "egornn_frame_average": AttentionRow(Row("Frame average", "cpu_frame_average", (*FRAMES_112, *ONE_CORE),
                                             cache_features=True), False),
    "egornn_convlstm": AttentionRow(Row("ConvLSTM", "cpu_convlstm", (
        *FRAMES_112, "model.options.input_size=112", *ONE_CORE), cache_features=True), False),
    # ABLATION.md's ConvLSTM-attention row (the earlier demo recipe: CAM fc + ConvLSTM, 50 epochs) at 4 frames
    "egornn_attention": AttentionRow(Row("ConvLSTM-attention (Ego-RNN)", "cpu_egornn_cam", (
        *ablation.ROWS["convlstm_attention"].overrides, *FRAMES_112, "model.options.input_size=112", *ONE_CORE),
        cache_features=True), True),
    "videolstm": AttentionRow(Row("VideoLSTM (Conv-ALSTM)", "cpu_videolstm", ONE_CORE, cache_features=True), True),
    "videolstm_motion": AttentionRow(Row("VideoLSTM motion attention", "cpu_videolstm_motion", ONE_CORE,
                                         cache_features=True), True),
    "pose_lstm": AttentionRow(Row("Pose LSTM (keypoints only)", "cpu_pose_lstm", ONE_CORE), False),
    "pose_separable": AttentionRow(Row("Pose separable spatio-temporal", "cpu_pose_separable", ONE_CORE,
                                       init={"pose_encoder": "pose_lstm"}), True),
    "pose_parts": AttentionRow(Row("Pose part-based", "cpu_pose_parts", ONE_CORE, init={"pose_encoder": "pose_lstm"}),
                               True),
    "pose_granularity": AttentionRow(Row("Pose temporal granularity", "cpu_pose_granularity", ONE_CORE,
                                         init={"pose_encoder": "pose_lstm"}), False),
}
_clash = set(ROWS) & set(ablation.ROWS)
if _clash:
    raise RuntimeError(f"row keys {sorted(_clash)} are already rows of scripts/ablation.py")
# run_row looks its row up by key in ablation.ROWS: register ours there (new keys only, checked above).
ablation.ROWS.update({key: r.row for key, r in ROWS.items()})


def pointing_game(run: Path, data: Path) -> dict[str, float]:
    """`egoattn explain`'s scores of a run on S2 (one overlay clip): the model's and the centre prior's."""
    out = run / "explain-test"
    summary = out / "explain.json"
    result = read_json(summary) if summary.is_file() else explain_run(run, data, split="gtea61", out=out, num_clips=1)
    scores = result["scores"]
    if scores is None:
        raise RuntimeError(f"{data} has no active-object masks, so {run} cannot be scored")
    (model,) = scores["models"].values()
    if not model["attention"]:
        raise RuntimeError(f"{run}: the model returned no spatial attention map")
    return {"model": model["overall"]["pointing_game"], "mass": model["overall"]["mass_inside"],
            "prior": scores["centre_prior"]["overall"]["pointing_game"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a prepared synthetic dataset with flow")
    parser.add_argument("--out", type=Path, default=Path("runs/attention"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--table", type=Path, default=Path("ATTENTION_MODELS.md"))
    args = parser.parse_args(argv)
    missing = {dep for k in args.rows for dep in ROWS[k].row.init.values()} - set(args.rows)
    if missing:
        parser.error(f"rows {sorted(missing)} are needed to initialise others; add them to --rows")

    started = time.perf_counter()
    seconds: dict[str, list[float]] = {k: [] for k in args.rows}
    for seed in args.seeds:  # seed by seed, so an interrupted run still has every row of the first seeds
        for key in args.rows:  # rows in order: the pose-LSTM row before the rows it initialises
            t = time.perf_counter()
            run = run_row(key, seed, args.data, args.out)
            if ROWS[key].spatial_map:
                pointing_game(run, args.data)
            seconds[key].append(time.perf_counter() - t)

    results, pair_acc, pointing = [], {}, {}
    for key in args.rows:
        label = ROWS[key].row.label
        runs = [args.out / key / f"seed{seed}" for seed in args.seeds]
        for run in runs:
            result = load_run_result(run / "eval-test" / "metrics.json")
            result["group"] = label
            results.append(result)
        pair_acc[label] = [pair_accuracy(run / "eval-test" / "predictions.csv") for run in runs]
        if ROWS[key].spatial_map:
            pointing[label] = [pointing_game(run, args.data) for run in runs]

    rows = aggregate(results, group_by="name")
    command = "python scripts/attention_models.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Attention models on the synthetic dataset", "",
        f"Command: `OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 {command}`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{platform.processor() or platform.machine()}, {time.perf_counter() - started:.0f} s for the runs not "
        "already done  ",
        f"Data: `{args.data}` ({data_description(args.data)}, chance "
        f"7 %); seeds {args.seeds}. Every row: 4 uniformly sampled frames at 112 px, the bundled ImageNet "
        "EfficientNet-Lite0 frozen; the recipes are named in the last table.", "",
        table_markdown(rows, group_by="row"),
        "## Pair accuracy (time-reversed pairs)", "",
        "Over the S2 clips of take/put and open/close: how often the true class gets a higher probability "
        "than its time reverse (scripts/ablation.py). 50 % = blind to the order of the frames.", "",
        *pair_accuracy_table(pair_acc),
    ]
    lines += [
        "", "## Pointing game (`egoattn explain`)", "",
        "Over every S2 frame with an active object: is the peak of the model's spatial attention inside the "
        "object's ground-truth mask; mass = share of the attention inside the mask. The centre prior is a "
        "Gaussian at the frame centre on the same frames. The separable model's map is its spatial gate alpha "
        "normalised over locations; the part-based model's map spreads each part's weight over its box. The "
        "ConvLSTM, frame-average, pose-LSTM and granularity rows have no spatial map.", "",
        "| Row | Pointing game | Mass inside mask | Centre prior | per seed |", "|---|---:|---:|---:|---|",
    ]
    for label, scores in pointing.items():
        lines.append(f"| {label} | {format_cell(cell_stat([s['model'] for s in scores]))} | "
                     f"{format_cell(cell_stat([s['mass'] for s in scores]))} | "
                     f"{format_cell(cell_stat([s['prior'] for s in scores]))} | "
                     + ", ".join(f"{100 * s['model']:.1f}" for s in scores) + " |")
    lines += ["", "## Rows", "",
              "| Row | Recipe | Overrides | Seconds per seed in this invocation (train + evaluate + explain; "
              "a resumed run only loads) |", "|---|---|---|---|"]
    for key in args.rows:
        row = ROWS[key].row
        extra = [o for o in row.overrides if o not in ONE_CORE]
        extra += [f"init.from_run.{k}=<{dep} run of the seed>" for k, dep in row.init.items()]
        extra += ["--cache-features"] if row.cache_features else []
        done = ", ".join(f"{s:.0f}" for s in seconds[key])
        lines.append(f"| {row.label} | `{row.recipe}` | {'<br>'.join(f'`{o}`' for o in extra) or '-'} | {done} |")
    write_text_atomic(args.table, "\n".join(lines) + "\n")
    write_text_atomic(args.table.with_suffix(".csv"), table_csv(rows))
    print(f"wrote {args.table}")


if __name__ == "__main__":
    main()
