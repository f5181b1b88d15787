"""Frame samplers: the Ego-RNN uniform rule, consecutive windows, flow stacks, order tuples."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from egoattn.data.samplers import (
    ORDER_PERMUTATIONS,
    ConsecutiveSampler,
    FlowStackSampler,
    OrderTupleSampler,
    ShortClipError,
    UniformSampler,
    order_class,
)
from egoattn.errors import BadInputError


def reference_rule(n: int, t: int) -> np.ndarray:
    """The reference code's expression: 1-based floor(linspace(1, N, T, endpoint=False)), made 0-based."""
    return np.floor(np.linspace(1, n, t, endpoint=False)).astype(np.int64) - 1


@pytest.mark.parametrize("n", [50, 100])
def test_uniform_matches_the_ego_rnn_formula(n: int) -> None:
    got = UniformSampler(25)(n, None)
    np.testing.assert_array_equal(got, reference_rule(n, 25))
    assert got.dtype == np.int64 and len(got) == 25
    assert got[0] == 0 and got.max() <= n - 2  # the rule never reaches the last stored frame


def test_uniform_small_cases_by_hand() -> None:
    # N=11, T=5: linspace(1, 11, 5, endpoint=False) = 1, 3, 5, 7, 9 -> 0-based 0, 2, 4, 6, 8
    assert UniformSampler(5)(11, None).tolist() == [0, 2, 4, 6, 8]
    # N=10, T=5: 1, 2.8, 4.6, 6.4, 8.2 -> floor 1, 2, 4, 6, 8 -> 0-based 0, 1, 3, 5, 7
    assert UniformSampler(5)(10, None).tolist() == [0, 1, 3, 5, 7]


def test_uniform_is_the_same_at_train_and_test() -> None:
    rng = np.random.default_rng(3)
    np.testing.assert_array_equal(UniformSampler(25)(77, rng), UniformSampler(25)(77, None))


@pytest.mark.parametrize("n", [206, 411, 31, 2, 1000])
def test_uniform_is_exact_where_float_linspace_rounds_down(n: int) -> None:
    # N=206, T=25 is a case where numpy's float linspace lands just below an integer.
    t = 25 if n != 31 else 22
    exact = [math.floor(1 + Fraction(n - 1, t) * i) - 1 for i in range(t)]
    policy = "repeat" if n < t else "error"
    assert UniformSampler(t, short_clip=policy)(n, None).tolist() == exact


def test_uniform_short_clip_policy() -> None:
    with pytest.raises(ShortClipError, match="3 frames.*needs 5"):
        UniformSampler(5)(3, None)
    assert issubclass(ShortClipError, BadInputError)
    got = UniformSampler(5, short_clip="repeat")(3, None)
    assert got.tolist() == [0, 0, 0, 1, 1]  # floor(1, 1.4, 1.8, 2.2, 2.6) - 1
    with pytest.raises(ShortClipError):
        UniformSampler(5, short_clip="repeat")(0, None)
    with pytest.raises(ValueError):
        UniformSampler(5, short_clip="pad")  # type: ignore[arg-type]


def test_consecutive_centred_at_test_and_random_at_train() -> None:
    s = ConsecutiveSampler(10)
    assert s(50, None).tolist() == list(range(20, 30))  # slack 40 -> start 20
    assert s(11, None).tolist() == list(range(0, 10))  # slack 1 -> start 0
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        w = s(50, rng)
        assert np.all(np.diff(w) == 1) and 0 <= w[0] and w[-1] <= 49
        starts.add(int(w[0]))
    assert min(starts) == 0 and max(starts) == 40 and len(starts) > 30  # covers the whole range


def test_consecutive_short_clip() -> None:
    with pytest.raises(ShortClipError, match="4 frames"):
        ConsecutiveSampler(6)(4, None)
    assert ConsecutiveSampler(6, short_clip="repeat")(4, None).tolist() == [0, 1, 2, 3, 3, 3]


