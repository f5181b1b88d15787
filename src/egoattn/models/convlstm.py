"""ConvLSTM (Ego-RNN): gates from one fused convolution over [x, h].

The reference uses 8 convolutions per cell, ``conv_x(x)`` (with bias) + ``conv_h(h)`` (no bias) for each
of i, f, o and g. One convolution over the concatenation [x, h] with ``4 * hidden`` output channels is the
same function (the h part of its bias is the x part's bias) and runs as a single kernel. The output
channels are laid out in gate order **i, f, o, g**, each ``hidden`` wide; the first ``in_channels``
input channels are the x part and the last ``hidden`` the h part.

c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t); sigmoid for i, f, o, tanh for g; no peepholes, no
forget-gate bias offset, zero initial state. Init as the reference: Xavier-normal per gate and per
x / h part (i.e. with the fans of the separate convolutions), zero bias.

:class:`ConvLSTM` runs the same function over a sequence as matrix products (im2col + GEMM) on the
same weight: the x part of all T steps in one product (x does not depend on the recurrence), then
per step only the h part (skipped at the zero initial state). With 5x5..7x7 feature maps a direct
convolution reaches about half the matmul peak on CPU, the products about 85-90 %, and autograd then
computes no gradient for an input that needs none (frozen features). Results equal the fused
convolution's up to float32 summation order (about 1e-6 relative).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
        i, f, o, g = self.conv(torch.cat([x, h_prev], dim=1)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class ConvLSTM(nn.Module):
    """Runs a :class:`ConvLSTMCell` over time (dimension 1), as matrix products (see the module doc).

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
        w_x, w_h = cell.conv.weight.flatten(1).split([cell.in_channels * k * k, hidden * k * k], dim=1)

        def columns(z: Tensor) -> Tensor:  # (N, C, h, w) -> im2col (C * k * k, N * h * w)
            cols = F.unfold(z, k, padding=pad)
            return cols.transpose(0, 1).reshape(cols.shape[1], -1)

        def to_layout(z: Tensor) -> Tensor:  # (B, hidden, h, w) -> (hidden, B * h * w)
            return z.transpose(0, 1).reshape(hidden, positions)

        def from_layout(z: Tensor) -> Tensor:  # (..., hidden, B * h * w) -> (B, ..., hidden, h, w)
            z = z.reshape(*z.shape[:-1], batch, height, width)
            b = z.dim() - 3  # explicit non-negative permutation: the ONNX exporter mishandles movedim(-3, 0)
            return z.permute(b, *[d for d in range(z.dim()) if d != b]).contiguous()

        # x part of every step at once; columns ordered (t, b, y, x) so step t is one block.
        gates_x = torch.addmm(cell.conv.bias.unsqueeze(1), w_x, columns(x.transpose(0, 1).flatten(0, 1)))
        gates_x = gates_x.view(4 * hidden, steps, positions)
        h = c = None
        if state is not None:
            h, c = to_layout(state[0]), to_layout(state[1])
        hs, cs = [], []
        for t in range(steps):
            if h is None:  # zero initial state: the h part and f * c vanish
                i, f, o, g = gates_x[:, t].chunk(4, dim=0)
                c = torch.sigmoid(i) * torch.tanh(g)
            else:
                h_img = h.view(hidden, batch, height, width).transpose(0, 1)
                i, f, o, g = torch.addmm(gates_x[:, t], w_h, columns(h_img)).chunk(4, dim=0)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
            cs.append(c)
        return (from_layout(torch.stack(hs, 0)), from_layout(torch.stack(cs, 0)),
                (from_layout(h), from_layout(c)))
