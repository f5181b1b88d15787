"""`egoattn demo`: the main job, end to end on the synthetic dataset, on a laptop CPU.

synth -> prepare -> train (recipe `demo`: bundled ImageNet EfficientNet-Lite0, CAM attention +
ConvLSTM, frozen backbone with cached features) -> evaluate on the held-out subject (S2) ->
attention overlays of a few test clips -> one HTML report. Every step is resumable: rerunning the command picks up where
an interrupted run stopped.
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


def run_demo(out: Path, preset: str = "default", seed: int = 0, recipe: str = "demo",
             overrides: Sequence[str] = ()) -> dict:
    from egoattn.data.prepare import PrepareOptions, prepare_dataset
    from egoattn.data.synth import generate_synthetic
    from egoattn.evaluation.evaluate import evaluate_run
    from egoattn.explain.explain import explain_run
    from egoattn.report.html import write_report
    from egoattn.training.run import train

    out = Path(out)
    source, prepared, run = out / "synthetic", out / "prepared", out / "run"
    timings: dict[str, float] = {}

    t = _step(f"1/5 synthetic dataset ({preset} preset, seed {seed}) -> {source}")
    generate_synthetic(source, preset=preset, seed=seed)
    timings["synth"] = time.perf_counter() - t

    t = _step(f"2/5 prepare -> {prepared}")
    prepare_dataset(source, prepared, PrepareOptions(format="synthetic", short_side=160, flow="none",
                                                     warp=False, motion=False))
    timings["prepare"] = time.perf_counter() - t

    t = _step(f"3/5 train recipe '{recipe}' -> {run}")
    if not (run / "metrics.json").exists():
        train(recipe, data=prepared, out=run, overrides=[f"seed={seed}", *overrides], cache_features=True,
              resume=(run / "checkpoints" / "last.ckpt").exists())
    timings["train"] = time.perf_counter() - t

    t = _step("4/5 evaluate on the held-out subject S2")
    metrics = evaluate_run(run, data=prepared, split="gtea61", out=out / "eval")
    timings["evaluate"] = time.perf_counter() - t

    t = _step("5/5 attention overlays and the HTML report")
    explain_run(run, prepared, split="gtea61", out=out / "attention", num_clips=4)
    report = write_report(run, out=out / "report.html", eval_dirs=[out / "eval"], attention_dirs=[out / "attention"])
    timings["explain"] = time.perf_counter() - t

    console.rule("[bold green]done")
    console.print(f"top-1 on S2: {metrics['top1']:.1%}   mean class accuracy: {metrics['mean_class_accuracy']:.1%}")
    console.print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    console.print(f"results: {out / 'eval'} (metrics.json, summary.md, confusion.png), attention: {out / 'attention'}")
    console.print(f"open {report} in a browser for all of it on one page")
    return {"metrics": metrics, "timings": timings}
