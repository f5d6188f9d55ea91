"""Pure statistics for comparisons: Student-t intervals over seeds, pass@k, curve summaries.

No I/O and no third-party imports, so every number here can be checked by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

INTERVAL_NAME = "95% CI, Student-t over seeds (n-1 df)"


@dataclass(frozen=True)
class Interval:
    """Mean of `n` values with a two-sided confidence interval; `half_width` is NaN when n < 2."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def sample_std(values: Sequence[float]) -> float:
    """Standard deviation with Bessel's correction (n - 1); NaN for fewer than two values."""
    if len(values) < 2:
        return math.nan
    centre = mean(values)
    return math.sqrt(sum((v - centre) ** 2 for v in values) / (len(values) - 1))


def t_interval(values: Sequence[float | None], confidence: float = 0.95) -> Interval:
    """mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n) over the finite values."""
    kept = finite(values)
    n = len(kept)
    if n < 2:
        return Interval(mean(kept), math.nan, n)
    critical = student_t_quantile((1 + confidence) / 2, n - 1)
    return Interval(mean(kept), critical * sample_std(kept) / math.sqrt(n), n)


# --------------------------------------------------------------------------- Student t


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom, via the regularized incomplete beta."""
    if df <= 0:
        raise ValueError("df must be positive")
    tail = 0.5 * regularized_incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def student_t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, by bisection on the CDF (monotone; 200 halvings reach float precision)."""
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    if p < 0.5:
        return -student_t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        if student_t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-13 * max(1.0, high):
            break
    return (low + high) / 2


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b) with the continued fraction of Numerical Recipes (betacf), using the symmetry for speed."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1 - math.exp(log_front) * _beta_continued_fraction(b, a, 1 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return result


# --------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i): no huge binomials
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1 - k / i
    return 1 - miss


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
    """pass@k averaged over problems, each with `n` samples and its own count of correct ones."""
    return mean([pass_at_k(n, c, k) for c in correct_counts])


def default_ks(n: int) -> list[int]:
    """1, the powers of two below n, and n itself."""
    ks = {1, n}
    power = 2
    while power < n:
        ks.add(power)
        power *= 2
    return sorted(ks)


# --------------------------------------------------------------------------- curves


def curve_mean(steps: Sequence[float], values: Sequence[float]) -> float:
    """Area under a curve (trapezoids over the finite points) divided by its step span.

    It is the curve's average height, so runs of different lengths stay comparable; a single
    point is its own value.
    """
    points = [(s, v) for s, v in zip(steps, values) if v is not None and math.isfinite(v)]
    if not points:
        return math.nan
    if len(points) == 1 or points[-1][0] == points[0][0]:
        return mean([v for _, v in points])
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in zip(points, points[1:]))
    return area / (points[-1][0] - points[0][0])


def first_step_reaching(steps: Sequence[int], values: Sequence[float], threshold: float) -> float:
    """The first step whose value is >= threshold; NaN if none does."""
    for step, value in zip(steps, values):
        if value is not None and math.isfinite(value) and value >= threshold:
            return float(step)
    return math.nan


def tail_mean(values: Sequence[float], fraction: float = 0.1) -> float:
    """Mean of the finite values in the last `fraction` of the sequence (at least one value)."""
    if not values:
        return math.nan
    count = max(1, math.ceil(len(values) * fraction))
    return mean(finite(values[-count:]))
