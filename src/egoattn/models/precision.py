"""Where a model keeps float32 under bfloat16 / float16 autocast.

Autocast runs convolutions and matrix products in the reduced precision and leaves elementwise work in
the dtype it is given. A value that accumulates (a recurrent cell state) or a softmax over values that
differ by little (an attention map) loses information in bfloat16's 8 significant bits, so the models
compute those in float32 (:func:`full_precision`), as cuDNN's half-precision LSTMs do for their states.
"""

from __future__ import annotations

import torch
from torch import Tensor

REDUCED_PRECISION = (torch.bfloat16, torch.float16)


def full_precision(t: Tensor) -> Tensor:
    """A bfloat16 / float16 tensor as float32; float32 and float64 pass unchanged."""
    return t.float() if t.dtype in REDUCED_PRECISION else t
