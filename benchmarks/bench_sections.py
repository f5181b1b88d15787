"""The seven measurements of the benchmark suite (see run.py); each returns a Section.

Sizes come from :class:`Sizes` (FULL: the reference-sized settings; QUICK: a smoke run).
"""

from __future__ import annotations

import os
import copy
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from egoattn.data.workers import one_thread_per_worker, worker_context

from bench_util import (
    Section,
    best_time,
    best_times_interleaved,
    times_interleaved,
    build_dataset,
    long_video_frames,
    native_bf16,
    python_top_funcs,
    sync,
    synthetic_frames,
    torch_top_ops,
)

HERE = Path(__file__).resolve().parent
REAL = Path(os.environ.get("EGOATTN_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "data" / "real"
DEMO_VIDEO = REAL / "videos" / "demo.mp4"
REAL_FRAMES = REAL / "frames"


@dataclass(frozen=True)
class Sizes:
    quick: bool
    budget: float  # seconds per timed quantity (best-of loops stop after it)
    matmul_max_n: int
    infer_rounds: int
    data_clips: int
    data_frames: int
    loader_min_clips: int
    loader_rounds: int
    recipe_overrides: tuple[str, ...]
    s1_backbone: str
    s1_size: int
    s1_batch: int
    s1_frames: int
    s1_hidden: int
    flow_pairs: tuple[tuple[str, int], ...]
    epe_pairs: int
    memory_minutes: tuple[float, float]
    memory_video: tuple[int, int, float]  # width, height, fps


FULL = Sizes(quick=False, budget=3.0, matmul_max_n=4096, infer_rounds=6,
             data_clips=128, data_frames=32, loader_min_clips=240, loader_rounds=3, recipe_overrides=(),
             s1_backbone="resnet34", s1_size=224, s1_batch=4, s1_frames=16, s1_hidden=512,
             flow_pairs=(("dis", 60), ("farneback", 20), ("tvl1", 4)), epe_pairs=9,
             memory_minutes=(1.0, 10.0), memory_video=(160, 120, 10.0))
QUICK = Sizes(quick=True, budget=0.5, matmul_max_n=1024, infer_rounds=2,
              data_clips=8, data_frames=16, loader_min_clips=16, loader_rounds=1,
              recipe_overrides=("data.size=64", "data.resize=73", "data.num_frames=6", "data.batch_size=4",
                                "model.options.input_size=64"),
              s1_backbone="resnet18", s1_size=112, s1_batch=2, s1_frames=4, s1_hidden=64,
              flow_pairs=(("dis", 8), ("farneback", 3), ("tvl1", 1)), epe_pairs=1,
              memory_minutes=(0.1, 1.0), memory_video=(96, 64, 10.0))

PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def autocast(device: torch.device, dtype: torch.dtype):
    """bfloat16 autocast, or a no-op context for float32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


def optimizer_of(task: Any) -> torch.optim.Optimizer:
    opt = task.configure_optimizers()
    return opt["optimizer"] if isinstance(opt, dict) else opt


def convlstm_flops(batch: int, steps: int, in_channels: int, hidden: int, h: int, w: int) -> float:
    """Forward FLOPs of the fused gate convolution: 2 * 9 * (Cin + H) * 4H * h * w per step per sample."""
    return 2.0 * 9 * (in_channels + hidden) * 4 * hidden * h * w * steps * batch


def convlstm_executed_flops(batch: int, steps: int, in_channels: int, hidden: int, h: int, w: int,
                            input_grad: bool = False) -> float:
    """FLOPs egoattn's ConvLSTM executes for forward + backward (the nominal count is 3x `convlstm_flops`):
    no h part at the zero initial state (step 1), and no gradient for an input that needs none."""
    unit = 2.0 * 9 * 4 * hidden * h * w * batch
    forward = (steps * in_channels + (steps - 1) * hidden) * unit
    grad_input = ((steps - 1) * hidden + (steps * in_channels if input_grad else 0)) * unit
    return 2 * forward + grad_input  # forward, weight gradient (same products), input gradient


# --- 1. matmul peak ---------------------------------------------------------------------------------


def _square_products(device: torch.device, dtype: torch.dtype) -> dict[str, Callable[[int], Callable[[], Any]]]:
    """Dense n x n by n x n products (about 2 n^3 FLOPs) through each library torch calls on this device:
    BLAS (torch.matmul) and, on the CPU, oneDNN as a 1x1 convolution (n -> n channels over n positions)
    and as a 3x3 convolution (n / 9 -> n channels over n positions: an implicit GEMM of that shape)."""

    def matmul(n: int) -> Callable[[], Any]:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        return lambda: torch.matmul(a, b)

    def conv1x1(n: int) -> Callable[[], Any]:
        side = int(round(n ** 0.5))
        w = torch.randn(n, n, 1, 1, device=device).to(dtype)
        x = torch.randn(1, n, side, n // side, device=device).to(dtype)
        return lambda: F.conv2d(x, w)

    def conv3x3(n: int) -> Callable[[], Any]:
        cin, side = n // 9, int(round(n ** 0.5))
        w = torch.randn(n, cin, 3, 3, device=device).to(dtype)
        x = torch.randn(1, cin, side, n // side, device=device).to(dtype)
        return lambda: F.conv2d(x, w, padding=1)

    kernels: dict[str, Callable[[int], Callable[[], Any]]] = {"torch.matmul": matmul}
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        kernels.update({"oneDNN 1x1 convolution": conv1x1, "oneDNN 3x3 convolution": conv3x3})
    return kernels


def _product_flops(kernel: str, n: int) -> float:
    """FLOPs of one call of a :func:`_square_products` kernel at size n: the convolutions' maps round n
    positions to a rectangle, the 3x3 one's inputs to 9 * (n // 9)."""
    if kernel == "torch.matmul":
        return 2.0 * n**3
    side = int(round(n ** 0.5))
    inner = 9 * (n // 9) if kernel.endswith("3x3 convolution") else n
    return 2.0 * n * inner * side * (n // side)


def matmul_peak(sz: Sizes, device: torch.device) -> tuple[Section, dict[str, float]]:
    """The machine's dense-product peak: best GFLOP/s over the libraries torch uses (see _square_products);
    n doubles while one product takes < 0.1 s. On the AMD CPU, MKL's float32 GEMM reaches less than
    oneDNN's convolutions, whose kernels the ConvLSTM and the backbones run: a share of the BLAS figure
    alone could exceed 100 %."""
    s = Section("Matmul peak (the reference for every share of peak)")
    peak: dict[str, float] = {}
    for name, dtype in PRECISIONS.items():
        best_of: dict[str, float] = {}
        for kernel, make in _square_products(device, dtype).items():
            n, best = 128, 0.0
            while True:
                t = best_time(make(n), device, repeat=5, budget=sz.budget, warmup=1)
                best = max(best, _product_flops(kernel, n) / t / 1e9)
                if t > 0.1 or n >= sz.matmul_max_n:
                    break
                n *= 2
            best_of[kernel] = best
            s.add(f"{kernel} {name}", best, "GFLOP/s", f"largest n = {n}, best of up to 5")
        peak[name] = max(best_of.values())
        s.add(f"matmul peak {name}", peak[name], "GFLOP/s", f"best of the above: {max(best_of, key=best_of.get)}")
    if not native_bf16() and device.type == "cpu":
        s.note("this CPU has no bfloat16 instructions (no avx512_bf16 / amx_bf16 in /proc/cpuinfo): bfloat16 "
               "matmul runs an emulated fallback, so bf16 'peak' and bf16 speed-ups are low here")
    return s, peak


# --- 2. inference -----------------------------------------------------------------------------------


def inference(sz: Sizes, device: torch.device, tmp: Path) -> Section:
    from bench_child import predictor as make_predictor
    from egoattn.data.video import iter_decoded, iter_frames, probe_video, write_video
    from egoattn.inference.predict import predict_video

    s = Section("Inference: end-to-end predict vs bare backbone")
    video = DEMO_VIDEO
    if not video.is_file():
        video = tmp / "demo_synth.mp4"
        write_video(video, synthetic_frames(280, 256, 340), fps=28.0, x264_preset="veryfast")
    if sz.quick:  # a 64-frame excerpt keeps the smoke run short
        excerpt = tmp / "excerpt.mp4"
        write_video(excerpt, iter_frames(video, 0, min(64, probe_video(video).num_frames)),
                    fps=probe_video(video).fps, x264_preset="veryfast")
        video = excerpt
    info = probe_video(video)
    predictor = make_predictor(sz.quick, device)
    model, prep = predictor.model, predictor.prep
    size, T = prep.size, prep.num_frames
    conv = next(p for p in model.parameters() if p.dim() == 4)
    layout = "channels-last" if conv.is_contiguous(memory_format=torch.channels_last) else "contiguous"
    window = T / info.fps  # windows of exactly T frames, back to back: every frame is used once
    s.add("video", info.num_frames, "frames", f"{video.name} {info.width}x{info.height} @ {info.fps:g} fps; "
          f"the demo recipe's model: {T} x {size}px, float32, {layout}, one window per forward (batch 1)")

    shrunk = list(iter_frames(video, 0, T, short_side=prep.resize))  # the first window, as predict converts it
    predictor([prep.crop(f) for f in shrunk])  # warm-up
    holder: dict[str, Any] = {}

    def run() -> None:
        holder["r"] = predict_video(predictor, video, window=window, stride=window, top_k=1)

    run()  # the number of windows, to give the bare forwards as many calls
    windows = len(holder["r"].windows)
    model_frames = windows * T
    x = torch.randn(T, 3, size, size, device=device)  # contiguous, as predict's to_tensor gives it

    def calls(fn: Callable[[], Any]) -> Callable[[], None]:
        def go() -> None:
            with torch.inference_mode():
                for _ in range(windows):
                    fn()
        return go

    # All three get the same statistic, interleaved: the best of `infer_rounds` rounds, each round one
    # end-to-end predict and as many bare calls as predict makes (one per window). The best single call
    # of a few would pick the quietest 50 ms of a shared 2-core machine, whose speed varies by 10-15 %
    # from call to call; taking turns keeps a slow stretch off one side of the ratio. The median of the
    # rounds' own ratios is printed beside it: on this VM single rounds ranged from 0.67 to 0.99.
    rounds = times_interleaved({"e2e": run, "backbone": calls(lambda: model.backbone(x)),
                                "model": calls(lambda: model(rgb=x[None]))}, device,
                               rounds=sz.infer_rounds, budget=10 * sz.budget, warmup=0)
    times = {name: min(t) for name, t in rounds.items()}
    t_e2e, t_bb, t_model = times["e2e"], times["backbone"] / windows, times["model"] / windows
    e2e = model_frames / t_e2e
    s.add("end-to-end predict", e2e, "frames/s", f"{windows} windows, decode + crop + model")
    bare, full = T / t_bb, T / t_model
    s.add("bare backbone forward", bare, "frames/s", f"efficientnet_lite0, {T} frames per call, {windows} calls, "
          f"best of {len(rounds['e2e'])} interleaved rounds")
    s.add("whole model forward", full, "frames/s", "backbone + CAM + ConvLSTM + classifier")
    t_dec = best_time(lambda: sum(1 for _ in iter_decoded(video)), device, repeat=2, budget=sz.budget, warmup=0)
    s.add("decode only (PyAV)", info.num_frames / t_dec, "frames/s")
    t_rgb = best_time(lambda: sum(1 for _ in iter_frames(video, short_side=prep.resize)), device, repeat=2,
                      budget=sz.budget, warmup=0)
    s.add("decode + RGB conversion shrinking to the short side", info.num_frames / t_rgb, "frames/s",
          f"FrameToRGB({prep.resize}): swscale area + full chroma")
    t_prep = best_time(lambda: prep.to_tensor([prep.crop(f) for f in shrunk]), device, repeat=5, budget=sz.budget)
    s.add("crop + normalise", T / t_prep, "frames/s")

    # Half-overlapping windows (stride = T / 2 frames): frames shared by two windows are encoded once
    # (SharedFrames); the same predict with every window encoding all its frames, interleaved.
    def overlapping(share: bool) -> Callable[[], None]:
        def go() -> None:
            predictor.shares_frames = lambda: share  # instance attribute: this predictor only
            try:
                holder["half"] = predict_video(predictor, video, window=window, stride=window / 2, top_k=1)
            finally:
                del predictor.shares_frames
        return go

    half = best_times_interleaved({"shared": overlapping(True), "each": overlapping(False)}, device,
                                  rounds=2, budget=4 * sz.budget, warmup=0)
    n_half = len(holder["half"].windows)
    s.add("predict, half-overlapping windows, shared frames encoded once", n_half / half["shared"], "windows/s",
          f"{n_half} windows of {T} frames every {T // 2}")
    s.add("predict, half-overlapping windows, every window encodes its frames", n_half / half["each"], "windows/s")
    s.ratio("inference_shared_frames", "half-overlapping windows: shared / each window encoding all (windows/s)",
            half["each"] / half["shared"])

    r = s.ratio("inference_e2e", "end-to-end predict / bare backbone (frames/s)", e2e / bare, op=">=", threshold=0.8)
    s.ratio("inference_e2e_median", "the same, median of the rounds' own ratios",
            float(np.median([b / e for b, e in zip(rounds["backbone"], rounds["e2e"])])))
    if r.verdict == "MISS":
        per = {"backbone": t_bb / T, "CAM+ConvLSTM+head": max(0.0, (t_model - t_bb) / T),
               "decode": t_dec / model_frames, "RGB+shrink": max(0.0, t_rgb - t_dec) / model_frames,
               "crop+normalise": t_prep / T}
        per["other"] = max(0.0, t_e2e / model_frames - sum(per.values()))
        total = t_e2e / model_frames
        s.note("inference: per model frame " + ", ".join(f"{k} {1e3 * v:.2f} ms ({100 * v / total:.0f}%)"
                                                          for k, v in per.items())
               + f" of {1e3 * total:.2f} ms; cProfile of one predict: " + python_top_funcs(run))
    return s


# --- 3. input pipeline ------------------------------------------------------------------------------



class PngClips(Dataset):
    """The reference loader: one PNG per frame opened with PIL, the Ego-RNN spatial transform per
    frame (Scale -> flip -> multi-scale corner crop -> ToTensor -> Normalize), same sampler."""

    def __init__(self, root: Path, records: list, classes: list[str], num_frames: int, size: int, resize: int,
                 mean: tuple[float, ...], std: tuple[float, ...], seed: int = 0) -> None:
        self.root, self.records, self.num_frames = root, records, num_frames
        self.class_index = {c: i for i, c in enumerate(classes)}
        self.size, self.resize, self.mean, self.std, self.seed = size, resize, list(mean), list(std), seed

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torchvision.transforms.functional as TF
        from PIL import Image

        from egoattn.data.samplers import uniform_indices
        from egoattn.data.transforms import CORNER_POSITIONS, MultiScaleCornerCrop

        rec = self.records[index]
        rng = np.random.default_rng([self.seed, index])
        crop = MultiScaleCornerCrop(self.size)
        scale = crop.scales[int(rng.integers(len(crop.scales)))]
        position = CORNER_POSITIONS[int(rng.integers(len(CORNER_POSITIONS)))]
        flip = rng.random() < 0.5
        out = []
        for j in uniform_indices(rec.num_frames, self.num_frames):
            img = Image.open(self.root / "png" / rec.clip_id / f"img_{int(j) + 1:05d}.png").convert("RGB")
            w, h = img.size
            k = self.resize / min(w, h)
            img = img.resize((round(w * k), round(h * k)), Image.BILINEAR)
            if flip:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            x0, y0, side, _ = crop.box(img.size[1], img.size[0], scale, position)
            img = img.crop((x0, y0, x0 + side, y0 + side)).resize((self.size, self.size), Image.BILINEAR)
            out.append(TF.normalize(TF.to_tensor(img), self.mean, self.std))
        return {"rgb": torch.stack(out), "label": self.class_index[rec.label]}


def loader_rate(loader: DataLoader, min_clips: int, budget: float) -> tuple[float, dict[str, Any]]:
    """Clips/s a loader delivers over epochs, timed from its first batch (worker start-up excluded)."""
    first, count, t0, epoch = None, 0, 0.0, 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        for batch in loader:
            if first is None:
                first, t0 = batch, time.perf_counter()
                continue
            count += int(batch["label"].shape[0])
        epoch += 1
        elapsed = time.perf_counter() - t0
        if count >= min_clips or (count > 0 and elapsed > 4 * budget):
            return count / elapsed, first


def input_pipeline(sz: Sizes, device: torch.device, tmp: Path) -> tuple[Section, Path]:
    from egoattn.data.manifest import read_classes
    from egoattn.training.config import apply_overrides, load_recipe
    from egoattn.training.run import make_datamodule
    from egoattn.training.task import ActionRecognitionTask

    s = Section("Input pipeline: training DataLoader vs training step vs PNG loader")
    root = build_dataset(tmp / "data", sz.data_clips, sz.data_frames)
    recipe = apply_overrides(load_recipe("demo"), list(sz.recipe_overrides))
    d = recipe.data
    classes = read_classes(root / "classes.txt")
    torch.manual_seed(0)
    task = ActionRecognitionTask(recipe, classes)
    dm = make_datamodule(recipe, root, task.model)
    dm.setup("fit")
    # Training epochs of about 10 batches: each epoch restarts the workers' prefetch, so an epoch of 2-3
    # batches (32 clips) would time mostly that restart, not the clips/s of an epoch of real length.
    s.add("dataset", sz.data_clips, "clips", f"{sz.data_frames} frames of 171x128 JPEG in clip zips; recipe "
          f"'{recipe.name}': {d.num_frames} frames at {d.size}px, batch {d.batch_size}, {d.num_workers} workers, "
          f"{len(dm.train_set)} training clips an epoch; batches uint8, normalised on the device in the step")  # type: ignore[arg-type]
    # The reference loader: PNG per frame with PIL, same sampler, crop, batch and workers.
    png_set = PngClips(root, dm.train_set.records, classes, d.num_frames, d.size, d.resize, dm.mean, dm.std)  # type: ignore[union-attr]
    png_loader = DataLoader(png_set, batch_size=d.batch_size, shuffle=True, num_workers=d.num_workers,
                            persistent_workers=d.num_workers > 0,
                            worker_init_fn=one_thread_per_worker if d.num_workers > 0 else None,
                            multiprocessing_context=worker_context() if d.num_workers > 0 else None)
    # Rounds taking turns, best of each: a loader timed over about a second moves by 30 % from run to run.
    loaders = {"clips": dm.train_dataloader(), "png": png_loader}
    rates, first = {name: 0.0 for name in loaders}, {}
    for _ in range(sz.loader_rounds):
        for name, loader in loaders.items():
            r, first[name] = loader_rate(loader, sz.loader_min_clips, sz.budget)
            rates[name] = max(rates[name], r)
    del loaders, png_loader
    rate, png_rate, batch = rates["clips"], rates["png"], first["clips"]
    s.add("training DataLoader (ClipDataset)", rate, "clips/s", f"best of {sz.loader_rounds} rounds taking turns "
          "with the PNG loader")

    # (a) what one training step of the recipe consumes (data already in memory).
    task.to(device).train()
    opt = optimizer_of(task)
    dtype = torch.bfloat16 if recipe.train.precision.startswith("bf16") else torch.float32
    batch = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def step(b: dict[str, Any]) -> None:
        opt.zero_grad(set_to_none=True)
        b = dm.normalize(b)  # the uint8 batch -> float32 inputs on the device: part of what a step costs
        with autocast(device, dtype):
            losses, _ = task.compute_losses(b)
        task.total_loss(losses).backward()
        opt.step()

    n = int(batch["label"].shape[0])
    t_step = best_time(lambda: step(batch), device, repeat=3, budget=sz.budget)
    s.add("training step consumes", n / t_step, "clips/s", f"{t_step:.3f} s per step of {n} clips, uncached")
    with torch.no_grad():
        feats = task.model.encode_frames(dm.normalize(batch)["rgb"])
    cached = {"frame_features": feats, "label": batch["label"]}
    t_cached = best_time(lambda: step(cached), device, repeat=3, budget=sz.budget)
    s.add("cached training step consumes", n / t_cached, "clips/s", "from the feature cache (epochs 2+ of --cache-features)")

    s.add("PNG + PIL loader (reference way)", png_rate, "clips/s", f"best of {sz.loader_rounds} rounds")

    r1 = s.ratio("loader_vs_step", "DataLoader / training step consumption (clips/s)", rate * t_step / n,
                 op=">=", threshold=3.0)
    s.ratio("loader_vs_cached_step", "DataLoader / cached step consumption (clips/s)", rate * t_cached / n)
    r2 = s.ratio("loader_vs_png", "DataLoader / PNG+PIL loader (clips/s)", rate / png_rate, op=">=", threshold=3.0)
    if "MISS" in (r1.verdict, r2.verdict):
        ds = dm.train_set
        per_clip = len(ds) / max(1e-9, best_time(lambda: [ds[i] for i in range(len(ds))], device, 1, 1, 0))  # type: ignore[arg-type]
        s.note(f"input pipeline: ClipDataset alone in one process (no workers) gives {per_clip:.1f} clips/s; "
               "cProfile of its items: "
               + python_top_funcs(lambda: [ds[i] for i in range(min(len(ds), 8))]))  # type: ignore[index]
        s.note("PNG loader cProfile: " + python_top_funcs(lambda: [png_set[i] for i in range(min(len(png_set), 8))]))
    return s, root


# --- 4. Ego-RNN stage-1 step ------------------------------------------------------------------------


class RefConvLSTMCell(nn.Module):
    """The reference cell (Ego-RNN MyConvLSTMCell): 8 convolutions, conv_*_xx with bias, conv_*_hh without."""

    GATES = ("i", "f", "c", "o")

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        p = kernel_size // 2
        for g in self.GATES:
            setattr(self, f"conv_{g}_xx", nn.Conv2d(in_channels, hidden, kernel_size, padding=p))
            setattr(self, f"conv_{g}_hh", nn.Conv2d(hidden, hidden, kernel_size, padding=p, bias=False))

    @classmethod
    @torch.no_grad()
    def from_fused(cls, cell: nn.Module) -> "RefConvLSTMCell":
        """Same function as egoattn's fused cell (gate rows i, f, o, g; columns x then h)."""
        ref = cls(cell.in_channels, cell.hidden, cell.conv.kernel_size[0])
        w, b, H, C = cell.conv.weight, cell.conv.bias, cell.hidden, cell.in_channels
        for row, g in enumerate(("i", "f", "o", "c")):  # fused order i, f, o, g(=c tilde)
            rows = slice(row * H, (row + 1) * H)
            getattr(ref, f"conv_{g}_xx").weight.copy_(w[rows, :C])
            getattr(ref, f"conv_{g}_xx").bias.copy_(b[rows])
            getattr(ref, f"conv_{g}_hh").weight.copy_(w[rows, C:])
        return ref.to(w.device)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        if state is None:
            z = x.new_zeros(x.shape[0], self.hidden, x.shape[2], x.shape[3])
            state = (z, z)
        h, c = state
        it = torch.sigmoid(self.conv_i_xx(x) + self.conv_i_hh(h))
        ft = torch.sigmoid(self.conv_f_xx(x) + self.conv_f_hh(h))
        c_tilde = torch.tanh(self.conv_c_xx(x) + self.conv_c_hh(h))
        c = c * ft + it * c_tilde
        ot = torch.sigmoid(self.conv_o_xx(x) + self.conv_o_hh(h))
        return ot * torch.tanh(c), c


class ReferenceEgoRNN(nn.Module):
    """Ego-RNN built the reference way: the backbone called once per time step in a Python loop, CAM by
    sorting the ImageNet logits, the 8-convolution cell, average pool of the final cell state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone  # shared, frozen
        self.input_proj = copy.deepcopy(model.input_proj)
        self.cell = RefConvLSTMCell.from_fused(model.convlstm.cell)
        self.classifier = copy.deepcopy(model.classifier)

    def forward(self, rgb: Tensor) -> Tensor:
        state = None
        weight_softmax = self.backbone.fc.weight
        for t in range(rgb.shape[1]):
            out = self.backbone(rgb[:, t])
            logit, f_bn, f_pre = out["logits"], out["f_bn"], out["f_pre"]
            bz, nc, h, w = f_bn.shape
            _, idxs = logit.sort(1, True)
            cam = torch.bmm(weight_softmax[idxs[:, 0]].unsqueeze(1), f_bn.reshape(bz, nc, h * w))
            attention = F.softmax(cam.squeeze(1), dim=1).view(bz, 1, h, w)
            x = f_pre * attention.expand_as(f_pre)
            if self.input_proj is not None:
                x = self.input_proj(x)
            state = self.cell(x, state)
        return self.classifier(F.adaptive_avg_pool2d(state[1], 1).flatten(1))


def stage1(sz: Sizes, device: torch.device, peak: dict[str, float]) -> tuple[Section, Section]:
    from egoattn.models.attention import apply_attention, cam_attention
    from egoattn.training.config import apply_overrides, load_recipe
    from egoattn.training.features import CachedClips
    from egoattn.training.task import ActionRecognitionTask

    s = Section("Ego-RNN stage-1 training step (backbone frozen)")
    B, T, S, H = sz.s1_batch, sz.s1_frames, sz.s1_size, sz.s1_hidden
    recipe = apply_overrides(load_recipe("egornn_rgb_stage1"), [
        f"model.options.backbone={sz.s1_backbone}", "model.options.weights=none", f"model.options.hidden={H}",
        f"model.options.input_size={S}", f"data.batch_size={B}", f"data.num_frames={T}", f"data.size={S}"])
    classes = [f"a{i}" for i in range(61)]
    torch.manual_seed(0)
    task = ActionRecognitionTask(recipe, classes).to(device)
    task.train()
    model = task.model
    s.add("setting", B * T, "frames per step", f"{sz.s1_backbone}, {S}px, batch {B} x {T} frames, ConvLSTM {H}, "
          f"Adam on ConvLSTM + classifier")
    g = torch.Generator().manual_seed(0)
    rgb = torch.randn(B, T, 3, S, S, generator=g).to(device)
    label = torch.randint(0, len(classes), (B,), generator=g).to(device)
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    reference = ReferenceEgoRNN(model).to(device).train()
    reference.backbone.eval()

    def restore() -> torch.optim.Optimizer:
        model.load_state_dict(init)
        return optimizer_of(task)

    def task_step(opt: torch.optim.Optimizer, batch: dict[str, Any], losses: list[float],
                  dtype: torch.dtype = torch.float32) -> None:
        torch.manual_seed(0)  # the classifier's dropout draws the same mask in every variant
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = task.total_loss(task.compute_losses(batch)[0])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))

    # Features cached after the first epoch: the frozen part once per clip.
    with torch.no_grad():
        t0 = time.perf_counter()
        feats = model.encode_frames(rgb)
        sync(device)
        t_encode = time.perf_counter() - t0
    s.add("encode_frames (first epoch: fill the cache)", B * T / t_encode, "frames/s", f"{t_encode:.2f} s")

    # Cached step: batch from the cache's DataLoader (what CachedFeatureDataModule serves) + the step.
    items = [{"frame_features": {k: v[i].cpu() for k, v in feats.items()}, "label": int(label[i]), "clip_id": str(i)}
             for i in range(B)]
    cache_loader = DataLoader(CachedClips([items]), batch_size=B, shuffle=False)
    cached_opt = restore()
    cached_losses: list[float] = []

    def cached_step() -> None:
        b = next(iter(cache_loader))
        b = {"frame_features": {k: v.to(device) for k, v in b["frame_features"].items()}, "label": b["label"].to(device)}
        task_step(cached_opt, b, cached_losses)

    # The trainable part alone: ConvLSTM + classifier forward/backward + Adam on ready attended inputs.
    with torch.no_grad():
        att, _, _ = cam_attention(feats["f_bn"].flatten(0, 1), model.backbone.fc)
        x = apply_attention(feats["f_pre"].flatten(0, 1), att)
        if model.input_proj is not None:
            x = model.input_proj(x)
        x = x.view(B, T, *x.shape[1:])
    alone_opt = optimizer_of(task)  # its own Adam state, on the same (restored) weights

    def trainable_step() -> None:
        torch.manual_seed(0)
        alone_opt.zero_grad(set_to_none=True)
        _, _, (_, c) = model.convlstm(x)
        F.cross_entropy(model.classifier(c.mean(dim=(2, 3))), label).backward()
        alone_opt.step()

    # Both sides of the ratio interleaved, best of 4 each: the first step of each allocates Adam's state,
    # and taking turns keeps a slow stretch of the shared 2-core machine off one side of a ratio of two
    # ~2 s steps. Both optimisers update the same weights, which changes neither step's cost.
    steps = 2 if sz.quick else 4
    times = best_times_interleaved({"cached": cached_step, "alone": trainable_step}, device, rounds=steps,
                                   budget=2 * steps * sz.budget, warmup=0)
    t_cached, t_alone = times["cached"], times["alone"]

    # Uncached step, ours: batched backbone + fused ConvLSTM.
    opt = restore()
    uncached_losses: list[float] = []
    t_uncached = best_time(lambda: task_step(opt, {"rgb": rgb, "label": label}, uncached_losses), device,
                           repeat=1, budget=sz.budget, warmup=0)

    # The reference way.
    ref_opt = torch.optim.Adam([p for p in reference.parameters() if p.requires_grad], lr=recipe.optim.lr,
                               weight_decay=recipe.optim.weight_decay, eps=recipe.optim.eps)
    ref_losses: list[float] = []

    def ref_step() -> None:
        torch.manual_seed(0)
        ref_opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(reference(rgb), label)
        loss.backward()
        ref_opt.step()
        ref_losses.append(float(loss.detach()))

    t_ref = best_time(ref_step, device, repeat=1, budget=sz.budget, warmup=0)

    for name, t in (("reference step (per-frame backbone loop, 8-conv ConvLSTM, float32)", t_ref),
                    ("egoattn uncached step (batched backbone, fused ConvLSTM, float32)", t_uncached),
                    ("egoattn cached step (features cached after epoch 1)", t_cached),
                    ("trainable part alone (ConvLSTM + classifier + Adam)", t_alone)):
        s.add(name, t, "s/step", f"{B / t:.2f} clips/s")
    s.ratio("stage1_uncached_speedup", "reference step / egoattn uncached step (time)", t_ref / t_uncached)
    s.ratio("stage1_cached_speedup", "reference step / egoattn cached step (time)", t_ref / t_cached)
    r = s.ratio("stage1_cached_overhead", "cached step / trainable part alone (time)", t_cached / t_alone,
                op="<=", threshold=1.1)
    if r.verdict == "MISS":
        cached_opt = restore()
        s.note("cached step, torch.profiler: " + torch_top_ops(cached_step))
    diff = abs(cached_losses[0] - uncached_losses[0])
    s.add("loss at init: cached / uncached / reference", cached_losses[0], "",
          f"{cached_losses[0]:.7f} / {uncached_losses[0]:.7f} / {ref_losses[0]:.7f}")
    s.ratio("cached_loss_diff", "abs(cached loss - uncached loss) at the same weights and dropout mask", diff, "",
            op="<=", threshold=1e-5)
    s.ratio("reference_loss_diff", "abs(reference-way loss - egoattn loss) (same function, other kernels)",
            abs(ref_losses[0] - uncached_losses[0]), "")

    # bfloat16 autocast and channels-last on the backbone-bound work (the frozen forward).
    n = _frames_for_budget(model.backbone, rgb.flatten(0, 1), device, sz.budget)
    frames = rgb.flatten(0, 1)[:n]
    rates: dict[str, float] = {}
    variants = {"float32": (torch.float32, False), "float32 + channels-last": (torch.float32, True),
                "bf16 autocast": (torch.bfloat16, False), "bf16 autocast + channels-last": (torch.bfloat16, True)}
    nets = {False: model.backbone, True: copy.deepcopy(model.backbone).to(memory_format=torch.channels_last)}
    inputs = {False: frames, True: frames.contiguous(memory_format=torch.channels_last)}

    def forward(dtype: torch.dtype, cl: bool) -> Callable[[], None]:
        def go() -> None:
            with torch.no_grad(), autocast(device, dtype):
                nets[cl](inputs[cl])
        return go

    # Interleaved (see best_times_interleaved): the 2x target compares variants timed seconds apart.
    times = best_times_interleaved({name: forward(*v) for name, v in variants.items()}, device, rounds=2,
                                   budget=4 * sz.budget, warmup=0)
    for name, t in times.items():
        rates[name] = n / t
        s.add(f"backbone forward {name}", rates[name], "frames/s", f"{n} frames per call")
    speedup = rates["bf16 autocast + channels-last"] / rates["float32"]
    r = s.ratio("bf16_channels_last", "backbone bf16 + channels-last / float32 (frames/s)", speedup,
                op=">=", threshold=2.0)
    if r.verdict == "MISS":
        with torch.no_grad(), autocast(device, torch.bfloat16):
            inp = frames[:1].contiguous(memory_format=torch.channels_last)
            s.note(f"bf16 backbone forward ({'native' if native_bf16() else 'no native'} bf16 on this CPU), "
                   "torch.profiler: " + torch_top_ops(lambda: nets[True](inp)))
    if speedup > 1.05 or sz.quick:  # where it helps (always in --quick, to keep the path tested)
        cl_task_model = model.to(memory_format=torch.channels_last)
        opt = restore()
        bf_losses: list[float] = []
        rgb_cl = rgb
        t_bf = best_time(lambda: task_step(opt, {"rgb": rgb_cl, "label": label}, bf_losses, torch.bfloat16),
                         device, repeat=1, budget=sz.budget, warmup=0)
        cl_task_model.to(memory_format=torch.contiguous_format)
        s.add("egoattn uncached step, bf16 autocast + channels-last", t_bf, "s/step", f"loss {bf_losses[0]:.5f}")
        s.ratio("stage1_bf16_step", "float32 uncached step / bf16 + channels-last step (time)", t_uncached / t_bf)

    convlstm = convlstm_section(sz, device, peak, model, B, T, x)
    return s, convlstm


def _frames_for_budget(net: nn.Module, frames: Tensor, device: torch.device, budget: float) -> int:
    """How many frames the slowest variant (bf16 + channels-last) runs in about one budget."""
    one = frames[:1].contiguous(memory_format=torch.channels_last)
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(device, torch.bfloat16):
        t1 = best_time(lambda: cl(one), device, repeat=1, budget=budget, warmup=1)
    return int(max(1, min(frames.shape[0], budget / t1)))


# --- 5. ConvLSTM GFLOP/s ----------------------------------------------------------------------------


def convlstm_section(sz: Sizes, device: torch.device, peak: dict[str, float], model: nn.Module, B: int, T: int,
                     x: Tensor) -> Section:
    """Achieved GFLOP/s of the fused ConvLSTM as a share of the matmul peak at its precision."""
    s = Section("ConvLSTM achieved GFLOP/s vs matmul peak")
    cin, hidden, (h, w) = x.shape[2], model.convlstm.hidden, x.shape[3:]
    s.add("ConvLSTM", hidden, "hidden", f"input {cin} x {h} x {w}, batch {B}, up to {T} steps, 3x3 fused gate conv")
    for name, dtype in PRECISIONS.items():
        cl = dtype == torch.bfloat16
        net = copy.deepcopy(model.convlstm).requires_grad_(True)
        inp = x
        if cl:
            net = net.to(memory_format=torch.channels_last)
            inp = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)  # each x[:, t] channels-last

        def fwd_bwd(steps: int) -> None:
            net.zero_grad(set_to_none=True)
            with autocast(device, dtype):
                _, _, (hT, cT) = net(inp[:, :steps])
            (hT.float().sum() + cT.float().sum()).backward()

        t1 = best_time(lambda: fwd_bwd(1), device, repeat=1, budget=sz.budget, warmup=1)
        steps = int(max(1, min(T, sz.budget / (2 * t1))))
        t = best_time(lambda: fwd_bwd(steps), device, repeat=2, budget=sz.budget, warmup=0)
        flops = convlstm_flops(B, steps, cin, hidden, h, w)
        gf_train = 3 * flops / t / 1e9
        with torch.inference_mode(), autocast(device, dtype):
            tf = best_time(lambda: net(inp[:, :steps]), device, repeat=2, budget=sz.budget, warmup=0)
        gf_fwd = flops / tf / 1e9
        extra = " + channels-last" if cl else ""
        s.add(f"ConvLSTM forward+backward {name}{extra}", gf_train, "GFLOP/s", f"{steps} steps, 3x forward FLOPs")
        executed = convlstm_executed_flops(B, steps, cin, hidden, h, w, input_grad=inp.requires_grad)
        s.add(f"ConvLSTM forward+backward {name}{extra}, FLOPs executed", executed / t / 1e9, "GFLOP/s",
              f"{100 * executed / (3 * flops):.0f}% of the nominal count (no h part at the zero state, no input "
              f"gradient): {100 * executed / t / 1e9 / peak[name]:.0f}% of peak")
        s.add(f"ConvLSTM forward {name}{extra}", gf_fwd, "GFLOP/s")
        s.ratio(f"convlstm_fwd_share_{name}", f"ConvLSTM forward / matmul peak {name}", 100 * gf_fwd / peak[name], "%")
        # Without bf16 instructions the bf16 "peak" is an emulated fallback: a share of it says nothing,
        # so that target is reported without a verdict (n/a) rather than as a meaningless PASS.
        emulated = name == "bfloat16" and device.type == "cpu" and not native_bf16()
        r = s.ratio(f"convlstm_share_{name}", f"ConvLSTM forward+backward / matmul peak {name}"
                    + (" (bf16 emulated on this CPU: no target)" if emulated else ""),
                    100 * gf_train / peak[name], "%", op=None if emulated else ">=",
                    threshold=None if emulated else 70.0)
        if r.verdict == "MISS":
            s.note(f"ConvLSTM {name} forward+backward, torch.profiler: " + torch_top_ops(lambda: fwd_bwd(1)))
    return s


# --- 6. optical flow --------------------------------------------------------------------------------


def optical_flow(sz: Sizes, tmp: Path) -> Section:
    from egoattn.data.flow import compute_flow, endpoint_error
    from egoattn.data.video import read_frames, write_video

    s = Section("Optical flow: pairs/s at 340x256 and endpoint error against TV-L1")
    video = DEMO_VIDEO
    if not video.is_file():
        video = tmp / "flow_synth.mp4"
        write_video(video, synthetic_frames(64, 256, 340), fps=28.0, x264_preset="veryfast")
    most = max(n for _, n in sz.flow_pairs)
    frames = read_frames(video, list(range(most + 1)))
    h, w = frames.shape[1:3]
    rates: dict[str, float] = {}
    for method, pairs in sz.flow_pairs:
        compute_flow(frames[0][:32, :32], frames[1][:32, :32], method)  # creates the OpenCV object
        done, t0 = 0, time.perf_counter()
        for i in range(pairs):
            compute_flow(frames[i], frames[i + 1], method)
            done += 1
            if time.perf_counter() - t0 > 2 * sz.budget:
                break
        rates[method] = done / (time.perf_counter() - t0)
        s.add(f"{method}", rates[method], "pairs/s", f"{w}x{h}, {done} pairs, OpenCV threads {cv2.getNumThreads()}")
    r = s.ratio("dis_pairs", "DIS pairs/s", rates["dis"], "", op=">=", threshold=100.0)
    if r.verdict == "MISS":
        s.note("DIS: " + python_top_funcs(lambda: [compute_flow(frames[i], frames[i + 1], "dis") for i in range(8)]))
    s.ratio("dis_vs_tvl1_speed", "DIS / TV-L1 (pairs/s)", rates["dis"] / rates["tvl1"])

    paths = sorted(REAL_FRAMES.glob("img_*.jpg"))
    if len(paths) < 2:
        s.note(f"endpoint error skipped: no frames in {REAL_FRAMES}")
        return s
    imgs = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths[: sz.epe_pairs + 1]]
    errors: dict[str, list[float]] = {"dis": [], "farneback": []}
    magnitude = []
    for a, b in zip(imgs[:-1], imgs[1:]):
        ref = compute_flow(a, b, "tvl1")
        magnitude.append(float(np.linalg.norm(ref, axis=-1).mean()))
        for method in errors:
            errors[method].append(endpoint_error(compute_flow(a, b, method), ref))
    size = f"{imgs[0].shape[1]}x{imgs[0].shape[0]}"
    s.add("TV-L1 mean flow magnitude", float(np.mean(magnitude)), "px", f"{len(magnitude)} pairs of {paths[0].parent}, {size}")
    for method, errs in errors.items():
        s.add(f"endpoint error {method} vs TV-L1", float(np.mean(errs)), "px")
    return s


# --- 7. peak memory ---------------------------------------------------------------------------------


def _child(args: list[str], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE / "bench_child.py"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory(sz: Sizes, data: Path, tmp: Path) -> Section:
    from egoattn.data.video import write_video

    s = Section("Peak memory (max RSS, each in its own process)")
    quick = ["--quick"] if sz.quick else []
    try:
        train = _child(["train", str(data), str(tmp / "run"), *quick], timeout=900)
        s.add("train demo recipe, main process", train["maxrss_mb"], "MB",
              f"{train['what']}, {train['seconds']:.0f} s; largest DataLoader worker "
              f"{train['children_maxrss_mb']:.0f} MB incl. pages shared with the main process")
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        s.note(f"FAILED: training memory: {e}")
    w, h, fps = sz.memory_video
    peaks = []
    for minutes in sz.memory_minutes:
        video = tmp / f"long_{minutes:g}min.mp4"
        n = int(round(minutes * 60 * fps))
        write_video(video, long_video_frames(n, h, w), fps=fps, x264_preset="ultrafast")
        out = _child(["predict", str(video), *quick], timeout=900)
        peaks.append(out["maxrss_mb"])
        s.add(f"predict {minutes:g} min video", out["maxrss_mb"], "MB",
              f"{w}x{h} @ {fps:g} fps, {out['frames']} frames, {out['windows']} windows, {out['seconds']:.0f} s")
        video.unlink()
    s.ratio("predict_memory", f"predict peak RSS {sz.memory_minutes[1]:g} min / {sz.memory_minutes[0]:g} min",
            peaks[1] / peaks[0], op="<=", threshold=1.2)
    return s
