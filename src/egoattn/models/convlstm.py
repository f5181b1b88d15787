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

:class:`ConvLSTM` runs the same function over a sequence on the same weight (:func:`recurrence`): the x
part of all T steps in one convolution (x does not depend on the recurrence), then per step only the h
part (skipped at the zero initial state) as a matrix product (im2col + GEMM: with a 7x7 map it beats the
convolution). Training goes through :class:`ConvLSTMSequence`, whose backward pass is written out: the
gate gradients of all steps fill one matrix, so the weight gradient is two large products (x part, h
part) instead of one product per step plus per-step sums of whole-weight and all-step tensors, which
autograd would build. Measured on the 2-core Intel Xeon (B 4 x 16 steps, 512 -> 512 channels, 7x7,
interleaved): forward + backward 1.12x faster than autograd through the loop (265 vs 238 GFLOP/s of the
nominal 3x forward count); at the demo's size (B 8 x 10, 64 channels, 5x5) equal within the noise.
On the AMD CPU oneDNN's convolution computed the x part 1.4x faster than im2col + MKL's GEMM; on the
Intel one it takes 1.4x longer (303 vs 216 ms). It stays: the x part is a fifth of the work.
Autograd computes no gradient for an input that needs none (frozen features). Results equal the fused
cell stepped over time up to float32 summation order (about 1e-6 relative).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from egoattn.models.precision import full_precision

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


def rows(z: Tensor, kernel_size: int, padding: int) -> Tensor:
    """im2col transposed: (N, C, h, w) -> (N * h * w, C * k * k), one row per position (n, y, x). As the
    right operand of a weight gradient's product MKL runs this layout faster than ``columns(z).t()``."""
    r = F.unfold(z, kernel_size, padding=padding)
    return r.transpose(1, 2).reshape(-1, r.shape[1])


class Geometry(NamedTuple):
    """Batch and map size of a sequence, and the gate convolution's kernel."""

    batch: int
    height: int
    width: int
    kernel_size: int
    padding: int

    @property
    def positions(self) -> int:
        return self.batch * self.height * self.width

    def image(self, z: Tensor) -> Tensor:
        """(C, B * h * w) -> (B, C, h, w), a view."""
        return z.view(z.shape[0], self.batch, self.height, self.width).transpose(0, 1)

    def layout(self, z: Tensor) -> Tensor:
        """(B, C, h, w) -> (C, B * h * w)."""
        return z.transpose(0, 1).reshape(z.shape[1], self.positions)

    def images(self, z: Tensor) -> Tensor:
        """(T, C, B * h * w) -> (B, T, C, h, w), contiguous: the module's outputs."""
        z = z.reshape(z.shape[0], z.shape[1], self.batch, self.height, self.width)
        return z.permute(2, 0, 1, 3, 4).contiguous()

    def frames(self, z: Tensor) -> Tensor:
        """(T, C, B * h * w) -> (T * B, C, h, w), ordered (t, b) as the x part's input."""
        z = z.reshape(z.shape[0], z.shape[1], self.batch, self.height, self.width)
        return z.transpose(1, 2).reshape(-1, z.shape[1], self.height, self.width)


