"""training.stats against values computed by hand (binomial sums, the Wilson formula, tiny bootstraps)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training import stats

# --------------------------------------------------------------------------- Wilson


def test_wilson_interval_matches_hand_computed_values() -> None:
    # 5 of 10: centre 0.5, half width 1.96 * sqrt(0.025 + 0.0096) / 1.3841 = 0.2634.
    low, high = stats.wilson_interval(5, 10)
    assert low == pytest.approx(0.2366, abs=1e-4) and high == pytest.approx(0.7634, abs=1e-4)
    # 0 of 10: [0, z^2 / (n + z^2)] = [0, 3.8415 / 13.8415].
    low, high = stats.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(3.841459 / 13.841459, abs=1e-6)
    # 10 of 10 mirrors it.
    low, high = stats.wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(10 / 13.841459, abs=1e-6)
    # 8 of 20 = 0.4: centre (0.4 + 0.09604) / 1.19207 = 0.41612, half 1.96 * sqrt(0.012 + 0.0024010) / 1.19207 = 0.19732.
    low, high = stats.wilson_interval(8, 20)
    assert low == pytest.approx(0.2188, abs=1e-4) and high == pytest.approx(0.6134, abs=1e-4)


def test_wilson_interval_edge_cases() -> None:
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson_interval(3, 2)
    # Always contains the observed rate and narrows with n.
    for k, n in ((1, 3), (7, 9), (50, 100)):
        low, high = stats.wilson_interval(k, n)
        assert low <= k / n <= high
    assert np.diff(stats.wilson_interval(50, 100)) < np.diff(stats.wilson_interval(5, 10))


# --------------------------------------------------------------------------- McNemar


def test_mcnemar_exact_is_the_two_sided_binomial_tail_of_the_discordant_pairs() -> None:
    assert stats.mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
    assert stats.mcnemar_exact(5, 0) == pytest.approx(2 / 32)  # symmetric
    assert stats.mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 1024)  # 0.021484375
    assert stats.mcnemar_exact(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)  # 0.109375
    assert stats.mcnemar_exact(0, 6) == pytest.approx(2 / 64)  # 0.03125: six to nil is significant, five to nil is not
    assert stats.mcnemar_exact(3, 3) == 1.0 and stats.mcnemar_exact(4, 5) == 1.0  # capped at 1
    assert stats.mcnemar_exact(0, 0) == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 2)


def test_paired_binary_uses_only_the_discordant_cases() -> None:
    a = [True] * 6 + [True] * 3 + [False] * 1  # 9 of 10
    b = [False] * 6 + [True] * 3 + [False] * 1  # 3 of 10: A alone right on 6 cases, B alone on none
    result = stats.paired_binary(a, b)
    assert result.difference == pytest.approx(0.9 - 0.3)
    assert result.p_value == pytest.approx(2 / 64) and result.significant and result.test == "exact McNemar" and result.n == 10
    assert result.ci_low <= result.difference <= result.ci_high
    same = stats.paired_binary([True, False, True], [True, False, True])
    assert same.difference == 0.0 and same.p_value == 1.0 and not same.significant and (same.ci_low, same.ci_high) == (0.0, 0.0)
    with pytest.raises(ValueError):
        stats.paired_binary([True], [True, False])


# --------------------------------------------------------------------------- bootstrap


def test_paired_bootstrap_of_identical_samples_has_no_difference() -> None:
    values = [0.1, 0.5, 0.9, 0.3]
    result = stats.paired_bootstrap(values, values)
    assert result.difference == 0.0 and (result.ci_low, result.ci_high) == (0.0, 0.0) and result.p_value == 1.0
    assert result.test == "paired bootstrap" and result.n == 4


def test_paired_bootstrap_of_a_constant_shift_is_certain() -> None:
    b = [0.2, 0.4, 0.7, 0.1, 0.5, 0.3, 0.9, 0.0, 0.6, 0.8]
    a = [x + 0.25 for x in b]
    result = stats.paired_bootstrap(a, b, resamples=999)
    # Every resample has the same difference 0.25: the interval is that point, no resample is as extreme as 0.
    assert result.difference == pytest.approx(0.25)
    assert result.ci_low == pytest.approx(0.25) and result.ci_high == pytest.approx(0.25)
    assert result.p_value == pytest.approx(1 / 1000) and result.significant
    # The same shift on fewer cases than the bootstrap can judge: the same p, never called significant.
    few = stats.paired_bootstrap(a[:4], b[:4], resamples=999)
    assert few.p_value == pytest.approx(1 / 1000) and few.n == 4 < stats.MIN_BOOTSTRAP_CASES and not few.significant


def test_paired_bootstrap_on_two_cases_matches_the_enumerated_distribution() -> None:
    # Case differences 0 and 2: a resample's mean difference is 0, 1 or 2 with probability 1/4, 1/2, 1/4.
    # Observed 1; |d* - 1| >= 1 for d* in {0, 2}: p is about 1/2; the 95% interval is [0, 2].
    result = stats.paired_bootstrap([1.0, 3.0], [1.0, 1.0], resamples=20000, seed=3)
    assert result.difference == 1.0 and (result.ci_low, result.ci_high) == (0.0, 2.0)
    assert result.p_value == pytest.approx(0.5, abs=0.02)


def test_paired_bootstrap_is_seeded_and_refuses_unpaired_samples() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.random(30), rng.random(30)
    assert stats.paired_bootstrap(a, b, seed=5) == stats.paired_bootstrap(a, b, seed=5)
    with pytest.raises(ValueError):
        stats.paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        stats.paired_bootstrap([], [])


def test_paired_bootstrap_with_the_perplexity_statistic() -> None:
    # Rows (summed NLL, tokens). Perplexity of A: exp(6 / 6) = e; of B: exp(3 / 6) = sqrt(e).
    a = [[2.0, 2.0], [4.0, 4.0]]
    b = [[1.0, 2.0], [2.0, 4.0]]
    result = stats.paired_bootstrap(a, b, statistic=stats.ratio_perplexity)
    # Each case has the same NLL per token in A (1.0) and in B (0.5), so every resample gives e - sqrt(e).
    assert result.difference == pytest.approx(math.e - math.sqrt(math.e))
    assert result.ci_low == pytest.approx(result.difference) and result.ci_high == pytest.approx(result.difference)


def test_bootstrap_interval_of_a_mean() -> None:
    assert stats.bootstrap_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    low, high = stats.bootstrap_interval([0.0, 1.0], resamples=20000, seed=1)
    assert (low, high) == (0.0, 1.0)  # the resampled mean is 0, 0.5 or 1
    low, high = stats.bootstrap_interval(list(range(100)))
    assert low < 49.5 < high and high - low < 25
    with pytest.raises(ValueError):
        stats.bootstrap_interval([])
