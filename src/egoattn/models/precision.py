"""Where a model keeps float32 under bfloat16 / float16 autocast.

Autocast runs convolutions and matrix products in the reduced precision and leaves elementwise work in
the dtype it is given. A value that accumulates (a recurrent cell state) or a softmax over values that
differ by little (an attention map) loses information in bfloat16's 8 significant bits, so the models
compute those in float32 (:func:`full_precision`), as cuDNN's half-precision LSTMs do for their states.

:func:`autocast_at` is the autocast context of a precision name (evaluate and predict's ``--precision``),
and :func:`warn_if_emulated` says when a CPU without bfloat16 instructions would make it slower.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import get_args

import torch
from torch import Tensor

from egoattn.errors import ConfigError
from egoattn.training.config import Precision

REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def full_precision(t: Tensor) -> Tensor:
    """A bfloat16 / float16 tensor as float32; float32 and float64 pass unchanged."""
    return t.float() if t.dtype in REDUCED_PRECISION else t


def autocast_at(device: torch.device | str, precision: str) -> torch.autocast:
    """The autocast context that runs a model at `precision`: "32" turns autocast off (float32),
    "bf16-mixed" is bfloat16, and "16-mixed" float16 on a GPU but bfloat16 on the CPU (as training maps it)."""
    if precision not in get_args(Precision):
        raise ConfigError(f"precision must be one of {', '.join(get_args(Precision))}; got {precision!r}")
    device_type = torch.device(device).type
    warn_if_emulated(device_type, precision)
    dtype = torch.float16 if precision == "16-mixed" and device_type != "cpu" else torch.bfloat16
    return torch.autocast(device_type, dtype=dtype, enabled=precision != "32")


@functools.cache
def cpu_bfloat16() -> bool | None:
    """Whether this CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX, Arm's BF16 extension), from
    Linux's /proc/cpuinfo; None where that file does not say."""
    try:
        return bfloat16_in_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def bfloat16_in_cpuinfo(text: str) -> bool | None:
    """The bfloat16 flag of a /proc/cpuinfo text (x86 "flags", Arm "Features"); None without either line."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return bool(set(value.split()) & {"avx512_bf16", "amx_bf16", "bf16"})
    return None


def warn_if_emulated(device: torch.device | str, precision: str) -> None:
    """Warn when `precision` asks for bfloat16 on a CPU that would emulate it: oneDNN's fallback runs the
    backbones at 0.43-0.50x their float32 speed (the 2-core Intel Xeon of BENCHMARKS.md)."""
    if precision != "32" and torch.device(device).type == "cpu" and cpu_bfloat16() is False:
        _warn_emulated(precision)


@functools.cache  # once per process, however many places ask
def _warn_emulated(precision: str) -> None:
    warnings.warn(f"precision {precision}: this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16), "
                  "so bfloat16 is emulated and runs slower than float32 (precision 32)", stacklevel=4)
