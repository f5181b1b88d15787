"""Shared pieces of the benchmark suite: results, timing, profiling notes, machine facts, test data.

Every measurement is a :class:`Measure` (a number with a unit); every comparison the suite makes is
a :class:`Ratio` (optionally with a target it must meet, printed PASS / MISS). Sections return
a :class:`Section` holding both, plus notes (what limits a missed target).
"""

from __future__ import annotations

import cProfile
import io
import os
import platform
import pstats
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

# --- results --------------------------------------------------------------------------------------


@dataclass
class Measure:
    name: str
    value: float
    unit: str
    detail: str = ""

    def text(self) -> str:
        return f"{self.name}: {fmt(self.value)} {self.unit}" + (f"  ({self.detail})" if self.detail else "")


@dataclass
class Ratio:
    """numerator / denominator, with an optional target ``op`` ('>=' or '<=') ``threshold``."""

    key: str  # short stable identifier (printed, grepped by the smoke test)
    name: str
    value: float
    unit: str = "x"  # "x" for a ratio, "%" for a share (value is then a percentage)
    op: str | None = None
    threshold: float | None = None

    @property
    def verdict(self) -> str | None:
        return verdict(self.value, self.op, self.threshold)

    def target_text(self) -> str:
        return "" if self.op is None else f"{self.op} {fmt(self.threshold)}{self.unit}"

    def text(self) -> str:
        line = f"ratio {self.key}: {fmt(self.value)}{self.unit}  {self.name}"
        if self.op is not None:
            line += f"  (target {self.target_text()}) {self.verdict}"
        return line


def verdict(value: float, op: str | None, threshold: float | None) -> str | None:
    """PASS / MISS of ``value op threshold``; None without a target (NaN always misses)."""
    if op is None or threshold is None:
        return None
    if op not in (">=", "<="):
        raise ValueError(f"target operator must be '>=' or '<=', got {op!r}")
    if not np.isfinite(value):
        return "MISS"
    ok = value >= threshold if op == ">=" else value <= threshold
    return "PASS" if ok else "MISS"


@dataclass
class Section:
    title: str
    measures: list[Measure] = field(default_factory=list)
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, name: str, value: float, unit: str, detail: str = "") -> Measure:
        m = Measure(name, float(value), unit, detail)
        self.measures.append(m)
        print(f"  {m.text()}", flush=True)
        return m

    def ratio(self, key: str, name: str, value: float, unit: str = "x", op: str | None = None,
              threshold: float | None = None) -> Ratio:
        r = Ratio(key, name, float(value), unit, op, threshold)
        self.ratios.append(r)
        print(r.text(), flush=True)
        return r

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if not np.isfinite(v):
        return str(v)
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3g}"


# --- timing ---------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for queued accelerator work, so wall-clock timings are honest."""
    if device.type != "cpu" and torch.accelerator.is_available():
        torch.accelerator.synchronize()


def best_time(fn: Callable[[], Any], device: torch.device, repeat: int = 3, budget: float = 5.0,
              warmup: int = 1) -> float:
    """Best wall time of ``fn`` over up to ``repeat`` runs (at least one) within ``budget`` seconds."""
    for _ in range(warmup):
        fn()
        sync(device)
    best, start = float("inf"), time.perf_counter()
    for i in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return best


def times_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int = 3,
                      budget: float = 5.0, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times of each function, run in turn (a, b, a, b, ...) for up to ``rounds`` rounds: one list
    per function, one entry per round.

    For the two sides of a ratio: timed one after the other, a slow minute of a shared 2-core machine
    lands on one side only; interleaved, both sides see the same conditions. Stops after the round in
    which ``budget`` seconds have passed (always at least one round).
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
            sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return times


def best_times_interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, rounds: int = 3,
                           budget: float = 5.0, warmup: int = 1) -> dict[str, float]:
    """Best wall time of each function over the rounds of :func:`times_interleaved`."""
    return {name: min(t) for name, t in times_interleaved(fns, device, rounds, budget, warmup).items()}


# --- what limits a missed target ------------------------------------------------------------------


