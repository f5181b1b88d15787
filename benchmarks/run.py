"""egoattn benchmark suite: one run, ratios and shares of peak, written to BENCHMARKS.md.

    python benchmarks/run.py [--quick] [--out BENCHMARKS.md]

Measures, on this machine and in this order:
  1. the dense-product peak in float32 and bfloat16, best of torch.matmul and oneDNN's convolutions
     (the reference for every "share of peak");
  2. end-to-end `predict` throughput against the bare backbone on the same frames;
  3. clips/s of the training DataLoader against one training step's consumption and a PNG+PIL loader;
  4. an Ego-RNN stage-1 step (frozen backbone) against the reference way of building it, cached
     features, bfloat16 autocast and channels-last;
  5. the ConvLSTM's achieved GFLOP/s as a share of the matmul peak at its precision;
  6. optical flow pairs/s (DIS, Farneback, TV-L1) and endpoint error against TV-L1;
  7. peak memory (max RSS) of training the demo recipe and of predict on a 1 vs 10 minute video.

Every ratio is printed as `ratio <key>: <value> ... (target ...) PASS|MISS`. A missed target gets a
note from torch.profiler / cProfile saying what limits it. Without --quick the report goes to
BENCHMARKS.md at the repository root; --quick (a smoke run, under a minute on a quiet machine) and
--only SECTION,... (one or a few sections) write only when --out is given. Timings are only
meaningful on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from egoattn.denormals import flush_denormals  # noqa: E402
from egoattn.memory import keep_freed_memory  # noqa: E402

import bench_sections as bs  # noqa: E402
from bench_util import Section, fmt, machine_info  # noqa: E402

ROOT = HERE.parent


def run_sections(sz: bs.Sizes, only: set[str] | None = None) -> list[Section]:
    """Run the suite; a section that fails is reported as such and the others still run."""
    from egoattn.evaluation.evaluate import default_device

    device = default_device()
    sections: list[Section] = []
    with tempfile.TemporaryDirectory(prefix="egoattn-bench-") as tmp_name:
        tmp = Path(tmp_name)
        state: dict = {"peak": None, "data": None}

        def peak() -> list[Section]:
            s, state["peak"] = bs.matmul_peak(sz, device)
            return [s]

        def pipeline() -> list[Section]:
            s, state["data"] = bs.input_pipeline(sz, device, tmp)
            return [s]

        def stage1() -> list[Section]:
            return list(bs.stage1(sz, device, state["peak"] or {"float32": float("nan"), "bfloat16": float("nan")}))

        def mem() -> list[Section]:
            data = state["data"] or bs.build_dataset(tmp / "data", sz.data_clips, sz.data_frames, png=False)
            return [bs.memory(sz, data, tmp)]

        steps: list[tuple[str, str, Callable[[], list[Section]]]] = [
            ("peak", "Matmul peak", peak),
            ("inference", "Inference", lambda: [bs.inference(sz, device, tmp)]),
            ("pipeline", "Input pipeline", pipeline),
            ("stage1", "Ego-RNN stage-1 step / ConvLSTM", stage1),
            ("flow", "Optical flow", lambda: [bs.optical_flow(sz, tmp)]),
            ("memory", "Peak memory", mem),
        ]
        for key, title, fn in steps:
            if only and key not in only:
                continue
            print(f"\n== {title}", flush=True)
            t0 = time.perf_counter()
            try:
                got = fn()
            except Exception as e:  # keep going: one broken section must not hide the others
                failed = Section(title)
                failed.note(f"FAILED: {type(e).__name__}: {e}")
                got = [failed]
            got[0].seconds = time.perf_counter() - t0
            sections.extend(got)
    return sections


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|")


def report(sections: list[Section], info: dict, command: str, seconds: float, when: dt.datetime) -> str:
    """BENCHMARKS.md: command, machine, date; the targets table; every measurement; notes."""
    load = info["load_average"]
    lines = [
        "# egoattn benchmarks", "",
        f"Command: `{command}`  ",
        f"Date: {when:%Y-%m-%d %H:%M %Z}".rstrip() + f" (suite took {seconds / 60:.1f} min)  ",
        f"Machine: {info['cpu']}, {info['cores']} cores ({info['simd']}; native bfloat16: "
        f"{'yes' if info['native_bf16'] else 'no'})  ",
        f"Software: torch {info['torch']} ({info['torch_threads']} threads), OpenCV {info['opencv']} "
        f"({info['opencv_threads']} threads), Python {info['python']}  ",
        f"Load average at start: {', '.join(f'{v:.2f}' for v in load) if load else '-'}", "",
        *([f"**{busy_warning(info)}**", ""] if busy_warning(info) else []),
        "All numbers come from this one run; ratios compare quantities measured in it.", "",
        "## Targets", "",
        "| ratio | value | target | result |", "|---|---|---|---|",
    ]
    for s in sections:
        for r in s.ratios:
            if r.op is not None:
                lines.append(f"| {cell(r.name)} (`{r.key}`) | {fmt(r.value)}{r.unit} | {r.target_text()} | {r.verdict} |")
    for s in sections:
        lines += ["", f"## {s.title}", "", f"({s.seconds:.0f} s)", "", "| quantity | value | unit | detail |",
                  "|---|---|---|---|"]
        lines += [f"| {cell(m.name)} | {fmt(m.value)} | {m.unit} | {cell(m.detail)} |" for m in s.measures]
        if s.ratios:
            lines += ["", "| ratio | value | target | result |", "|---|---|---|---|"]
            lines += [f"| {cell(r.name)} (`{r.key}`) | {fmt(r.value)}{r.unit} | {r.target_text() or '-'} | {r.verdict or '-'} |"
                      for r in s.ratios]
        if s.notes:
            lines += [""] + [f"- {n}" for n in s.notes]
    return "\n".join(lines) + "\n"


def busy_warning(info: dict) -> str | None:
    """A warning when other work was running: timings (small kernels especially) are then unreliable."""
    load = info["load_average"]
    if load and load[0] > 0.5 * info["cores"]:
        return (f"The machine was busy (1-minute load average {load[0]:.1f} on {info['cores']} cores): "
                "timings are unreliable; run the suite on an idle machine.")
    return None


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # as the egoattn command does
    flush_denormals()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run with small sizes (under a minute)")
    ap.add_argument("--out", type=Path, default=None,
                    help="report file (default: BENCHMARKS.md at the repository root; --quick: none)")
    ap.add_argument("--only", default=None,
                    help="comma-separated sections to run: peak, inference, pipeline, stage1, flow, memory "
                         "(writes a report only with --out)")
    args = ap.parse_args(argv)
    sz = bs.QUICK if args.quick else bs.FULL
    # A partial run (--quick, --only) must not overwrite the full report: it writes only to an explicit --out.
    out = args.out if args.out is not None else (None if args.quick or args.only else ROOT / "BENCHMARKS.md")
    only = set(args.only.split(",")) if args.only else None

    when = dt.datetime.now().astimezone()
    info = machine_info()
    print(f"egoattn benchmarks {'(quick) ' if args.quick else ''}{when:%Y-%m-%d %H:%M}: {info['cpu']}, "
          f"{info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
          f"load {info['load_average']}", flush=True)
    if busy_warning(info):
        print(f"WARNING: {busy_warning(info)}", flush=True)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    sections = run_sections(sz, only)
    seconds = time.perf_counter() - t0

    print("\n== Summary")
    for s in sections:
        for r in s.ratios:
            print(r.text())
        for n in s.notes:
            if n.startswith("FAILED"):
                print(f"{s.title}: {n}")
    print(f"suite took {seconds:.0f} s")
    if out is not None:
        from egoattn.fileio import write_text_atomic

        command = "python benchmarks/run.py" + (" --quick" if args.quick else "") + (
            f" --out {args.out}" if args.out is not None else "") + (f" --only {args.only}" if args.only else "")
        write_text_atomic(out, report(sections, info, command, seconds, when))
        print(f"wrote {out}")
    failed = any(n.startswith("FAILED") for s in sections for n in s.notes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
