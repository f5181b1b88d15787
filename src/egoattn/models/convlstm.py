"""ConvLSTM (Ego-RNN): gates from one fused convolution over [x, h].

The reference uses 8 convolutions per cell, ``conv_x(x)`` (with bias) + ``conv_h(h)`` (no bias) for each
of i, f, o and g. One convolution over the concatenation [x, h] with ``4 * hidden`` output channels is the
same function (the h part of its bias is the x part's bias) and runs as a single kernel. The output
channels are laid out in gate order **i, f, o, g**, each ``hidden`` wide; the first ``in_channels``
input channels are the x part and the last ``hidden`` the h part.

c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t); sigmoid for i, f, o, tanh for g; no peepholes, no
forget-gate bias offset, zero initial state. Init as the reference: Xavier-normal per gate and per
x / h part (i.e. with the fans of the separate convolutions), zero bias.

Under bfloat16 / float16 autocast the convolutions and products run in the reduced precision, but the
gate nonlinearities and the states h, c stay float32 (egoattn.models.precision): c accumulates over every
step, and in bfloat16 (8 significant bits) each step's f * c + i * g would round it again.

:class:`ConvLSTM` runs the same function over a sequence on the same weight: the x part of all T steps
in one convolution (x does not depend on the recurrence), then per step only the h part (skipped at
the zero initial state) as a matrix product (im2col + GEMM). Measured on the 2-core AMD CPU (B 4 x 16
steps, 512 -> 512 channels, 7x7): oneDNN's convolution computes the x part about 1.4x faster than
im2col + MKL's GEMM, but its weight gradient is slower than the product, so the x part's backward is
im2col + GEMM (:class:`InputGates`); per step, with a 7x7 map, the product beats the convolution both
ways. Against all-GEMM, interleaved on that CPU with freed memory kept (as `egoattn` runs, see
egoattn.memory): inference 0.85x the time (0.78x at the demo's 5x5, 64 channels; 0.85-0.91x at batch
1, 4x4, 128), forward + backward unchanged within the noise (0.95-1.07x), and the backward keeps x,
not its 9x larger im2col. Autograd computes no gradient for an input that needs none (frozen
features). Results equal the fused convolution's up to float32 summation order (about 1e-6 relative).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egoattn.models.precision import full_precision

GATES = ("i", "f", "o", "g")


class ConvLSTMCell(nn.Module):
    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.hidden = hidden
        self.conv = nn.Conv2d(in_channels + hidden, 4 * hidden, kernel_size, padding=kernel_size // 2, bias=True)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        w = self.conv.weight
        for g in range(4):
            rows = slice(g * self.hidden, (g + 1) * self.hidden)
            nn.init.xavier_normal_(w[rows, : self.in_channels])  # fans of the separate conv_x
            nn.init.xavier_normal_(w[rows, self.in_channels:])  # fans of the separate conv_h
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """One step: x (N, Cin, h, w), state (h, c) each (N, hidden, h, w) or None (zeros) -> (h, c)."""
        if state is None:
            zeros = x.new_zeros(x.shape[0], self.hidden, x.shape[2], x.shape[3])
            state = (zeros, zeros)
        h_prev, c_prev = state
        i, f, o, g = full_precision(self.conv(torch.cat([x, h_prev], dim=1))).chunk(4, dim=1)
        c = torch.sigmoid(f) * full_precision(c_prev) + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


def columns(z: Tensor, kernel_size: int, padding: int) -> Tensor:
    """im2col: (N, C, h, w) -> (C * k * k, N * h * w), positions ordered (n, y, x)."""
    cols = F.unfold(z, kernel_size, padding=padding)
    return cols.transpose(0, 1).reshape(cols.shape[1], -1)


class InputGates(torch.autograd.Function):
    """``conv2d(x, weight, bias)`` with the weight gradient as im2col + one GEMM (see the module doc).

    Inputs must share one dtype (the caller applies autocast's cast), so the backward's product is in
    the forward's precision.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, padding: int) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_rows = grad.transpose(0, 1).reshape(weight.shape[0], -1)  # (out, N * h * w), (n, y, x) order
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(x.shape, weight, grad, padding=ctx.padding)
        if ctx.needs_input_grad[1]:
            grad_w = (grad_rows @ columns(x, weight.shape[-1], ctx.padding).t()).view_as(weight)
        if ctx.needs_input_grad[2]:
            grad_b = grad_rows.sum(1)
        return grad_x, grad_w, grad_b, None


def input_gates(x: Tensor, weight: Tensor, bias: Tensor, padding: int) -> Tensor:
    """The x part of the gates, (N, Cin, h, w) -> (N, 4 * hidden, h, w), through :class:`InputGates`
    when a gradient is needed, in autocast's dtype when autocast is on."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight, bias = x.to(dtype), weight.to(dtype), bias.to(dtype)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or bias.requires_grad):
        return InputGates.apply(x, weight, bias, padding)
    return F.conv2d(x, weight, bias, padding=padding)


class ConvLSTM(nn.Module):
    """Runs a :class:`ConvLSTMCell` over time (dimension 1): the x part of all steps as one convolution,
    the h part per step as a matrix product (see the module doc).

    Internally gates and states are laid out (channels, B * h * w): each product's weight gradient then
    comes out in the weight's own row-major layout (no transposing copies in the backward pass).
    """

    def __init__(self, in_channels: int, hidden: int = 512, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = ConvLSTMCell(in_channels, hidden, kernel_size)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, C, h, w) -> (all h (B, T, hidden, h, w), all c (same), final (h_T, c_T))."""
        cell, hidden = self.cell, self.hidden
        if x.dim() != 5 or x.shape[2] != cell.in_channels:
            raise ValueError(f"ConvLSTM expects x of shape (B, T, {cell.in_channels}, h, w), got {tuple(x.shape)}")
        batch, steps, _, height, width = x.shape
        k, pad = cell.conv.kernel_size[0], cell.conv.padding[0]
        positions = batch * height * width
        w_x = cell.conv.weight[:, : cell.in_channels]
        w_h = cell.conv.weight.flatten(1)[:, cell.in_channels * k * k:]

        def to_layout(z: Tensor) -> Tensor:  # (B, hidden, h, w) -> (hidden, B * h * w)
            return z.transpose(0, 1).reshape(hidden, positions)

        def from_layout(z: Tensor) -> Tensor:  # (..., hidden, B * h * w) -> (B, ..., hidden, h, w)
            z = z.reshape(*z.shape[:-1], batch, height, width)
            b = z.dim() - 3  # explicit non-negative permutation: the ONNX exporter mishandles movedim(-3, 0)
            return z.permute(b, *[d for d in range(z.dim()) if d != b]).contiguous()

        # x part of every step at once, frames ordered (t, b); then laid out (4 * hidden, T, B * h * w).
        gates_x = input_gates(x.transpose(0, 1).flatten(0, 1), w_x, cell.conv.bias, pad)
        gates_x = gates_x.view(steps, batch, 4 * hidden, height * width).permute(2, 0, 1, 3)
        gates_x = gates_x.reshape(4 * hidden, steps, positions)
        h = c = None
        if state is not None:
            h, c = to_layout(state[0]), full_precision(to_layout(state[1]))
        hs, cs = [], []
        for t in range(steps):
            if h is None:  # zero initial state: the h part and f * c vanish
                i, f, o, g = full_precision(gates_x[:, t]).chunk(4, dim=0)
                c = torch.sigmoid(i) * torch.tanh(g)
            else:
                h_img = h.view(hidden, batch, height, width).transpose(0, 1)
                gates = torch.addmm(gates_x[:, t], w_h, columns(h_img, k, pad))
                i, f, o, g = full_precision(gates).chunk(4, dim=0)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
            cs.append(c)
        return (from_layout(torch.stack(hs, 0)), from_layout(torch.stack(cs, 0)),
                (from_layout(h), from_layout(c)))
