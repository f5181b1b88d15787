"""Named frame samplers: which stored frames (or flow frames) of a clip a training example uses.

Every sampler is a small dataclass called as `sampler(num_frames, rng)` and returns 0-based indices
into the clip's stored frames. `rng=None` means the deterministic test-time behaviour; a
`numpy.random.Generator` means training-time randomness (the loader seeds one per clip, so a run is
repeatable whatever the number of workers).

Clips shorter than a sampler needs: `short_clip="error"` (default) raises `ShortClipError`, which
the loader re-raises naming the clip file; `short_clip="repeat"` repeats frames instead (documented
per sampler below).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from egoattn.errors import BadInputError

ShortClipPolicy = Literal["error", "repeat"]


class ShortClipError(BadInputError):
    """A clip has fewer frames than a sampler needs (the loader adds the clip's path)."""

    def __init__(self, problem: str) -> None:
        super().__init__(None, problem)


def _check_policy(short_clip: str) -> None:
    if short_clip not in ("error", "repeat"):
        raise ValueError(f"short_clip must be 'error' or 'repeat', got {short_clip!r}")


def _check_positive(name: str, value: int) -> None:
    if int(value) < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def uniform_indices(num_frames: int, num_samples: int) -> np.ndarray:
    """Ego-RNN's rule as 0-based indices: floor(linspace(1, N, T, endpoint=False)) - 1.

    Computed in exact integer arithmetic, ((N - 1) * t) // T for t = 0..T-1, which is the formula's
    mathematical value. (numpy's floating linspace occasionally lands just below an integer and
    picks the previous frame, e.g. N=206, T=25; we do not copy that rounding accident.)
    For N < T the same formula repeats frames; it never picks the last stored frame.
    """
    if num_frames < 1:
        raise ShortClipError("clip has no frames")
    return (np.arange(num_samples, dtype=np.int64) * (num_frames - 1)) // num_samples


@dataclass(frozen=True)
class UniformSampler:
    """T frames spread over the whole clip, identical at train and test (Ego-RNN, STANet).

    `short_clip="repeat"` lets a clip with fewer than T frames repeat frames (the formula does so
    naturally); `"error"` refuses it.
    """

    num_samples: int = 25
    short_clip: ShortClipPolicy = "error"

    def __post_init__(self) -> None:
        _check_positive("num_samples", self.num_samples)
        _check_policy(self.short_clip)

    def __call__(self, num_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
        if num_frames < self.num_samples and self.short_clip == "error":
            raise ShortClipError(f"clip has {num_frames} frames, the uniform sampler needs {self.num_samples}")
        return uniform_indices(num_frames, self.num_samples)


@dataclass(frozen=True)
class ConsecutiveSampler:
    """T consecutive frames: random start with an rng (training), centred start without (test).

    Two-in-one stream input. `short_clip="repeat"` pads a short clip by repeating its last frame.
    """

    num_samples: int = 25
    short_clip: ShortClipPolicy = "error"

    def __post_init__(self) -> None:
        _check_positive("num_samples", self.num_samples)
        _check_policy(self.short_clip)

    def __call__(self, num_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
        if num_frames < 1:
            raise ShortClipError("clip has no frames")
        if num_frames < self.num_samples:
            if self.short_clip == "error":
                raise ShortClipError(
                    f"clip has {num_frames} frames, the consecutive sampler needs {self.num_samples}")
            return np.minimum(np.arange(self.num_samples, dtype=np.int64), num_frames - 1)
        slack = num_frames - self.num_samples
        start = (slack // 2) if rng is None else int(rng.integers(0, slack + 1))
        return np.arange(start, start + self.num_samples, dtype=np.int64)


@dataclass(frozen=True)
class FlowStackSampler:
    """Start indices of stacks of `stack` consecutive flow frames (flow i = frame i -> i+1, N-1 flows).

    Modes (Ego-RNN's flow stream): `random` draws `num_stacks` starts uniformly from 0..F-L
    (training; with rng=None it behaves as `centre` for one stack and `even` for several);
    `centre` is the single centred start (F - L) // 2 (validation); with an rng and `jitter` > 0 the
    start is drawn uniformly from centre +- jitter (clamped to 0..F-L): a training stack from the same
    phase of the clip as the test stack, for short clips whose phases differ in meaning (on the
    synthetic take/put, the hand moves the same way near the start of one and the end of the other);
    `even` is `num_stacks` starts evenly spaced over 0..F-L, rounded (the test-time logit averaging
    over 5 stacks).
    `short_clip="repeat"`: a clip with fewer than `stack` flows gets start 0 and `indices()` repeats
    its last flow.
    """

    stack: int = 5
    mode: Literal["random", "centre", "even"] = "random"
    num_stacks: int = 1
    short_clip: ShortClipPolicy = "error"
    jitter: int = 0  # mode "centre" with an rng: start drawn from centre +- jitter

    def __post_init__(self) -> None:
        _check_positive("stack", self.stack)
        if int(self.jitter) < 0:
            raise ValueError(f"jitter must be >= 0, got {self.jitter}")
        _check_positive("num_stacks", self.num_stacks)
        _check_policy(self.short_clip)
        if self.mode not in ("random", "centre", "even"):
            raise ValueError(f"mode must be 'random', 'centre' or 'even', got {self.mode!r}")
        if self.mode == "centre" and self.num_stacks != 1:
            raise ValueError("mode 'centre' gives one stack; use 'even' for several")

    def __call__(self, num_frames: int, rng: np.random.Generator | None = None) -> np.ndarray:
        num_flows = num_frames - 1
        if num_flows < 1:
            raise ShortClipError(f"clip has {num_frames} frame(s), so no optical flow")
        if num_flows < self.stack:
            if self.short_clip == "error":
                raise ShortClipError(f"clip has {num_flows} flow frames, a flow stack needs {self.stack}")
            return np.zeros(self.num_stacks, dtype=np.int64)
        last = num_flows - self.stack
        mode = self.mode
        if mode == "random" and rng is None:
            mode = "centre" if self.num_stacks == 1 else "even"
        if mode == "random":
            assert rng is not None
            return rng.integers(0, last + 1, size=self.num_stacks).astype(np.int64)
        if mode == "centre":
            start = last // 2
            if rng is not None and self.jitter > 0:
                start = int(np.clip(start + rng.integers(-self.jitter, self.jitter + 1), 0, last))
            return np.array([start], dtype=np.int64)
        return np.round(np.linspace(0, last, self.num_stacks)).astype(np.int64)

    def indices(self, starts: np.ndarray, num_frames: int) -> np.ndarray:
        """(S, stack) flow indices of the stacks starting at `starts`, clamped to the last flow."""
        flows = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(self.stack, dtype=np.int64)
        return np.minimum(flows, num_frames - 2)


def _order_classes() -> tuple[tuple[int, ...], ...]:
    """The 12 permutations of 4 that come before their reverse in lexicographic order."""
    return tuple(p for p in itertools.permutations(range(4)) if p < p[::-1])


ORDER_PERMUTATIONS: tuple[tuple[int, ...], ...] = _order_classes()
"""Order-prediction classes (OPN): class k holds ORDER_PERMUTATIONS[k] and its reverse."""


def order_class(permutation: tuple[int, ...] | list[int] | np.ndarray) -> int:
    """The class id of a permutation of (0, 1, 2, 3); a permutation and its reverse share it."""
    p = tuple(int(i) for i in permutation)
    canonical = min(p, p[::-1])
    try:
        return ORDER_PERMUTATIONS.index(canonical)
    except ValueError:
        raise ValueError(f"{permutation!r} is not a permutation of (0, 1, 2, 3)") from None


@dataclass(frozen=True)
class OrderTupleSampler:
    """4 frames in temporal order, shuffled by one of the 12 order classes (OPN, SAMSOP).

    Returns (indices, class_id): `indices[j] = ordered[perm[j]]`, where `ordered` are 4 distinct
    frames in increasing order and `perm` is the class's permutation or its reverse (chosen at
    random). With an rng the frames are 4 distinct random frames and the class is random; without,
    the frames are the uniform rule's 4 and the class is 0 in forward order (deterministic).
    The clip needs at least 4 frames (distinct frames are what makes the order recoverable).
    """

    num_frames_per_tuple: int = 4

    def __post_init__(self) -> None:
        if self.num_frames_per_tuple != 4:
            raise ValueError("order prediction uses tuples of 4 frames (12 classes)")

    def __call__(self, num_frames: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, int]:
        if num_frames < 4:
            raise ShortClipError(f"clip has {num_frames} frames, order prediction needs 4 distinct frames")
        if rng is None:
            ordered = uniform_indices(num_frames, 4)
            label, perm = 0, ORDER_PERMUTATIONS[0]
        else:
            ordered = np.sort(rng.choice(num_frames, size=4, replace=False)).astype(np.int64)
            label = int(rng.integers(0, len(ORDER_PERMUTATIONS)))
            perm = ORDER_PERMUTATIONS[label]
            if rng.random() < 0.5:
                perm = perm[::-1]
        return ordered[list(perm)], label
