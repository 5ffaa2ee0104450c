"""How sure a WER difference is: the paired bootstrap over utterances (Bisani & Ney, 2004).

Two systems A and B are scored on the same utterances; utterance ``i`` has ``words[i]``
reference words and ``errors_a[i]`` / ``errors_b[i]`` word errors (substitutions, deletions and
insertions). The difference is

    dWER = sum(errors_b - errors_a) / sum(words)        (positive: B makes more errors)

A bootstrap resample draws utterances with replacement, each keeping its errors under both
systems and its word count together, and uses the same draw for A and B: the pairing removes
the variation that comes from which utterances happen to be hard. ``scipy.stats.bootstrap``
does the resampling (``paired=True``) and the BCa interval; the seed and the number of
resamples are fixed and stated in every result, so a report is reproducible.

On 500-900 words a 95% interval is about +-1.2 to +-1.5 points wide: a difference of one or two
words is not a finding, and :attr:`WerDelta.resolution` says what the set can resolve.

Speed is paired the same way (:func:`paired_speedup`): each pair is one unit of work (an
utterance, or a round) timed under both configurations back to back, and the speedup is the
ratio of the summed times, ``sum(base) / sum(other)``, resampled over pairs. :func:`wer_interval`
gives one system's WER with its interval (resampled over utterances), for an absolute WER bar.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

RESAMPLES = 9999
CONFIDENCE = 0.95
SEED = 0


@dataclass(frozen=True)
class WerDelta:
    """B's WER minus A's, with its interval. Field names are the JSON keys.

    ``resolution`` is the smallest difference this comparison can tell from zero: the
    interval's half-width, and never less than one word (``1 / words``).
    """

    delta: float
    low: float
    high: float
    confidence: float
    prob_improvement: float  # share of resamples in which B makes fewer errors than A
    differing: int  # utterances on which A and B make a different number of errors
    utterances: int
    words: int
    resolution: float
    method: str

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def points(self) -> str:
        """``+0.4 [-0.6, +1.4]``: the difference and its interval in WER points."""
        return f"{100 * self.delta:+.1f} [{100 * self.low:+.1f}, {100 * self.high:+.1f}]"


def _bootstrap(
    data: tuple[np.ndarray, ...],
    statistic: Any,
    *,
    confidence: float,
    resamples: int,
    seed: int,
    method: str,
) -> tuple[float, float, np.ndarray, bool]:
    """scipy's paired bootstrap: (low, high, distribution, fell back to percentile)."""
    from scipy import stats

    with warnings.catch_warnings():
        # BCa warns (and gives NaN) on a degenerate distribution, e.g. one differing
        # utterance among few; the percentile interval is used then.
        warnings.simplefilter("ignore")
        result = stats.bootstrap(
            data,
            statistic,
            paired=True,
            vectorized=True,
            n_resamples=resamples,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    distribution = np.asarray(result.bootstrap_distribution)
    if np.isfinite(low) and np.isfinite(high):
        return low, high, distribution, False
    tail = (1 - confidence) / 2
    low, high = (float(q) for q in np.quantile(distribution, [tail, 1 - tail]))
    return low, high, distribution, True


def _delta(errors_a: np.ndarray, errors_b: np.ndarray, words: np.ndarray, axis: int = -1) -> Any:
    return (errors_b.sum(axis=axis) - errors_a.sum(axis=axis)) / words.sum(axis=axis)


def paired_wer_delta(
    errors_a: Sequence[float],
    errors_b: Sequence[float],
    words: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    method: str = "BCa",
) -> WerDelta:
    """The paired bootstrap interval of B's WER minus A's over the same utterances.

    ``errors_a``, ``errors_b`` and ``words`` hold one value per utterance. ``method`` is
    scipy's interval method (``BCa``, ``percentile`` or ``basic``). Raises ``ValueError`` for
    lengths that differ, no utterance, or no reference word.
    """

    a = np.asarray(errors_a, dtype=np.float64)
    b = np.asarray(errors_b, dtype=np.float64)
    n = np.asarray(words, dtype=np.float64)
    if not (a.shape == b.shape == n.shape) or a.ndim != 1:
        raise ValueError("errors_a, errors_b and words need one value per utterance each")
    if a.size == 0 or n.sum() <= 0:
        raise ValueError("a WER difference needs at least one utterance with reference words")
    total = int(round(float(n.sum())))
    delta = float(_delta(a, b, n))
    differing = int(np.count_nonzero(a != b))
    described = f"paired bootstrap over utterances ({method}, {resamples} resamples, seed {seed})"
    one_word = 1.0 / total
    if differing == 0:  # every resample gives 0: the interval is [0, 0], no bootstrap needed
        return WerDelta(
            delta=0.0,
            low=0.0,
            high=0.0,
            confidence=confidence,
            prob_improvement=0.0,
            differing=0,
            utterances=int(a.size),
            words=total,
            resolution=one_word,
            method=described,
        )
    low, high, distribution, fell_back = _bootstrap(
        (a, b, n), _delta, confidence=confidence, resamples=resamples, seed=seed, method=method
    )
    if fell_back:
        described += "; percentile interval (BCa degenerate)"
    return WerDelta(
        delta=delta,
        low=low,
        high=high,
        confidence=confidence,
        prob_improvement=float(np.mean(distribution < 0)),
        differing=differing,
        utterances=int(a.size),
        words=total,
        resolution=max((high - low) / 2, one_word),
        method=described,
    )


@dataclass(frozen=True)
class Interval:
    """A figure with its interval (a speedup, a WER). Field names are the JSON keys."""

    value: float
    low: float
    high: float
    confidence: float
    n: int  # the units resampled: pairs for a speedup, utterances for a WER
    method: str

    @property
    def half_width(self) -> float:
        """Half the interval's width relative to the value (0.03 = +-3%)."""
        return (self.high - self.low) / 2 / abs(self.value) if self.value else math.inf

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _sum_ratio_interval(
    data: tuple[np.ndarray, np.ndarray],
    statistic: Any,
    degenerate: bool,
    described: str,
    *,
    confidence: float,
    resamples: int,
    seed: int,
    method: str,
) -> Interval:
    """``statistic(*data)`` (a ratio of two sums) with its paired bootstrap interval; a
    ``degenerate`` sample (every resample gives the value) gets [value, value] unsampled."""
    value = float(statistic(*data))
    n = int(data[0].size)
    if degenerate:
        return Interval(value, value, value, confidence, n, described)
    low, high, _, fell_back = _bootstrap(
        data, statistic, confidence=confidence, resamples=resamples, seed=seed, method=method
    )
    if fell_back:
        described += "; percentile interval (BCa degenerate)"
    return Interval(value, low, high, confidence, n, described)


def _ratio(base: np.ndarray, other: np.ndarray, axis: int = -1) -> Any:
    return base.sum(axis=axis) / other.sum(axis=axis)


def paired_speedup(
    base: Sequence[float],
    other: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    method: str = "percentile",
) -> Interval:
    """``sum(base) / sum(other)`` with its paired bootstrap interval over the pairs.

    ``base[i]`` and ``other[i]`` are the seconds one unit of work took under each
    configuration, timed back to back. Above 1: ``other`` is faster. The default interval is
    the percentile one: a ratio of sums over hundreds of pairs is close to normal, and BCa's
    jackknife costs O(pairs^2) (1.5 s for 1000 pairs, per row, per clock). Raises ``ValueError``
    for lengths that differ, fewer than two pairs, or a time that is not positive.
    """
    b = np.asarray(base, dtype=np.float64)
    o = np.asarray(other, dtype=np.float64)
    if b.shape != o.shape or b.ndim != 1:
        raise ValueError("base and other need one time per pair each")
    if b.size < 2:
        raise ValueError("a speedup interval needs at least two pairs")
    if not (np.all(b > 0) and np.all(o > 0) and np.all(np.isfinite(b + o))):
        raise ValueError("times must be positive and finite")
    described = f"paired bootstrap over pairs ({method}, {resamples} resamples, seed {seed})"
    return _sum_ratio_interval(
        (b, o), _ratio, np.array_equal(b, o), described,
        confidence=confidence, resamples=resamples, seed=seed, method=method,
    )  # fmt: skip


def _wer(errors: np.ndarray, words: np.ndarray, axis: int = -1) -> Any:
    return errors.sum(axis=axis) / words.sum(axis=axis)


def wer_interval(
    errors: Sequence[float],
    words: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = SEED,
    method: str = "BCa",
) -> Interval:
    """One system's WER, ``sum(errors) / sum(words)``, with its bootstrap interval over
    utterances (each keeping its errors and words together)."""
    e = np.asarray(errors, dtype=np.float64)
    n = np.asarray(words, dtype=np.float64)
    if e.shape != n.shape or e.ndim != 1 or e.size == 0 or n.sum() <= 0:
        raise ValueError("a WER interval needs one error count and word count per utterance")
    described = f"bootstrap over utterances ({method}, {resamples} resamples, seed {seed})"
    same_rate = np.array_equal(e / np.maximum(n, 1), np.full(e.shape, e.sum() / n.sum()))
    return _sum_ratio_interval(
        (e, n), _wer, e.size < 2 or same_rate, described,
        confidence=confidence, resamples=resamples, seed=seed, method=method,
    )  # fmt: skip


def needed(units: int, half_width: float, margin: float) -> int | None:
    """How many units (pairs, words) an interval of ``half_width`` on ``units`` would need to
    clear a bar ``margin`` away from its estimate, assuming the width shrinks as one over the
    square root of the count. None when the estimate sits on the bar (no count decides it)."""
    if margin <= 0 or not math.isfinite(half_width):
        return None
    return max(units, math.ceil(units * (half_width / margin) ** 2))
