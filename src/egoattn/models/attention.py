"""Ego-RNN spatial attention: the class activation map (CAM) of the frame's own ImageNet prediction.

c = argmax of the frame's 1000-way ImageNet logits (an object class, not an action class);
cam(p) = sum_i W_fc[c, i] * f_bn[i, p]; a = softmax of cam over the h*w locations; x = f_pre * a.

The fc passed in is the *current* ImageNet fc: it is trainable in stage 2 and gets its gradient only
through this path (the argmax itself has no gradient).

The STANet channel-weighted variant (models.md section 5) is not here yet; it belongs with
``models/stanet.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def class_activation_map(features: Tensor, fc_weight: Tensor, class_idx: Tensor) -> Tensor:
    """features (N, C, h, w), fc_weight (K, C), class_idx (N,) -> cam (N, h, w)."""
    return torch.einsum("nc,nchw->nhw", fc_weight[class_idx], features)


def cam_attention(f_bn: Tensor, fc: nn.Linear) -> tuple[Tensor, Tensor, Tensor]:
    """Ego-RNN attention of each frame: (attention (N, h, w) summing to 1, cam (N, h, w), class (N,))."""
    logits = fc(f_bn.mean(dim=(2, 3)))
    class_idx = logits.argmax(dim=1)
    cam = class_activation_map(f_bn, fc.weight, class_idx)
    attention = torch.softmax(cam.flatten(1), dim=1).view_as(cam)
    return attention, cam, class_idx


def apply_attention(features: Tensor, attention: Tensor) -> Tensor:
    """features (N, C, h, w) * attention (N, h, w), broadcast over channels."""
    return features * attention.unsqueeze(1)
