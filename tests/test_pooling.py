"""Second-order attentional pooling (models.md section 5) and STANet's channel-weighted attention (seed 000 eq. 1)."""

from __future__ import annotations

import pytest
import torch

from egoattn.models.pooling import AttentionalPooling
from egoattn.models.stanet_attention import ChannelWeightedAttention


def _randomise(pool: AttentionalPooling, g: torch.Generator) -> None:
    """O(1) weights and biases, so that a 1e-5 tolerance means something (the init is N(0, 0.001))."""
    with torch.no_grad():
        for p in pool.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def _explicit_scores(x: torch.Tensor, pool: AttentionalPooling) -> torch.Tensor:
    """score_k = sum_p Tr(X^T X a_{k,p} b_p^T) / n with X (n x f) built from x (B, C, H, W) by hand;
    biases enter as a constant column of X ([X, 1] and [a; c])."""
    b_, c, h, w = x.shape
    k, rank = pool.num_classes, pool.rank
    a_w = pool.top_down.weight[:, :, 0, 0]  # (K * P, C)
    b_w = pool.bottom_up.weight[:, :, 0, 0]  # (P, C)
    has_bias = pool.top_down.bias is not None
    out = torch.zeros(b_, k, dtype=x.dtype)
    for i in range(b_):
        X = x[i].reshape(c, h * w).T  # rows = positions
        n = X.shape[0]
        if has_bias:
            X = torch.cat([X, torch.ones(n, 1, dtype=x.dtype)], dim=1)
        for kk in range(k):
            total = 0.0
            for p in range(rank):
                a = a_w[kk * rank + p]
                bv = b_w[p]
                if has_bias:
                    a = torch.cat([a, pool.top_down.bias[kk * rank + p : kk * rank + p + 1]])
                    bv = torch.cat([bv, pool.bottom_up.bias[p : p + 1]])
                total = total + torch.trace(X.T @ X @ torch.outer(a, bv)) / n
            out[i, kk] = total
    return out


@pytest.mark.parametrize("rank,bias", [(1, False), (1, True), (3, False), (3, True)])
def test_pooling_equals_the_trace_form(rank, bias):
    g = torch.Generator().manual_seed(rank + 10 * bias)
    pool = AttentionalPooling(6, 4, rank=rank, bias=bias).double()
    _randomise(pool, g)
    x = torch.randn(2, 6, 3, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        got = pool(x)
        want = _explicit_scores(x, pool)
    assert got.shape == (2, 4)
    assert float(want.abs().max()) > 1.0  # non-trivial numbers
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rank1_is_the_product_of_top_down_and_bottom_up_maps():
    g = torch.Generator().manual_seed(3)
    pool = AttentionalPooling(5, 3, rank=1, bias=False).double()
    _randomise(pool, g)
    x = torch.randn(1, 5, 4, 4, generator=g, dtype=torch.float64)
    X = x[0].reshape(5, 16).T
    a = pool.top_down.weight[:, :, 0, 0]
    bv = pool.bottom_up.weight[0, :, 0, 0]
    want = (X @ a.T).T @ (X @ bv) / 16  # (X a_k)^T (X b) / n
    with torch.no_grad():
        assert torch.allclose(pool(x)[0], want, rtol=1e-10)
        assert torch.allclose(pool.saliency(x)[0, 0].flatten(), X @ bv)


def test_sequence_input_equals_the_map_with_time_as_positions():
    g = torch.Generator().manual_seed(4)
    pool = AttentionalPooling(8, 5, rank=2).double()
    _randomise(pool, g)
    seq = torch.randn(3, 7, 8, generator=g, dtype=torch.float64)  # (B, T, C)
    with torch.no_grad():
        as_map = pool(seq.transpose(1, 2).reshape(3, 8, 7, 1))
        got = pool(seq)
    assert got.shape == (3, 5) and torch.allclose(got, as_map)
    assert pool.saliency(seq).shape == (3, 2, 7)
    with pytest.raises(ValueError, match="expected"):
        pool(torch.zeros(3, 8))


def test_pooling_init_matches_the_reference_and_trains():
    torch.manual_seed(0)
    pool = AttentionalPooling(256, 61, rank=2)
    assert pool.top_down.weight.shape == (122, 256, 1, 1) and pool.bottom_up.weight.shape == (2, 256, 1, 1)
    assert float(pool.top_down.weight.detach().std()) == pytest.approx(0.001, rel=0.05)
    assert not pool.top_down.bias.any() and not pool.bottom_up.bias.any()
    x = torch.randn(4, 256, 7, 7)
    loss = torch.nn.functional.cross_entropy(pool(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in pool.parameters())


# ------------------------------------------------------------------ STANet channel-weighted attention


def test_stanet_attention_matches_eq1_and_sums_to_one():
    g = torch.Generator().manual_seed(5)
    f = torch.relu(torch.randn(3, 16, 7, 7, generator=g, dtype=torch.float64))
    f_pre = torch.randn(3, 16, 7, 7, generator=g, dtype=torch.float64)
    out = ChannelWeightedAttention()(f, apply_to=f_pre)
    a = out["attention"]
    assert a.shape == (3, 7, 7)
    assert torch.allclose(a.sum(dim=(1, 2)), torch.ones(3, dtype=torch.float64))
    assert bool((a > 0).all())
    for i in range(3):  # written out: pooled FC feature, its self-correlation, softmax weights, eq. 1
        gvec = f[i].mean(dim=(1, 2))
        corr = torch.outer(gvec, gvec)
        w = torch.softmax(torch.diagonal(corr), dim=0)
        m = sum(w[c] * f[i, c] for c in range(16))
        att = torch.softmax(m.flatten(), dim=0).view(7, 7)
        assert torch.allclose(out["channel_weights"][i], w)
        assert torch.allclose(out["map"][i], m)
        assert torch.allclose(a[i], att)
        assert torch.allclose(out["features"][i], f_pre[i] * att)
    row = ChannelWeightedAttention(correlation="row_sum")(f)
    gvec = f[0].mean(dim=(1, 2))
    assert torch.allclose(row["channel_weights"][0], torch.softmax(torch.outer(gvec, gvec).sum(1), dim=0))
    assert torch.allclose(row["attention"].sum(dim=(1, 2)), torch.ones(3, dtype=torch.float64))


def test_stanet_attention_follows_the_dominant_channel():
    f = torch.zeros(2, 4, 5, 5)
    f[:, 0, 1, 3] = 40.0  # channel 0: strong pooled activation, one hot spot
    f[:, 1] = 0.5  # weak uniform channel
    f[1] = f[1].roll(shifts=(2, -2), dims=(1, 2))  # frame 2: the hot spot moves to (3, 1)
    out = ChannelWeightedAttention()(f)
    assert int(out["channel_weights"][0].argmax()) == 0
    assert divmod(int(out["attention"][0].argmax()), 5) == (1, 3)
    assert divmod(int(out["attention"][1].argmax()), 5) == (3, 1)
    # leading dimensions (B, T, C, h, w) are carried through
    bt = ChannelWeightedAttention()(f.unsqueeze(0))
    assert bt["attention"].shape == (1, 2, 5, 5) and torch.allclose(bt["attention"][0], out["attention"])
