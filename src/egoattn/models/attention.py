"""Ego-RNN spatial attention: the class activation map (CAM) of the frame's own ImageNet prediction.

c = argmax of the frame's 1000-way ImageNet logits (an object class, not an action class);
cam(p) = sum_i W_fc[c, i] * f_bn[i, p]; a = softmax of cam over the h*w locations; x = f_pre * a.

The fc passed in is the *current* ImageNet fc: it is trainable in stage 2 and gets its gradient only
through this path (the argmax itself has no gradient).

Under bfloat16 / float16 autocast the CAM and its softmax are computed in float32: the attention is a
softmax over a few dozen locations of values that differ by little, and bfloat16 keeps 8 significant
bits; its cost is a small share of the backbone's.

The STANet channel-weighted variant (models.md section 5) is not here yet; it belongs with
``models/stanet.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from egoattn.models.precision import full_precision


def class_activation_map(features: Tensor, fc_weight: Tensor, class_idx: Tensor) -> Tensor:
    """features (N, C, h, w), fc_weight (K, C), class_idx (N,) -> cam (N, h, w)."""
    return torch.einsum("nc,nchw->nhw", fc_weight[class_idx], features)


def cam_attention(f_bn: Tensor, fc: nn.Linear) -> tuple[Tensor, Tensor, Tensor]:
    """Ego-RNN attention of each frame: (attention (N, h, w) summing to 1, cam (N, h, w), class (N,)),
    in float32 under autocast."""
    with torch.autocast(f_bn.device.type, enabled=False):
        f_bn = full_precision(f_bn)
        logits = fc(f_bn.mean(dim=(2, 3)))
        class_idx = logits.argmax(dim=1)
        cam = class_activation_map(f_bn, fc.weight, class_idx)
        attention = torch.softmax(cam.flatten(1), dim=1).view_as(cam)
    return attention, cam, class_idx


def apply_attention(features: Tensor, attention: Tensor) -> Tensor:
    """features (N, C, h, w) * attention (N, h, w), broadcast over channels."""
    return features * attention.unsqueeze(1)