def test_flow_stacks_in_range() -> None:
    n = 50  # 49 flows; starts 0..44 for stacks of 5
    assert FlowStackSampler(5, "centre")(n, None).tolist() == [22]
    assert FlowStackSampler(5, "even", 5)(n, None).tolist() == [0, 11, 22, 33, 44]
    rng = np.random.default_rng(1)
    s = FlowStackSampler(5, "random", 3)
    seen = set()
    for _ in range(300):
        starts = s(n, rng)
        assert starts.shape == (3,)
        seen.update(starts.tolist())
        idx = s.indices(starts, n)
        assert idx.shape == (3, 5) and idx.min() >= 0 and idx.max() <= n - 2
        np.testing.assert_array_equal(idx, starts[:, None] + np.arange(5))
    assert min(seen) == 0 and max(seen) == 44
    # random without an rng is the deterministic test behaviour
    assert FlowStackSampler(5, "random")(n, None).tolist() == [22]
    assert FlowStackSampler(5, "random", 5)(n, None).tolist() == [0, 11, 22, 33, 44]


def test_flow_stack_short_clip() -> None:
    with pytest.raises(ShortClipError, match="3 flow frames"):
        FlowStackSampler(5, "centre")(4, None)
    with pytest.raises(ShortClipError, match="no optical flow"):
        FlowStackSampler(5, "centre", short_clip="repeat")(1, None)
    s = FlowStackSampler(5, "centre", short_clip="repeat")
    assert s.indices(s(4, None), 4).tolist() == [[0, 1, 2, 2, 2]]
    with pytest.raises(ValueError):
        FlowStackSampler(5, "centre", 3)


def test_order_permutations_are_12_classes_of_reverse_pairs() -> None:
    assert len(ORDER_PERMUTATIONS) == 12 and len(set(ORDER_PERMUTATIONS)) == 12
    classes: dict[int, list[tuple[int, ...]]] = {}
    for p in itertools.permutations(range(4)):
        classes.setdefault(order_class(p), []).append(p)
    assert sorted(classes) == list(range(12))
    for members in classes.values():
        assert len(members) == 2 and members[0] == members[1][::-1]
    with pytest.raises(ValueError):
        order_class((0, 1, 2, 2))


def test_order_tuple_sampler() -> None:
    rng = np.random.default_rng(5)
    s = OrderTupleSampler()
    labels = []
    for _ in range(400):
        idx, label = s(30, rng)
        assert idx.shape == (4,) and len(set(idx.tolist())) == 4 and idx.min() >= 0 and idx.max() <= 29
        ranks = np.argsort(np.argsort(idx))  # idx[j] = ordered[perm[j]] -> rank of idx[j] is perm[j]
        assert order_class(ranks) == label
        labels.append(label)
    assert sorted(set(labels)) == list(range(12))
    idx, label = s(30, None)
    assert label == 0 and idx.tolist() == sorted(idx.tolist()) and idx.tolist() == [0, 7, 14, 21]
    with pytest.raises(ShortClipError, match="3 frames"):
        s(3, rng)


def test_flow_stack_centre_with_jitter_stays_in_the_test_phase() -> None:
    n = 50  # 49 flows, starts 0..44, centre 22
    rng = np.random.default_rng(0)
    s = FlowStackSampler(5, "centre", jitter=2)
    seen = [int(s(n, rng)[0]) for _ in range(300)]
    assert set(seen) == {20, 21, 22, 23, 24}  # every start within +-2 of the centre, each one drawn
    assert s(n, None).tolist() == [22]  # without an rng: exactly the test-time stack
    assert FlowStackSampler(5, "centre")(n, rng).tolist() == [22]  # jitter 0: always the centre
    near_end = FlowStackSampler(5, "centre", jitter=3)
    assert {int(near_end(8, rng)[0]) for _ in range(100)} == {0, 1, 2}  # 7 flows: clamped to 0..2
    with pytest.raises(ValueError, match="jitter"):
        FlowStackSampler(5, "centre", jitter=-1)
