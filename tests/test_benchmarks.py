"""Benchmark suite: its helpers (targets, FLOP count, the reference-way model) and a --quick smoke run."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_sections as bs  # noqa: E402
import bench_util  # noqa: E402
from bench_util import Ratio, verdict  # noqa: E402

from egoattn.models.convlstm import ConvLSTMCell  # noqa: E402
from egoattn.models.registry import create_model  # noqa: E402

#: Every ratio with a target; the smoke run must print each with PASS or MISS.
TARGET_KEYS = ("inference_e2e", "loader_vs_step", "loader_vs_png", "stage1_cached_overhead", "cached_loss_diff",
               "bf16_channels_last", "convlstm_share_float32", "convlstm_share_bfloat16", "dis_pairs",
               "predict_memory")


def test_verdict_applies_the_target_direction():
    assert verdict(0.8, ">=", 0.8) == "PASS"
    assert verdict(0.79, ">=", 0.8) == "MISS"
    assert verdict(1.1, "<=", 1.1) == "PASS"
    assert verdict(1.2, "<=", 1.1) == "MISS"
    assert verdict(float("nan"), ">=", 0.0) == "MISS"
    assert verdict(5.0, None, None) is None
    with pytest.raises(ValueError):
        verdict(1.0, ">", 0.5)
    line = Ratio("dis_pairs", "DIS pairs/s", 150.0, "", ">=", 100.0).text()
    assert line.startswith("ratio dis_pairs: 150") and line.endswith("PASS")


def test_peak_kernels_compute_the_products_their_flop_count_assumes():
    """Each peak kernel is an n x n x n product: 1x1 = the matmul of its weight and input; the 3x3
    convolution has (n / 9) * 9 inputs per output, and FLOPs are counted from those shapes."""
    kernels = bs._square_products(torch.device("cpu"), torch.float32)
    assert kernels["torch.matmul"](80)().shape == (80, 80) and bs._product_flops("torch.matmul", 80) == 2 * 80**3
    if "oneDNN 1x1 convolution" in kernels:
        for kernel, inputs in (("oneDNN 1x1 convolution", 80), ("oneDNN 3x3 convolution", 9 * (80 // 9))):
            out = kernels[kernel](80)()
            positions = out[0, 0].numel()  # 9 x 8: n rounded to a rectangle
            assert out.shape[1] == 80 and positions == 72
            assert bs._product_flops(kernel, 80) == 2 * 80 * inputs * positions


def test_interleaved_timing_takes_turns_and_keeps_each_best():
    order: list[str] = []
    times = bench_util.best_times_interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                                              torch.device("cpu"), rounds=3, budget=60.0, warmup=1)
    assert order == ["a", "b"] + ["a", "b"] * 3
    assert set(times) == {"a", "b"} and all(0 <= t < 1 for t in times.values())


def test_convlstm_flops_counts_the_fused_convolution():
    # Reference size: 512 in, 512 hidden, 7x7, batch 4, 16 steps.
    assert bs.convlstm_flops(4, 16, 512, 512, 7, 7) == 2 * 9 * 1024 * 2048 * 49 * 64
    # Against the convolution itself: MACs of Conv2d(Cin + H -> 4H, 3x3, padding 1) on h x w, times 2.
    cin, hidden, h, w = 5, 3, 4, 6
    macs = (cin + hidden) * 9 * (4 * hidden) * h * w
    assert bs.convlstm_flops(1, 1, cin, hidden, h, w) == 2 * macs


def test_convlstm_executed_flops_count_what_the_sequence_skips():
    cin, hidden, h, w = 5, 3, 4, 6
    unit = 2 * 9 * 4 * hidden * h * w
    # One step from the zero state: only the x part, forward + weight gradient, no input gradient.
    assert bs.convlstm_executed_flops(1, 1, cin, hidden, h, w) == 2 * cin * unit
    # With every part needed, the count is the nominal 3x forward less the zero-state h part (3 products).
    full = bs.convlstm_executed_flops(2, 4, cin, hidden, h, w, input_grad=True)
    assert full == 3 * bs.convlstm_flops(2, 4, cin, hidden, h, w) - 3 * 2 * hidden * unit


def test_reference_cell_is_the_fused_cell():
    torch.manual_seed(0)
    fused = ConvLSTMCell(6, 4)
    with torch.no_grad():
        fused.conv.bias.normal_()  # non-zero bias, so the gate order of the bias is checked too
    ref = bs.RefConvLSTMCell.from_fused(fused)
    x = torch.randn(2, 6, 5, 5)
    state = (torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5))
    for a, b in zip(fused(x, state), ref(x, state)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    h0, c0 = ref(x, None)
    torch.testing.assert_close(h0, fused(x)[0], rtol=1e-5, atol=1e-6)


def test_reference_model_gives_the_same_logits():
    torch.manual_seed(0)
    model = create_model("egornn", 5, backbone="resnet18", weights="none", hidden=8, input_size=64).eval()
    ref = bs.ReferenceEgoRNN(model).eval()
    rgb = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ref(rgb), model(rgb=rgb)["logits"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_quick_run_prints_every_target(tmp_path):
    out = tmp_path / "BENCH.md"
    proc = subprocess.run([sys.executable, str(BENCH / "run.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ratio ")]
    for key in TARGET_KEYS:
        mine = [line for line in lines if line.startswith(f"ratio {key}:")]
        assert mine, f"no ratio line for {key}"
        emulated_bf16 = "bf16 emulated on this CPU: no target" in mine[-1]  # no verdict without native bf16
        assert emulated_bf16 or mine[-1].endswith(("PASS", "MISS")), mine[-1]
        value = float(mine[-1].split(":", 1)[1].split()[0].rstrip("x%"))
        assert math.isfinite(value) and value >= 0
    report = out.read_text()
    assert "Machine:" in report and "torch" in report and "## Targets" in report
    assert report.count("| PASS |") + report.count("| MISS |") >= len(TARGET_KEYS) - 1
