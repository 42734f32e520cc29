"""Welch's two-sample comparison: is a difference between two configurations' mean errors more than seed noise?

Pure Python (no SciPy at run time): the Student t distribution comes from the regularised incomplete beta
function, evaluated by its continued fraction; the tests check every number against ``scipy.stats``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Welch:
    """``a`` minus ``b``: the difference of the means, its confidence interval and the two-sided p-value."""

    n_a: int
    n_b: int
    diff: float  # mean(a) - mean(b)
    low: float  # the confidence interval of diff (NaN when either side has fewer than two values)
    high: float
    p: float  # Welch's t-test, two-sided (NaN as above)
    df: float  # Welch-Satterthwaite degrees of freedom
    level: float = 0.95

    @property
    def testable(self) -> bool:
        """Whether both sides have the two values a variance needs."""
        return self.n_a >= 2 and self.n_b >= 2


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Welch:
    """Welch's t-test and confidence interval of ``mean(a) - mean(b)`` (unequal variances, unequal sizes)."""
    n_a, n_b = len(a), len(b)
    diff = statistics.fmean(a) - statistics.fmean(b) if n_a and n_b else math.nan
    if n_a < 2 or n_b < 2:
        return Welch(n_a, n_b, diff, math.nan, math.nan, math.nan, math.nan, level)
    va, vb = statistics.variance(a) / n_a, statistics.variance(b) / n_b
    se = math.sqrt(va + vb)
    if se == 0.0:  # both sides constant: a difference is certain, no difference is no evidence of one
        return Welch(n_a, n_b, diff, diff, diff, 0.0 if diff else 1.0, math.inf, level)
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    t = diff / se
    p = t_sf(abs(t), df) * 2
    half = t_ppf(0.5 + level / 2, df) * se
    return Welch(n_a, n_b, diff, diff - half, diff + half, min(p, 1.0), df, level)


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom, t >= 0."""
    return 0.5 * betainc_regularized(df / 2, 0.5, df / (df + t * t))


def t_ppf(q: float, df: float) -> float:
    """The ``q`` quantile (q > 0.5) of Student's t: bisection on ``t_sf``, which falls monotonically."""
    target = 1.0 - q
    low, high = 0.0, 1.0
    while t_sf(high, df) > target:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        if t_sf(mid, df) > target:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * high:
            break
    return (low + high) / 2


def betainc_regularized(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularised incomplete beta function, for a, b > 0 and 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = a * math.log(x) + b * math.log1p(-x) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    # the continued fraction converges fast only left of the mean a/(a+b); use the symmetry I_x(a,b) = 1 - I_1-x(b,a)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b), evaluated with the modified Lentz method."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 1000):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            value *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return value


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of p-values tested together: the k-th smallest of m is multiplied by
    m - k + 1, then each is raised to the largest adjusted value before it (capped at 1), so that rejecting where
    the adjusted p < alpha keeps the chance of any false rejection within alpha. NaN (an untestable comparison)
    stays NaN and does not count in m."""
    order = sorted((i for i, p in enumerate(p_values) if not math.isnan(p)), key=lambda i: p_values[i])
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - k) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Fit:
    """The least-squares line y = slope·x + intercept through n points, and its coefficient of determination."""

    n: int
    slope: float
    intercept: float
    r2: float  # 1 - residual / total sum of squares (NaN where every y is the same)


def least_squares(xs: Sequence[float], ys: Sequence[float]) -> Fit | None:
    """The ordinary least-squares line through the points; None with fewer than two distinct x."""
    if len(xs) != len(ys) or len(set(xs)) < 2:
        return None
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mean_x) ** 2 for x in xs)
    sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys))
    slope = sxy / sxx
    intercept = mean_y - slope * mean_x
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - slope * x - intercept) ** 2 for x, y in zip(xs, ys))
    return Fit(len(xs), slope, intercept, 1.0 - residual / total if total > 0 else math.nan)
