"""Low-rank second-order (attentional) pooling (Girdhar & Ramanan 2017), STANet's temporal attention.

With X in R^{n x f} (rows = the n positions of a feature map, or the n time steps of a sequence):

    rank 1:  score_k = (X a_k)^T (X b) / n = Tr(X^T X a_k b^T) / n
    rank P:  score_k = sum_p (X a_{k,p})^T (X b_p) / n

a_k (a_{k,p}) are class-specific ("top-down") vectors, b (b_p) class-agnostic ("bottom-up")
saliency vectors: X b is a saliency map over positions, X a_k a class-specific one, and the score is
their product averaged over positions. Rank P approximates the full second-order classifier
Tr(X^T X W_k) with W_k = sum_p a_{k,p} b_p^T.

As in the reference code, both projections are 1x1 convolutions with bias (the bias adds a constant
column to X: X a + c), weights N(0, std 0.001) and zero biases, and the product is averaged over
positions. Channel k * P + p of the top-down convolution holds a_{k,p}.
"""

from __future__ import annotations

from torch import Tensor, nn


class AttentionalPooling(nn.Module):
    """(B, C, H, W) feature map or (B, T, C) sequence -> class scores (B, num_classes)."""

    def __init__(self, in_channels: int, num_classes: int, rank: int = 1, bias: bool = True,
                 init_std: float = 0.001) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1 or rank < 1:
            raise ValueError(f"in_channels, num_classes and rank must be positive, got {in_channels}, "
                             f"{num_classes}, {rank}")
        self.num_classes, self.rank = num_classes, rank
        self.top_down = nn.Conv2d(in_channels, num_classes * rank, kernel_size=1, bias=bias)
        self.bottom_up = nn.Conv2d(in_channels, rank, kernel_size=1, bias=bias)
        for conv in (self.top_down, self.bottom_up):
            nn.init.normal_(conv.weight, mean=0.0, std=init_std)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    @staticmethod
    def _as_map(x: Tensor) -> Tensor:
        if x.ndim == 3:  # (B, T, C): time steps are the positions
            return x.transpose(1, 2).unsqueeze(-1)
        if x.ndim == 4:
            return x
        raise ValueError(f"expected (B, C, H, W) or (B, T, C), got shape {tuple(x.shape)}")

    def saliency(self, x: Tensor) -> Tensor:
        """Bottom-up (class-agnostic) maps X b_p: (B, P, H, W), or (B, P, T) for a sequence."""
        s = self.bottom_up(self._as_map(x))
        return s.squeeze(-1) if x.ndim == 3 else s

    def forward(self, x: Tensor) -> Tensor:
        m = self._as_map(x)
        b, _, h, w = m.shape
        top = self.top_down(m).view(b, self.num_classes, self.rank, h * w)
        bottom = self.bottom_up(m).view(b, 1, self.rank, h * w)
        return (top * bottom).sum(dim=2).mean(dim=-1)
