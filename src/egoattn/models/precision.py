"""Where a model keeps float32 under bfloat16 / float16 autocast.

Autocast runs convolutions and matrix products in the reduced precision and leaves elementwise work in
the dtype it is given. A value that accumulates (a recurrent cell state) or a softmax over values that
differ by little (an attention map) loses information in bfloat16's 8 significant bits, so the models
compute those in float32 (:func:`full_precision`), as cuDNN's half-precision LSTMs do for their states.
"""

from __future__ import annotations

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
    dtype = torch.float16 if precision == "16-mixed" and device_type != "cpu" else torch.bfloat16
    return torch.autocast(device_type, dtype=dtype, enabled=precision != "32")
