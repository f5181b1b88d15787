"""`egoattn demo`: the main job, end to end on the synthetic dataset, on a laptop CPU.

synth -> prepare (RGB frames and warp flow) -> train the two streams of Ego-RNN: the RGB attention
model (recipe `demo`: bundled ImageNet EfficientNet-Lite0, CAM attention + ConvLSTM, last stage
fine-tuned on cached trunk features) and the flow stream (recipe `cpu_flow`, shortened) -> evaluate
each and their late fusion on the held-out subject (S2) -> attention overlays of a few test clips ->
one HTML report. The RGB stream tells the object and the order of the frames; only the flow stream
sees whether the object moves (stir vs shake), so the fused model is the one reported.
Every step is resumable: rerunning the command picks up where an interrupted run stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from rich.console import Console

console = Console()


def _step(title: str) -> float:
    console.rule(f"[bold]{title}")
    return time.perf_counter()


# The flow stream's recipe, shortened to fit the demo's 15 minutes (cpu_flow: 20 epochs, x0.3 at 14).
FLOW_RECIPE = "cpu_flow"
FLOW_OVERRIDES = ("train.epochs=12", "optim.milestones=[8]", "train.channels_last=true")


def _train(recipe: str, data: Path, run: Path, overrides: Sequence[str], cache_features: bool) -> None:
    from egoattn.training.run import train

    if not (run / "metrics.json").exists():
        train(recipe, data=data, out=run, overrides=overrides, cache_features=cache_features,
              resume=(run / "checkpoints" / "last.ckpt").exists())


def run_demo(out: Path, preset: str = "default", seed: int = 0, recipe: str = "demo",
             overrides: Sequence[str] = ()) -> dict:
    from egoattn.data.prepare import PrepareOptions, prepare_dataset
    from egoattn.data.synth import generate_synthetic
    from egoattn.evaluation.evaluate import evaluate_late_fusion
    from egoattn.explain.explain import explain_run
    from egoattn.report.html import write_report

    out = Path(out)
    source, prepared, run, flow_run = out / "synthetic", out / "prepared", out / "run", out / "run-flow"
    timings: dict[str, float] = {}

    t = _step(f"1/6 synthetic dataset ({preset} preset, seed {seed}) -> {source}")
    generate_synthetic(source, preset=preset, seed=seed)
    timings["synth"] = time.perf_counter() - t

    t = _step(f"2/6 prepare (RGB and DIS warp flow) -> {prepared}")
    prepare_dataset(source, prepared, PrepareOptions(format="synthetic", short_side=160, flow="dis",
                                                     warp=True, motion=False))
    timings["prepare"] = time.perf_counter() - t

    t = _step(f"3/6 train the RGB attention stream, recipe '{recipe}' -> {run}")
    _train(recipe, prepared, run, [f"seed={seed}", *overrides], cache_features=True)
    timings["train_rgb"] = time.perf_counter() - t

    t = _step(f"4/6 train the flow stream, recipe '{FLOW_RECIPE}' -> {flow_run}")
    _train(FLOW_RECIPE, prepared, flow_run, [f"seed={seed}", *FLOW_OVERRIDES, *overrides], cache_features=False)
    timings["train_flow"] = time.perf_counter() - t

    t = _step("5/6 evaluate each stream and their late fusion on the held-out subject S2")
    metrics = evaluate_late_fusion([run, flow_run], data=prepared, split="gtea61", out=out / "eval",
                                   stream_outs=[out / "eval-rgb", out / "eval-flow"])
    streams = dict(zip(("rgb", "flow"), metrics.pop("streams")))
    timings["evaluate"] = time.perf_counter() - t

    t = _step("6/6 attention overlays and the HTML report")
    explain_run(run, prepared, split="gtea61", out=out / "attention", num_clips=4)
    report = write_report(run, out=out / "report.html", eval_dirs=[out / "eval", out / "eval-rgb", out / "eval-flow"],
                          attention_dirs=[out / "attention"])
    timings["explain"] = time.perf_counter() - t

    console.rule("[bold green]done")
    console.print(f"top-1 on S2, two-stream late fusion: {metrics['top1']:.1%} (RGB stream {streams['rgb']['top1']:.1%}, "
                  f"flow stream {streams['flow']['top1']:.1%});   mean class accuracy: {metrics['mean_class_accuracy']:.1%}")
    console.print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    console.print(f"results: {out / 'eval'} (metrics.json, summary.md, confusion.png), attention: {out / 'attention'}")
    console.print(f"open {report} in a browser for all of it on one page")
    return {"metrics": metrics, "streams": streams, "timings": timings}
