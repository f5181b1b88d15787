"""Flush denormal floats to zero on the CPU (FTZ/DAZ), in every egoattn process.

Values below float32's normal range (about 1e-38) appear in training (decaying ConvLSTM states, small
gradients), and on Intel CPUs every product that touches one takes a slow microcode path: on the
2-core Intel Xeon of 2026-12-07 the benchmark's ConvLSTM forward + backward ran at 25 GFLOP/s with
denormals and 235 GFLOP/s flushed, and its training step took 22.7 s instead of 1.6 s. Flushing changes
only values smaller than float32 can hold at full precision. Threads created afterwards (torch's
OpenMP pool) inherit the setting, so call it at process start; worker processes call it in their
initialiser (egoattn.data.workers).
"""

from __future__ import annotations

import torch


def flush_denormals() -> bool:
    """Turn on flush-to-zero for this thread and the threads it starts; False where the CPU cannot."""
    return bool(torch.set_flush_denormal(True))
