"""The evaluation's statistics: intervals for rates and means, paired tests between two variants.

Both variants of a comparison answer the same cases, so they are compared case by case:

* ``wilson_interval(k, n)``: the 95% Wilson score interval of a rate k/n (good at small n and
  at 0% or 100%, where the normal interval collapses);
* ``mcnemar_exact(b, c)``: the exact McNemar test of two paired binary outcomes: under "no
  difference" each discordant case (one variant right, the other wrong) is a fair coin, so the
  two-sided p-value is a binomial tail on the b + c discordant cases;
* ``paired_bootstrap(a, b)``: resample the cases (the same cases for both variants), seeded;
  the difference of the statistic (the mean by default), its percentile interval and a
  two-sided p-value;
* ``bootstrap_interval(values)``: the percentile interval of one variant's statistic.

Pure functions of numbers: no model, no files. Used by ``training.evaluate``; tested in
``tests/test_stats.py`` against hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Z_95 = 1.959963984540054
"""The two-sided 95% quantile of the standard normal distribution."""
DEFAULT_RESAMPLES = 4000
DEFAULT_SEED = 12
ALPHA = 0.05
MIN_BOOTSTRAP_CASES = 10
"""Fewer paired cases than this and the bootstrap cannot see the spread (two cases with the same
sign give p ~ 0): such a comparison is reported, never called significant."""

Statistic = Callable[[np.ndarray], np.ndarray]
"""Maps resampled data of shape (resamples, n, ...) to one value per resample, shape (resamples,)."""


def mean_statistic(samples: np.ndarray) -> np.ndarray:
    """The mean over the cases (axis 1) of each resample."""
    return samples.mean(axis=1)


def ratio_perplexity(samples: np.ndarray) -> np.ndarray:
    """exp(sum of NLL / sum of tokens) of each resample; the cases are rows (nll, tokens)."""
    return np.exp(samples[..., 0].sum(axis=1) / samples[..., 1].sum(axis=1))


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of the rate ``successes / n`` (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, not {successes}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0% and 100% the interval touches the bound exactly (the formula leaves rounding noise).
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts ``b`` (only A right) and ``c`` (only B right).

    Under the null each discordant case goes either way with probability 1/2, so
    p = min(1, 2 * P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2); 1 when there is no discordant case.
    """
    if b < 0 or c < 0:
        raise ValueError("discordant counts cannot be negative")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedResult:
    """A paired comparison of A against B: ``difference`` is A's statistic minus B's."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    test: str

    @property
    def significant(self) -> bool:
        """p < 0.05; for the bootstrap also at least MIN_BOOTSTRAP_CASES cases."""
        return self.p_value < ALPHA and (self.test != "paired bootstrap" or self.n >= MIN_BOOTSTRAP_CASES)


def _as_array(values: Sequence[float] | Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def _resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_interval(
    values: Sequence[float] | np.ndarray, statistic: Statistic = mean_statistic, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> tuple[float, float]:
    """The 95% percentile bootstrap interval of ``statistic`` over the cases in ``values`` (seeded)."""
    data = _as_array(values)
    if len(data) == 0:
        raise ValueError("nothing to resample")
    stats = statistic(data[_resample_indices(len(data), resamples, seed)])
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def paired_bootstrap(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    statistic: Statistic = mean_statistic,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
) -> PairedResult:
    """Paired bootstrap of statistic(A) - statistic(B) over cases answered by both (row i of ``a`` and ``b`` is the same case).

    Each resample draws the same case indices for A and B. The interval is the 2.5th-97.5th
    percentile of the resampled differences; the two-sided p-value is the share of resampled
    differences, shifted to a zero mean difference (the null), that are at least as far from
    zero as the observed one: p = (1 + #{|d* - d| >= |d|}) / (resamples + 1).
    """
    first, second = _as_array(a), _as_array(b)
    if first.shape != second.shape:
        raise ValueError(f"paired samples need the same cases: shapes {first.shape} and {second.shape}")
    n = len(first)
    if n == 0:
        raise ValueError("nothing to compare")
    observed = float(statistic(first[None, ...])[0] - statistic(second[None, ...])[0])
    index = _resample_indices(n, resamples, seed)
    differences = statistic(first[index]) - statistic(second[index])
    low, high = np.percentile(differences, [2.5, 97.5])
    # A tolerance: float sums of the same numbers in another order differ in the last bits.
    tolerance = 1e-12 * max(1.0, abs(observed))
    extreme = int(np.sum(np.abs(differences - observed) >= abs(observed) - tolerance))
    p_value = min(1.0, (1 + extreme) / (resamples + 1))
    return PairedResult(observed, float(low), float(high), p_value, n, "paired bootstrap")


def paired_binary(a: Sequence[bool], b: Sequence[bool], resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> PairedResult:
    """Rate(A) - rate(B) on the same cases: the exact McNemar p-value, a paired bootstrap interval of the difference."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same cases: {len(a)} and {len(b)}")
    if not a:
        raise ValueError("nothing to compare")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    difference = (only_a - only_b) / len(a)  # = rate(A) - rate(B): the concordant cases cancel
    interval = paired_bootstrap([float(x) for x in a], [float(y) for y in b], resamples=resamples, seed=seed)
    return PairedResult(difference, interval.ci_low, interval.ci_high, mcnemar_exact(only_a, only_b), len(a), "exact McNemar")
