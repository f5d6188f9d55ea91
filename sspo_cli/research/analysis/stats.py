"""Statistics of comparisons, from scipy: Student-t and stratified bootstrap intervals, the interquartile
mean, the probability of improvement, a paired bootstrap over problems and seeds; pass@k; curve summaries.

The estimators follow rliable (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice"):
IQM = scipy.stats.trim_mean(scores, 0.25) over every run; the stratified bootstrap resamples runs within
each stratum (task); P(X > Y) = Mann-Whitney U / (n m), averaged over strata. Every resampling is
scipy.stats.bootstrap's (percentile method, a fixed seed, so a report is reproducible). No I/O here;
numpy and scipy are imported inside the functions so that importing this module stays instant.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
IQM_TRIM = 0.25  # cut from each end: the interquartile mean
POWER = 0.8  # of the minimum detectable difference
CELLS_PER_BATCH = 2_000_000  # resampled (seed, problem) cells held in memory at once

T_METHOD = "t"
BOOTSTRAP_METHOD = "bootstrap"
INTERVAL_METHODS = (T_METHOD, BOOTSTRAP_METHOD)


def interval_name(method: str = T_METHOD, confidence: float = CONFIDENCE) -> str:
    """How an interval was computed, in words, for captions and reports."""
    descriptions = {
        T_METHOD: "Student-t over seeds (n-1 df)",
        BOOTSTRAP_METHOD: f"stratified percentile bootstrap over runs ({BOOTSTRAP_RESAMPLES:,} resamples)",
    }
    return f"{confidence:.0%} CI, {descriptions[method]}"


INTERVAL_NAME = interval_name(T_METHOD)


@dataclass(frozen=True)
class Interval:
    """A point estimate over `n` values with a two-sided confidence interval [low, high].

    The bounds are NaN where no interval exists (fewer than two values). `method` says how the
    interval was made: "t" intervals are symmetric, bootstrap intervals need not be.
    """

    estimate: float
    low: float
    high: float
    n: int
    method: str = T_METHOD
    standard_error: float = math.nan
    df: float = math.nan  # degrees of freedom of a t interval (NaN: a normal or bootstrap one)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def defined(self) -> bool:
        return math.isfinite(self.low) and math.isfinite(self.high)

    def excludes(self, value: float) -> bool:
        return self.defined and not self.low <= value <= self.high


def point_only(estimate: float, n: int, method: str = T_METHOD) -> Interval:
    return Interval(estimate, math.nan, math.nan, n, method)


def finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# --------------------------------------------------------------------------- Student t


def t_interval(values: Sequence[float | None], confidence: float = CONFIDENCE) -> Interval:
    """mean +- t_{(1+confidence)/2, n-1} * s / sqrt(n) over the finite values (scipy.stats.t and sem)."""
    from scipy import stats

    kept = finite(values)
    n = len(kept)
    if n < 2:
        return point_only(mean(kept), n)
    centre = mean(kept)
    standard_error = float(stats.sem(kept))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * standard_error
    return Interval(centre, centre - half, centre + half, n, T_METHOD, standard_error)


# --------------------------------------------------------------------------- bootstrap


def bootstrap_interval(
    samples: Sequence[Sequence[float]],
    statistic: Callable[..., np.ndarray],
    confidence: float = CONFIDENCE,
    batch: int | None = None,
) -> Interval:
    """`statistic(*samples, axis=-1)` with a percentile interval from scipy.stats.bootstrap.

    Each sample is resampled on its own (that is what stratifies: one sample per stratum); the
    statistic must accept batches of resamples along its leading axes. Samples with fewer than two
    values cannot be resampled: then only the estimate is returned.
    """
    import numpy as np
    from scipy import stats

    arrays = [np.asarray(sample, dtype=float) for sample in samples]
    n = sum(len(a) for a in arrays)
    if not arrays:
        return point_only(math.nan, 0, BOOTSTRAP_METHOD)
    estimate = float(statistic(*arrays, axis=-1))
    if any(len(a) < 2 for a in arrays):
        return point_only(estimate, n, BOOTSTRAP_METHOD)
    result = stats.bootstrap(
        arrays,
        statistic,
        n_resamples=BOOTSTRAP_RESAMPLES,
        batch=batch,
        vectorized=True,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    interval = result.confidence_interval
    return Interval(
        estimate, float(interval.low), float(interval.high), n, BOOTSTRAP_METHOD, float(result.standard_error)
    )


def stratified_mean(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
    """The mean over strata of each stratum's mean (rliable's aggregate mean)."""
    import numpy as np

    return np.mean([np.mean(s, axis=axis) for s in strata], axis=0)


def interquartile_mean(*strata: np.ndarray, axis: int = -1) -> np.ndarray:
    """The 25%-trimmed mean of every run of every stratum together (rliable's IQM)."""
    import numpy as np
    from scipy import stats

    return stats.trim_mean(np.concatenate(strata, axis=axis), IQM_TRIM, axis=axis)


def mean_bootstrap_interval(strata: Sequence[Sequence[float]], confidence: float = CONFIDENCE) -> Interval:
    return bootstrap_interval(_non_empty(strata), stratified_mean, confidence)


def iqm_bootstrap_interval(strata: Sequence[Sequence[float]], confidence: float = CONFIDENCE) -> Interval:
    return bootstrap_interval(_non_empty(strata), interquartile_mean, confidence)


def _non_empty(strata: Sequence[Sequence[float]]) -> list[list[float]]:
    return [finite(s) for s in strata if finite(s)]


# --------------------------------------------------------------------------- probability of improvement


def improvement_probability_statistic(strata_count: int) -> Callable[..., np.ndarray]:
    """P(X > Y) for samples (x_1..x_k, y_1..y_k), k = strata_count: per stratum the Mann-Whitney U of x
    over y divided by n m (ties count one half), averaged over the strata."""
    import numpy as np
    from scipy import stats

    def statistic(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        xs, ys = samples[:strata_count], samples[strata_count:]
        per_stratum = [
            stats.mannwhitneyu(x, y, axis=axis, method="asymptotic").statistic / (x.shape[axis] * y.shape[axis])
            for x, y in zip(xs, ys)
        ]
        return np.mean(per_stratum, axis=0)

    return statistic


def improvement_interval(
    x_strata: Sequence[Sequence[float]], y_strata: Sequence[Sequence[float]], confidence: float = CONFIDENCE
) -> Interval:
    """P(X > Y), X and Y scored on the same strata (pairs of empty strata are left out)."""
    pairs = [(finite(x), finite(y)) for x, y in zip(x_strata, y_strata) if finite(x) and finite(y)]
    if not pairs:
        return point_only(math.nan, 0, BOOTSTRAP_METHOD)
    samples = [x for x, _ in pairs] + [y for _, y in pairs]
    return bootstrap_interval(samples, improvement_probability_statistic(len(pairs)), confidence)


# --------------------------------------------------------------------------- paired differences


def paired_difference_interval(
    a: np.ndarray, b: np.ndarray, paired_seeds: bool, confidence: float = CONFIDENCE
) -> Interval:
    """mean(a) - mean(b) for per-problem scores a[seed, problem] and b[seed, problem] on the same problems.

    The bootstrap resamples problems, the same ones for both (that is the pairing), and seeds: one
    draw of seed indices for both when `paired_seeds` (seed s of a and of b share their random
    stream), else a draw per method. A level with a single member is not resampled.
    """
    import numpy as np

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need [seed, problem] matrices over the same problems, got shapes {a.shape} and {b.shape}")
    if paired_seeds and a.shape[0] != b.shape[0]:
        raise ValueError("paired seeds need as many seeds on both sides")
    levels = {"problems": a.shape[1]}
    levels.update({"seeds": a.shape[0]} if paired_seeds else {"seeds_a": a.shape[0], "seeds_b": b.shape[0]})
    resampled = [name for name, size in levels.items() if size >= 2]
    rows_a, rows_b = ("seeds", "seeds") if paired_seeds else ("seeds_a", "seeds_b")

    def statistic(*indices: np.ndarray, axis: int = -1) -> np.ndarray:
        chosen = {name: np.arange(size) for name, size in levels.items()} | dict(
            zip(resampled, (i.astype(int) for i in indices))
        )
        columns = chosen["problems"][..., None, :]
        mean_a = a[chosen[rows_a][..., :, None], columns].mean(axis=(-2, -1))
        mean_b = b[chosen[rows_b][..., :, None], columns].mean(axis=(-2, -1))
        return mean_a - mean_b

    if not resampled:
        return point_only(float(statistic()), a.size + b.size, BOOTSTRAP_METHOD)
    cells = max(a.shape[0], b.shape[0]) * a.shape[1]
    interval = bootstrap_interval(
        [np.arange(levels[name]) for name in resampled], statistic, confidence, batch=max(1, CELLS_PER_BATCH // cells)
    )
    return Interval(
        interval.estimate, interval.low, interval.high, a.size + b.size, BOOTSTRAP_METHOD, interval.standard_error
    )


def seed_difference_interval(
    a: Sequence[float], b: Sequence[float], paired_seeds: bool, confidence: float = CONFIDENCE
) -> Interval:
    """mean(a) - mean(b) over per-seed scores, with a Student-t interval on the seeds' degrees of freedom:
    scipy.stats.ttest_rel when seed s of a and of b are paired, else Welch's ttest_ind.

    This is the check a bootstrap over a handful of seeds cannot make: resampling 3 seeds behaves like
    a normal interval on a variance shrunk by (n-1)/n, where Student's t with 2 degrees of freedom
    is 4.30 standard errors wide each side instead of 1.96. NaN bounds where a side has under 2 seeds.
    """
    import warnings

    import numpy as np
    from scipy import stats

    a_values, b_values = np.asarray(finite(a)), np.asarray(finite(b))
    estimate = float(a_values.mean() - b_values.mean()) if len(a_values) and len(b_values) else math.nan
    n = len(a_values) + len(b_values)
    if len(a_values) < 2 or len(b_values) < 2 or (paired_seeds and len(a_values) != len(b_values)):
        return point_only(estimate, n, T_METHOD)
    with warnings.catch_warnings():  # identical seeds: scipy warns, and the interval is the point or NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        if paired_seeds:
            result = stats.ttest_rel(a_values, b_values)
            standard_error = float(stats.sem(a_values - b_values))
        else:
            result = stats.ttest_ind(a_values, b_values, equal_var=False)
            standard_error = math.hypot(float(stats.sem(a_values)), float(stats.sem(b_values)))
        bounds = result.confidence_interval(confidence)
    return Interval(estimate, float(bounds.low), float(bounds.high), n, T_METHOD, standard_error, float(result.df))


def minimum_detectable_difference(
    standard_error: float, confidence: float = CONFIDENCE, power: float = POWER, df: float = math.inf
) -> float:
    """The smallest true difference a two-sided test at 1 - confidence finds with probability `power`:
    (q_{(1+confidence)/2} + q_{power}) * standard error, q the quantiles of Student's t with `df` degrees
    of freedom (the normal's when infinite); NaN without a spread."""
    from scipy import stats

    if not math.isfinite(standard_error) or standard_error <= 0:
        return math.nan
    quantile = stats.norm.ppf if math.isinf(df) or math.isnan(df) else stats.t(df).ppf
    return float((quantile((1 + confidence) / 2) + quantile(power)) * standard_error)


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
    area = sum((s1 - s0) * (v0 + v1) / 2 for (s0, v0), (s1, v1) in itertools.pairwise(points))
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
