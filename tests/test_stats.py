"""The paired bootstrap of a WER difference (dyncli.measure.stats, issue 18 part 2)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from dyncli.measure.stats import paired_wer_delta


def test_identical_systems_give_zero_and_an_empty_interval() -> None:
    errors = [1, 0, 2, 0, 3]
    words = [5, 4, 6, 3, 7]
    d = paired_wer_delta(errors, errors, words)
    assert (d.delta, d.low, d.high) == (0.0, 0.0, 0.0)
    assert d.differing == 0 and d.prob_improvement == 0.0
    assert d.words == 25 and d.resolution == pytest.approx(1 / 25)
    assert not d.excludes_zero


def test_a_small_case_matches_the_exact_bootstrap() -> None:
    # Four utterances: every one of the 4**4 equally likely resamples, enumerated by hand.
    a = np.array([0, 1, 0, 2])
    b = np.array([1, 1, 2, 0])
    n = np.array([3, 4, 5, 2])
    exact = np.array(
        [
            (b[list(idx)].sum() - a[list(idx)].sum()) / n[list(idx)].sum()
            for idx in itertools.product(range(4), repeat=4)
        ]
    )
    d = paired_wer_delta(a, b, n, method="percentile", resamples=20000)
    assert d.delta == pytest.approx((b.sum() - a.sum()) / n.sum())
    lo, hi = np.quantile(exact, [0.025, 0.975])
    assert d.low == pytest.approx(lo, abs=0.02) and d.high == pytest.approx(hi, abs=0.02)
    assert d.prob_improvement == pytest.approx(np.mean(exact < 0), abs=0.02)
    assert d.differing == 3 and d.utterances == 4 and d.words == 14


def test_a_large_difference_excludes_zero() -> None:
    rng = np.random.default_rng(1)
    words = rng.integers(3, 8, size=120)
    a = rng.binomial(words, 0.05)
    b = a + rng.binomial(words, 0.15)  # B makes about 15 points more errors everywhere
    d = paired_wer_delta(a, b, words)
    assert d.excludes_zero and d.low > 0.08
    assert d.low < d.delta < d.high
    assert d.prob_improvement == 0.0
    assert d.points().startswith("+")


def test_one_word_among_many_is_not_a_finding() -> None:
    words = [6] * 100
    a = [0] * 100
    b = [0] * 99 + [1]
    d = paired_wer_delta(a, b, words)
    assert d.low <= 0 <= d.high and not d.excludes_zero  # zero stays inside the interval
    assert d.resolution > 1 / 600  # the set cannot resolve a single word here


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError):
        paired_wer_delta([1, 2], [1], [3, 3])
    with pytest.raises(ValueError):
        paired_wer_delta([], [], [])
    with pytest.raises(ValueError):
        paired_wer_delta([0], [0], [0])


def test_the_result_is_reproducible_and_says_how_it_was_made() -> None:
    a, b, n = [0, 1, 2, 0, 1], [1, 1, 0, 2, 2], [4, 5, 6, 3, 4]
    first, second = paired_wer_delta(a, b, n), paired_wer_delta(a, b, n)
    assert first == second
    assert "9999 resamples, seed 0" in first.method
    assert set(first.to_json()) >= {"delta", "low", "high", "prob_improvement", "resolution"}


def test_utterance_errors_add_up_to_the_corpus_figures() -> None:
    from dyncli.metrics import error_rates, utterance_word_errors

    refs = ["one two three", "four five", "six", "seven eight nine"]
    hyps = ["one too three four", "", "six", "Seven eight"]
    errors, words = utterance_word_errors(refs, hyps)
    assert errors == [2, 2, 0, 1] and words == [3, 2, 1, 3]
    rates = error_rates(refs, hyps)
    assert sum(errors) == rates.word_errors and sum(words) == rates.words
