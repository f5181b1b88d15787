"""One memory measurement in a fresh process, so peak RSS numbers do not contaminate each other.

    python benchmarks/bench_child.py train DATA OUT [--quick]   # the demo recipe for a few steps
    python benchmarks/bench_child.py predict VIDEO [--quick]    # predict with windows over a video

The last stdout line is JSON: {"maxrss_mb": own peak RSS, "children_maxrss_mb": largest child's
(DataLoader workers), "seconds": wall time, ...}.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from egoattn.denormals import flush_denormals
from egoattn.memory import keep_freed_memory

#: Overrides of the demo recipe: a few steps (one short epoch); --quick also shrinks the frames.
TRAIN_OVERRIDES = ["train.epochs=1"]
QUICK_TRAIN_OVERRIDES = ["data.size=64", "data.resize=73", "data.num_frames=6", "data.batch_size=4",
                         "model.options.input_size=64"]
#: Predict settings: the inference benchmark's model, 2 s windows every 10 s (memory does not depend on
#: the stride; fewer windows keep the 10-minute run short).
PREDICT_WINDOW, PREDICT_STRIDE = 2.0, 10.0


def predictor(quick: bool = False, device=None):
    """The benchmarks' inference model: the demo recipe's (its RGB stream: what `egoattn predict` serves
    after `egoattn demo`; --quick shrinks it as it shrinks training), random head weights on the bundled
    ImageNet EfficientNet-Lite0, in the memory format and with the pre-processing that `egoattn predict`
    gives a run of that recipe (load_run, Preprocessing.from_recipe)."""
    import torch

    from egoattn.inference.predict import Predictor, Preprocessing
    from egoattn.models.registry import create_model
    from egoattn.training.config import apply_overrides, load_recipe

    recipe = apply_overrides(load_recipe("demo"), QUICK_TRAIN_OVERRIDES if quick else [])
    torch.manual_seed(0)
    model = create_model(recipe.model.name, 14, **recipe.model.options)
    if recipe.train.channels_last:
        model.to(memory_format=torch.channels_last)
    return Predictor(model, [f"class{i}" for i in range(14)], Preprocessing.from_recipe(recipe, model), device)


def run_train(data: Path, out: Path, quick: bool) -> dict:
    from egoattn.training.run import train

    overrides = TRAIN_OVERRIDES + (QUICK_TRAIN_OVERRIDES if quick else [])
    train("demo", data=data, out=out, overrides=overrides, cache_features=True)
    return {"what": "train demo recipe (--cache-features, 1 epoch)"}


def run_predict(video: Path, quick: bool) -> dict:
    from egoattn.inference.predict import predict_video

    p = predictor(quick)
    result = predict_video(p, video, window=PREDICT_WINDOW, stride=PREDICT_STRIDE, top_k=1)
    return {"what": "predict", "windows": len(result.windows), "frames": result.num_frames}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries the parent's RSS at fork
    into a child's ru_maxrss across exec, which would make every child report the suite's size."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    keep_freed_memory()  # as the egoattn command does
    flush_denormals()
    ap = argparse.ArgumentParser()
    ap.add_argument("job", choices=["train", "predict"])
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.job == "train":
        info = run_train(args.paths[0], args.paths[1], args.quick)
    else:
        info = run_predict(args.paths[0], args.quick)
    info |= {"maxrss_mb": peak_rss_mb(),
             "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
             "seconds": time.perf_counter() - t0}
    sys.stdout.write("\n" + json.dumps(info) + "\n")


if __name__ == "__main__":
    main()