def torch_top_ops(fn: Callable[[], Any], k: int = 4) -> str:
    """torch.profiler: the k operators with the largest self CPU time, as shares of the total."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [(e.key, e.self_cpu_time_total) for e in prof.key_averages()]
    total = sum(t for _, t in events) or 1.0
    top = sorted(events, key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{name} {100 * t / total:.0f}%" for name, t in top)


def python_top_funcs(fn: Callable[[], Any], k: int = 4) -> str:
    """cProfile: the k functions with the largest own time, as shares of the profiled time."""
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    rows = [(f"{Path(file).name}:{line}({func})" if file != "~" else func, tt)
            for (file, line, func), (_, _, tt, _, _) in stats.stats.items()]  # type: ignore[attr-defined]
    total = sum(t for _, t in rows) or 1.0
    top = sorted(rows, key=lambda r: -r[1])[:k]
    return ", ".join(f"{name} {100 * t / total:.0f}%" for name, t in top)


# --- machine --------------------------------------------------------------------------------------


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    """True when the CPU has bfloat16 arithmetic (egoattn.models.precision.cpu_bfloat16); otherwise bf16 is
    emulated."""
    from egoattn.models.precision import cpu_bfloat16

    return cpu_bfloat16() is True


def machine_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = cpu_flags()
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    import cv2

    return {
        "cpu": model,
        "cores": cores,
        "simd": ", ".join(simd) or "-",
        "native_bf16": native_bf16(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "opencv": cv2.__version__,
        "opencv_threads": cv2.getNumThreads(),
        "python": platform.python_version(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


# --- synthetic test data --------------------------------------------------------------------------


def synthetic_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8 frames that compress like video: a smooth textured background drifting
    slowly, two coloured boxes moving across it, mild sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 60 * np.sin(xx / (17 + 7 * c) + c) * np.cos(yy / (23 + 5 * c)) for c in range(3)], -1)
    frames = np.empty((n, height, width, 3), np.uint8)
    colours = rng.integers(0, 256, size=(2, 3))
    for t in range(n):
        img = np.roll(base, shift=(t // 3) % width, axis=1)
        for k, colour in enumerate(colours):
            bw, bh = width // 5, height // 4
            x0 = int((t * (3 + 2 * k) + k * width // 2) % max(1, width - bw))
            y0 = int((height - bh) * (0.3 + 0.4 * k))
            img[y0:y0 + bh, x0:x0 + bw] = colour
        img = img + rng.normal(0, 3, size=img.shape).astype(np.float32)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    return frames


def long_video_frames(n: int, height: int, width: int, seed: int = 0):
    """A generator of ``n`` frames (not held in memory: this is for long videos)."""
    chunk = synthetic_frames(64, height, width, seed)
    for t in range(n):
        yield chunk[t % 64]


def build_dataset(root: Path, clips: int = 32, frames: int = 32, width: int = 171, height: int = 128,
                  png: bool = True) -> Path:
    """A prepared dataset (clips/*.zip, manifest.csv, classes.txt) over subjects S1..S4, plus, with
    ``png``, the same frames as one PNG file per frame in png/<clip_id>/img_00001.png (the reference
    layout)."""
    import cv2

    from egoattn.data.clipstore import ClipWriter
    from egoattn.data.manifest import ClipRecord, write_classes, write_manifest

    classes = ["take_cup", "put_cup", "open_jar", "close_jar"]
    records = []
    for i in range(clips):
        subject, label = f"S{i % 4 + 1}", classes[(i // 4) % len(classes)]
        clip_id = f"{subject}_{label}_{i}"
        video = synthetic_frames(frames, height, width, seed=i)
        with ClipWriter(root / "clips" / f"{clip_id}.zip", clip_id, fps=15.0) as w:
            w.add_rgb(video)
        if png:
            d = root / "png" / clip_id
            d.mkdir(parents=True, exist_ok=True)
            for t, f in enumerate(video):
                cv2.imwrite(str(d / f"img_{t + 1:05d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
        verb, noun = label.split("_")
        records.append(ClipRecord(clip_id, f"clips/{clip_id}.zip", label, verb, noun, subject, 0, frames, 15.0, frames))
    write_classes(root / "classes.txt", classes)
    write_manifest(root / "manifest.csv", records)
    return root
