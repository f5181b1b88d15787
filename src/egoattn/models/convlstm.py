"""ConvLSTM (Ego-RNN): gates from one fused convolution over [x, h].

The reference uses 8 convolutions per cell, ``conv_x(x)`` (with bias) + ``conv_h(h)`` (no bias) for each
of i, f, o and g. One convolution over the concatenation [x, h] with ``4 * hidden`` output channels is the
same function (the h part of its bias is the x part's bias) and runs as a single kernel. The output
channels are laid out in gate order **i, f, o, g**, each ``hidden`` wide; the first ``in_channels``
input channels are the x part and the last ``hidden`` the h part.

c_t = f * c_{t-1} + i * g,  h_t = o * tanh(c_t); sigmoid for i, f, o, tanh for g; no peepholes, no
forget-gate bias offset, zero initial state. Init as the reference: Xavier-normal per gate and per
x / h part (i.e. with the fans of the separate convolutions), zero bias.
"""

from __future__ import annotations

import torch
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
    """Runs a :class:`ConvLSTMCell` over time (dimension 1)."""

    def __init__(self, in_channels: int, hidden: int = 512, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = ConvLSTMCell(in_channels, hidden, kernel_size)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, C, h, w) -> (all h (B, T, hidden, h, w), all c (same), final (h_T, c_T))."""
        hs, cs = [], []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            hs.append(state[0])
            cs.append(state[1])
        return torch.stack(hs, 1), torch.stack(cs, 1), state
