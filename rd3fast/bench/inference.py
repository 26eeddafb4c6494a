"""Uncertainty for the leaderboard, from scipy.stats: intervals over seeds, paired differences, bootstrap
intervals for statistics of several cells, Holm-corrected pairwise tests and the seeds a difference needs.

Every function takes plain numbers (per-seed top-1 values) and returns plain numbers, so the leaderboard's
statistics (``stats``) stay readable and these stay testable against hand-worked examples. 95 % intervals
unless a caller asks otherwise; fewer than two values give no interval (``None``), never a fake one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
BOOTSTRAP = 2000  # resamples: percentile intervals stable to ~0.1 point on top-1 values
ALPHA = 0.05  # family-wise error rate of the rank groups (Holm)
POWER = 0.8  # for the seeds-needed estimate


@dataclass(frozen=True)
class Interval:
    """A point estimate with its interval (lo, hi; None when it cannot be estimated) over ``n`` values."""

    value: float
    lo: float | None
    hi: float | None
    n: int

    @property
    def half(self) -> float | None:
        return None if self.lo is None or self.hi is None else (self.hi - self.lo) / 2


def mean_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and its Student-t interval over independent seeds."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("mean_interval of no values")
    mean = float(x.mean())
    if len(x) < 2:
        return Interval(mean, None, None, len(x))
    sem = float(sps.sem(x))
    if sem == 0:
        return Interval(mean, mean, mean, len(x))
    lo, hi = sps.t.interval(level, len(x) - 1, loc=mean, scale=sem)
    return Interval(mean, float(lo), float(hi), len(x))


def difference_interval(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> Interval:
    """mean(a) − mean(b) with its interval: paired over the seeds both have (the same seed is the same
    initialization and batch order, so the pairs share that noise), Welch's over all values otherwise."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        return mean_interval([a[s] - b[s] for s in shared], level)
    xa, xb = np.asarray(list(a.values()), float), np.asarray(list(b.values()), float)
    diff = float(xa.mean() - xb.mean()) if len(xa) and len(xb) else math.nan
    if len(xa) < 2 or len(xb) < 2:
        return Interval(diff, None, None, min(len(xa), len(xb)))
    va, vb = xa.var(ddof=1) / len(xa), xb.var(ddof=1) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(diff, diff, diff, min(len(xa), len(xb)))
    dof = (va + vb) ** 2 / (va ** 2 / (len(xa) - 1) + vb ** 2 / (len(xb) - 1))
    lo, hi = sps.t.interval(level, dof, loc=diff, scale=se)
    return Interval(diff, float(lo), float(hi), min(len(xa), len(xb)))


def difference_pvalue(a: Mapping[int, float], b: Mapping[int, float]) -> float | None:
    """Two-sided p-value of mean(a) = mean(b): paired t-test over shared seeds (two or more), else Welch's."""
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:
        d = np.asarray([a[s] - b[s] for s in shared], float)
        if np.all(d == d[0]):
            return 1.0 if d[0] == 0 else 0.0
        return float(sps.ttest_rel([a[s] for s in shared], [b[s] for s in shared]).pvalue)
    xa, xb = list(a.values()), list(b.values())
    if len(xa) < 2 or len(xb) < 2:
        return None
    p = sps.ttest_ind(xa, xb, equal_var=False).pvalue
    return None if math.isnan(p) else float(p)


def bootstrap_interval(samples: Sequence[Sequence[float]], statistic: Callable[[list[float]], float | None],
                       level: float = LEVEL, resamples: int = BOOTSTRAP, seed: int = 0) -> Interval | None:
    """``statistic`` of the per-sample means (e.g. the spread of several methods' means, or Kendall's tau
    between two protocols' orders) with a percentile bootstrap interval: each sample's seeds are resampled
    with replacement. None when the statistic is undefined on the data."""
    means = [float(np.mean(s)) for s in samples]
    value = statistic(means)
    if value is None:
        return None
    if any(len(s) < 2 for s in samples):
        return Interval(value, None, None, min(len(s) for s in samples))
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(s, float) for s in samples]
    draws = []
    for _ in range(resamples):
        v = statistic([float(rng.choice(x, size=len(x)).mean()) for x in arrays])
        if v is not None and not math.isnan(v):
            draws.append(v)
    if len(draws) < resamples // 2:  # undefined on most resamples (e.g. tau with all ties): no interval
        return Interval(value, None, None, min(len(s) for s in samples))
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Interval(value, float(lo), float(hi), min(len(s) for s in samples))


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """scipy's Kendall tau-b; None with fewer than two pairs or when one side has no order (all ties)."""
    if len(x) != len(y):
        raise ValueError("kendall_tau_b: samples of different lengths")
    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    tau = sps.kendalltau(x, y, variant="b").statistic
    return None if math.isnan(tau) else float(tau)


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Holm's step-down correction: which of the hypotheses are rejected at family-wise level ``alpha``
    (scipy has no Holm; this is its four-line definition)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected = [False] * len(pvalues)
    m = len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


def rank_groups(names: Sequence[str], separated: Callable[[str, str], bool]) -> dict[str, str]:
    """Letters of the rank groups (``names`` ordered best first): each letter spans a maximal run of
    consecutive names none of whose pairs are separated, as the bars of a critical-difference diagram; a
    name's letters are those of the runs it lies in (``a``, ``ab``, ``b``, ...)."""
    runs: list[tuple[int, int]] = []
    for i in range(len(names)):
        j = i
        while j + 1 < len(names) and not any(separated(names[k], names[j + 1]) for k in range(i, j + 1)):
            j += 1
        if not runs or j > runs[-1][1]:
            runs.append((i, j))
    letters = {n: "" for n in names}
    for index, (i, j) in enumerate(runs):
        letter = chr(ord("a") + index) if index < 26 else f"[{index}]"
        for k in range(i, j + 1):
            letters[names[k]] += letter
    return letters


def seeds_needed(a: Mapping[int, float], b: Mapping[int, float], alpha: float = ALPHA,
                 power: float = POWER) -> int | None:
    """Seeds per method a two-sided paired test needs to separate a difference the size of the observed one
    with ``power``, at the observed spread of the paired differences (normal approximation, + 1 for the t
    distribution's heavier tails). None when it cannot be estimated (under two shared seeds, no spread, or
    no difference)."""
    shared = sorted(set(a) & set(b))
    if len(shared) < 2:
        return None
    d = np.asarray([a[s] - b[s] for s in shared], float)
    mean, sd = abs(float(d.mean())), float(d.std(ddof=1))
    if mean == 0 or sd == 0:
        return None
    z = sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power)
    return int(math.ceil((z * sd / mean) ** 2)) + 1