def recurrence(frames: Tensor, weight: Tensor, bias: Tensor, h: Tensor | None, c: Tensor | None, geo: Geometry,
               keep_gates: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """The ConvLSTM over T steps: frames (T * B, Cin, h, w) ordered (t, b); weight, bias and frames in the
    products' dtype; state h, c (hidden, B * h * w) or None (zeros).

    Returns h and c of every step, (T, hidden, B * h * w) in full precision (egoattn.models.precision), and
    with ``keep_gates`` the activated gates i, f, o, g of every step, (4 * hidden, T, B * h * w)."""
    steps, hidden = frames.shape[0] // geo.batch, weight.shape[0] // 4
    in_channels = weight.shape[1] - hidden
    w_h = weight.flatten(1)[:, in_channels * geo.kernel_size ** 2:]
    # x part of every step in one convolution, then laid out (4 * hidden, T, B * h * w)
    gates_x = F.conv2d(frames, weight[:, :in_channels], bias, padding=geo.padding)
    gates_x = gates_x.view(steps, geo.batch, 4 * hidden, -1).permute(2, 0, 1, 3).reshape(4 * hidden, steps, -1)
    if c is not None:
        c = full_precision(c)
    hs, cs, acts = [], [], []
    for t in range(steps):
        if h is None:  # zero initial state: the h part and f * c vanish
            gates = full_precision(gates_x[:, t])
        else:
            h_cols = columns(geo.image(h.to(w_h.dtype)), geo.kernel_size, geo.padding)
            gates = full_precision(torch.addmm(gates_x[:, t], w_h, h_cols))
        i, f, o = torch.sigmoid(gates[: 3 * hidden]).chunk(3, dim=0)
        g = torch.tanh(gates[3 * hidden:])
        c = i * g if c is None else f * c + i * g
        h = o * torch.tanh(c)
        hs.append(h)
        cs.append(c)
        if keep_gates:
            acts.append(torch.cat([i, f, o, g]))
    return torch.stack(hs), torch.stack(cs), torch.stack(acts, 1) if keep_gates else None


class ConvLSTMSequence(torch.autograd.Function):
    """:func:`recurrence` with back-propagation through time written out.

    Autograd through the step loop computes one weight gradient per step, widens each to the whole weight
    and sums them, and copies each step's gate gradient into zeros the size of all steps. Here the gate
    gradients of all steps fill one (4 * hidden, T * B * h * w) matrix, and the weight gradient is one
    product of it with the im2col rows of x (all steps) and one with those of h (steps after the first).
    """

    @staticmethod
    def forward(ctx: Any, frames: Tensor, weight: Tensor, bias: Tensor, h0: Tensor | None, c0: Tensor | None,
                geo: Geometry) -> tuple[Tensor, Tensor]:
        hs, cs, acts = recurrence(frames, weight, bias, h0, c0, geo, keep_gates=True)
        ctx.save_for_backward(frames, weight, h0, c0, hs, cs, acts)
        ctx.geo = geo
        return hs, cs

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, d_hs: Tensor, d_cs: Tensor) -> tuple[Tensor | None, ...]:
        frames, weight, h0, c0, hs, cs, acts = ctx.saved_tensors
        geo: Geometry = ctx.geo
        steps, hidden, k2 = hs.shape[0], hs.shape[1], geo.kernel_size ** 2
        in_channels = weight.shape[1] - hidden
        x_part = in_channels * k2  # columns of the flat weight that multiply x
        w_h_t = weight.flatten(1)[:, x_part:].t().contiguous()
        d_gates = torch.empty(4 * hidden, steps, geo.positions, dtype=weight.dtype, device=weight.device)
        dh, dc = torch.zeros_like(hs[0]), torch.zeros_like(cs[0])  # from step t + 1
        for t in reversed(range(steps)):
            i, f, o, g = acts[:, t].chunk(4, dim=0)
            tanh_c = torch.tanh(cs[t])
            dh = dh + d_hs[t]
            dc = dc + d_cs[t] + dh * o * (1 - tanh_c * tanh_c)
            c_prev = cs[t - 1] if t > 0 else c0
            d = d_gates[:, t]
            d[:hidden] = dc * g * i * (1 - i)
            d[hidden: 2 * hidden] = 0 if c_prev is None else dc * c_prev * f * (1 - f)
            d[2 * hidden: 3 * hidden] = dh * tanh_c * o * (1 - o)
            d[3 * hidden:] = dc * i * (1 - g * g)
            dc = dc * f
            if t > 0 or h0 is not None:
                d_cols = (w_h_t @ d).view(-1, geo.batch, geo.height * geo.width).transpose(0, 1)
                d_img = F.fold(d_cols, (geo.height, geo.width), geo.kernel_size, padding=geo.padding)
                dh = full_precision(geo.layout(d_img))
        d_flat = d_gates.view(4 * hidden, -1)
        d_frames = d_weight = None
        if ctx.needs_input_grad[0]:
            d_img = d_gates.view(4 * hidden, steps * geo.batch, geo.height, geo.width).transpose(0, 1)
            d_frames = torch.nn.grad.conv2d_input(frames.shape, weight[:, :in_channels].contiguous(),
                                                  d_img.contiguous(), padding=geo.padding)
        if ctx.needs_input_grad[1]:
            d_weight = torch.empty(weight.shape, dtype=weight.dtype, device=weight.device)  # contiguous
            flat = d_weight.view(4 * hidden, -1)
            torch.mm(d_flat, rows(frames, geo.kernel_size, geo.padding), out=flat[:, :x_part])
            first = 0 if h0 is not None else 1  # the zero initial state adds no h part
            prev = hs[:-1] if h0 is None else torch.cat([h0[None].to(hs.dtype), hs[:-1]])
            if prev.shape[0]:
                h_rows = rows(geo.frames(prev).to(weight.dtype), geo.kernel_size, geo.padding)
                torch.mm(d_gates[:, first:].reshape(4 * hidden, -1), h_rows, out=flat[:, x_part:])
            else:
                flat[:, x_part:] = 0
        d_bias = d_flat.sum(1) if ctx.needs_input_grad[2] else None
        return d_frames, d_weight, d_bias, dh if h0 is not None else None, dc if c0 is not None else None, None


class ConvLSTM(nn.Module):
    """Runs a :class:`ConvLSTMCell` over time (dimension 1): the x part of all steps as one convolution,
    the h part per step as a matrix product, gradients by :class:`ConvLSTMSequence` (see the module doc).

    Internally gates and states are laid out (channels, B * h * w): each product's weight gradient then
    comes out in the weight's own row-major layout.
    """

    def __init__(self, in_channels: int, hidden: int = 512, kernel_size: int = 3) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = ConvLSTMCell(in_channels, hidden, kernel_size)

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
        """x (B, T, C, h, w) -> (all h (B, T, hidden, h, w), all c (same), final (h_T, c_T))."""
        conv = self.cell.conv
        if x.dim() != 5 or x.shape[2] != self.cell.in_channels:
            raise ValueError(f"ConvLSTM expects x of shape (B, T, {self.cell.in_channels}, h, w), got {tuple(x.shape)}")
        geo = Geometry(x.shape[0], x.shape[3], x.shape[4], conv.kernel_size[0], conv.padding[0])
        frames, weight, bias = x.transpose(0, 1).flatten(0, 1), conv.weight, conv.bias  # frames ordered (t, b)
        h0, c0 = (geo.layout(state[0]), geo.layout(state[1])) if state is not None else (None, None)
        device = x.device.type
        if torch.is_autocast_enabled(device):  # autocast's cast, made here: the products run with it off
            dtype = torch.get_autocast_dtype(device)
            frames, weight, bias = frames.to(dtype), weight.to(dtype), bias.to(dtype)
        with torch.autocast(device, enabled=False):
            inputs = (frames, weight, bias, h0, c0)
            if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
                hs, cs = ConvLSTMSequence.apply(*inputs, geo)
            else:
                hs, cs, _ = recurrence(*inputs, geo)
        return geo.images(hs), geo.images(cs), (geo.images(hs[-1:])[:, 0], geo.images(cs[-1:])[:, 0])
