"""Statistics of the research workflow against hand-computed values and against scipy's own results."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from sspo_cli.research.analysis.stats import (
    BOOTSTRAP_RESAMPLES,
    bootstrap_interval,
    curve_mean,
    default_ks,
    first_step_reaching,
    improvement_interval,
    improvement_probability_statistic,
    interquartile_mean,
    iqm_bootstrap_interval,
    mean_bootstrap_interval,
    mean_pass_at_k,
    minimum_detectable_difference,
    paired_difference_interval,
    pass_at_k,
    seed_difference_interval,
    stratified_mean,
    t_interval,
    tail_mean,
)

# Two-sided 95% critical values t_{0.975, df} from a printed t table.
T_TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 29: 2.045, 120: 1.980}


def scipy_percentile_bootstrap(samples, statistic):
    """scipy.stats.bootstrap as the project calls it: percentile method, fixed seed 0."""
    rng = np.random.default_rng(0)
    return stats.bootstrap(
        samples, statistic, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile", rng=rng, vectorized=True
    )


# --------------------------------------------------------------------------- Student t


@pytest.mark.parametrize("df,expected", sorted(T_TABLE_975.items()))
def test_t_interval_uses_the_printed_tables_critical_values(df: int, expected: float) -> None:
    values = [0.0] * df + [1.0]  # n = df + 1 values; half-width = t * s / sqrt(n)
    interval = t_interval(values)
    s = np.std(values, ddof=1)
    assert interval.half_width / (s / math.sqrt(df + 1)) == pytest.approx(expected, abs=5e-4)


def test_t_interval_three_values_by_hand() -> None:
    # values 1, 2, 3: mean 2, s = 1, se = 1/sqrt(3), t_{0.975,2} = 4.302653 -> half-width 2.484138
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval.estimate == 2.0
    assert interval.n == 3
    assert interval.half_width == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-9)
    assert (interval.low, interval.high) == pytest.approx((2 - 2.4841377117, 2 + 2.4841377117), rel=1e-9)
    assert interval.standard_error == pytest.approx(1 / math.sqrt(3))


def test_t_interval_known_numbers_five_seeds() -> None:
    # 0.62, 0.70, 0.66, 0.58, 0.64: mean 0.64, sum of squares of deviations 0.008, s^2 = 0.002
    # half-width = 2.776445 * sqrt(0.002) / sqrt(5) = 2.776445 * 0.02 = 0.0555289
    interval = t_interval([0.62, 0.70, 0.66, 0.58, 0.64])
    assert interval.estimate == pytest.approx(0.64)
    assert interval.half_width == pytest.approx(0.0555289, abs=1e-6)


def test_t_interval_degenerate_inputs() -> None:
    one = t_interval([0.5])
    assert one.estimate == 0.5 and not one.defined and math.isnan(one.half_width)
    empty = t_interval([])
    assert empty.n == 0 and math.isnan(empty.estimate)
    assert t_interval([1.0, float("nan"), 3.0, None]).n == 2  # undefined values are left out, not zeros
    assert t_interval([4.0, 4.0, 4.0]).half_width == 0.0


def test_t_interval_other_confidence() -> None:
    # 90%: t_{0.95,2} = 2.919986
    assert t_interval([1.0, 2.0, 3.0], confidence=0.90).half_width == pytest.approx(2.919986 / math.sqrt(3), rel=1e-6)


@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=30).filter(lambda v: np.std(v) > 1e-6))
def test_t_interval_is_scipys(values: list[float]) -> None:
    expected = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    interval = t_interval(values)
    assert (interval.low, interval.high) == pytest.approx(expected, rel=1e-9, abs=1e-9)


# --------------------------------------------------------------------------- IQM and bootstrap


def test_interquartile_mean_by_hand() -> None:
    # 8 values: 25% trimmed = 2 cut from each end -> mean(3, 4, 5, 6) = 4.5
    assert interquartile_mean(np.array([8.0, 1, 7, 2, 6, 3, 5, 4])) == pytest.approx(4.5)
    # over two strata the runs are pooled: .1 .2 .3 .4 .5 .6 .9 1.0 -> mean(.3, .4, .5, .6) = 0.45
    assert interquartile_mean(np.array([0.1, 0.9, 0.5, 0.6]), np.array([0.2, 0.3, 0.4, 1.0])) == pytest.approx(0.45)
    # 3 runs: int(0.25 * 3) = 0 cut, the IQM is the mean (scipy.stats.trim_mean's rule, as rliable uses it)
    assert interquartile_mean(np.array([0.1, 0.5, 0.9])) == pytest.approx(0.5)
    # the mean over strata is the mean of the strata's means (rliable's aggregate mean)
    assert stratified_mean(np.array([0.0, 1.0]), np.array([1.0, 1.0, 1.0, 1.0])) == pytest.approx(0.75)


def test_bootstrap_intervals_are_scipys_on_fixed_data() -> None:
    scores = [0.61, 0.70, 0.66, 0.58, 0.64, 0.72, 0.55, 0.69]
    expected = scipy_percentile_bootstrap(
        (scores,), lambda x, axis: stats.trim_mean(x, 0.25, axis=axis)
    ).confidence_interval
    interval = iqm_bootstrap_interval([scores])
    assert interval.estimate == pytest.approx(stats.trim_mean(scores, 0.25))
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high), rel=1e-12)
    expected = scipy_percentile_bootstrap((scores,), np.mean).confidence_interval
    interval = mean_bootstrap_interval([scores])
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high), rel=1e-12)


def test_stratified_bootstrap_resamples_within_each_stratum() -> None:
    easy, hard = [0.90, 0.91, 0.92], [0.10, 0.11, 0.12]
    stratified = mean_bootstrap_interval([easy, hard])
    expected = scipy_percentile_bootstrap((easy, hard), stratified_mean).confidence_interval
    assert (stratified.low, stratified.high) == pytest.approx((expected.low, expected.high), rel=1e-12)
    # pooling the runs would let a resample hold mostly easy or mostly hard runs: a far wider interval
    pooled = mean_bootstrap_interval([easy + hard])
    assert stratified.estimate == pytest.approx(pooled.estimate) == pytest.approx(0.51)
    assert stratified.half_width < 0.02
    assert pooled.half_width > 0.2


def test_bootstrap_with_too_few_values_gives_only_the_estimate() -> None:
    single = mean_bootstrap_interval([[0.4]])
    assert single.estimate == 0.4 and not single.defined and single.n == 1
    assert mean_bootstrap_interval([]).n == 0
    constant = iqm_bootstrap_interval([[0.5, 0.5, 0.5]])
    assert (constant.low, constant.high) == (0.5, 0.5)
    assert bootstrap_interval([[1.0, 2.0], [3.0]], stratified_mean).defined is False


# --------------------------------------------------------------------------- probability of improvement


@pytest.mark.parametrize(
    "x,y,expected",
    [
        ([1.0, 2.0, 3.0], [0.0, 2.0, 4.0], 4.5 / 9),  # wins 1>0 2>0 3>0 3>2, the tie 2=2 counts one half
        ([3.0, 4.0, 5.0], [1.0, 2.0], 1.0),
        ([1.0, 1.0], [1.0, 1.0], 0.5),  # rliable's value for identical scores
        ([0.2, 0.4], [0.3, 0.5, 0.1], 3 / 6),  # 0.2>0.1, 0.4>0.3, 0.4>0.1
    ],
)
def test_probability_of_improvement_by_hand(x: list[float], y: list[float], expected: float) -> None:
    statistic = improvement_probability_statistic(1)
    assert statistic(np.array(x), np.array(y)) == pytest.approx(expected)
    assert improvement_interval([x], [y]).estimate == pytest.approx(expected)


def test_probability_of_improvement_averages_strata_and_is_scipys_bootstrap() -> None:
    # stratum 1: x always above y (1.0); stratum 2: always below (0.0) -> 0.5
    assert improvement_interval([[5.0, 6.0], [0.0, 0.1]], [[1.0, 2.0], [3.0, 4.0]]).estimate == pytest.approx(0.5)
    x, y = [0.70, 0.74, 0.72, 0.69], [0.66, 0.70, 0.68]
    expected = scipy_percentile_bootstrap((x, y), lambda a, b, axis: stats.mannwhitneyu(a, b, axis=axis).statistic / 12)
    interval = improvement_interval([x], [y])
    assert interval.estimate == pytest.approx(stats.mannwhitneyu(x, y).statistic / 12)
    assert (interval.low, interval.high) == pytest.approx(
        (expected.confidence_interval.low, expected.confidence_interval.high)
    )


@given(st.lists(st.integers(0, 5), min_size=1, max_size=6), st.lists(st.integers(0, 5), min_size=1, max_size=6))
def test_probability_of_improvement_is_complementary(x: list[int], y: list[int]) -> None:
    statistic = improvement_probability_statistic(1)
    forward, backward = (
        statistic(np.array(x, float), np.array(y, float)),
        statistic(np.array(y, float), np.array(x, float)),
    )
    assert forward + backward == pytest.approx(1.0)


# --------------------------------------------------------------------------- paired differences


def seed_effect_data(drop: float = 0.05, problems: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Method a solves a seed-dependent share of the problems (60%, 70%, 80%: large seed variance);
    method b solves the same problems on the same seed except a few (about `drop` of them)."""
    rng = np.random.default_rng(7)
    a = np.vstack([rng.random(problems) < share for share in (0.6, 0.7, 0.8)]).astype(float)
    b = a * (rng.random(a.shape) >= drop)
    return a, b


def test_paired_difference_with_one_seed_is_a_bootstrap_over_problems() -> None:
    a, b = seed_effect_data()
    interval = paired_difference_interval(a[:1], b[:1], paired_seeds=True)
    differences = a[0] - b[0]
    expected = scipy_percentile_bootstrap((differences,), np.mean).confidence_interval
    assert interval.estimate == pytest.approx(differences.mean())
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high), rel=1e-12)


def test_paired_difference_separates_what_unpaired_t_intervals_cannot() -> None:
    a, b = seed_effect_data()
    unpaired_a, unpaired_b = t_interval(list(a.mean(axis=1))), t_interval(list(b.mean(axis=1)))
    assert unpaired_a.low < unpaired_b.high  # the seed-level intervals overlap widely
    paired = paired_difference_interval(a, b, paired_seeds=True)
    assert paired.estimate == pytest.approx(a.mean() - b.mean())
    assert paired.excludes(0.0) and paired.low > 0
    # without the seed pairing the seed variance comes back and the difference is lost
    assert not paired_difference_interval(a, b, paired_seeds=False).excludes(0.0)


def test_paired_difference_of_equally_good_methods_holds_zero() -> None:
    a, _ = seed_effect_data()
    other = a.copy()
    for seed in range(3):  # on each seed, 10 problems lost and 10 others gained: the same accuracy
        other[seed, np.flatnonzero(a[seed] == 1)[:10]] = 0
        other[seed, np.flatnonzero(a[seed] == 0)[:10]] = 1
    interval = paired_difference_interval(a, other, paired_seeds=True)
    assert interval.estimate == pytest.approx(0.0, abs=1e-12)
    assert interval.low < 0.0 < interval.high


def test_paired_difference_rejects_unaligned_problems() -> None:
    with pytest.raises(ValueError):
        paired_difference_interval(np.zeros((2, 5)), np.zeros((2, 6)), paired_seeds=True)
    with pytest.raises(ValueError):
        paired_difference_interval(np.zeros((2, 5)), np.zeros((3, 5)), paired_seeds=True)


def test_minimum_detectable_difference_formula() -> None:
    # (z_0.975 + z_0.80) = 1.959964 + 0.841621 = 2.801585
    assert minimum_detectable_difference(0.01) == pytest.approx(0.02801585, rel=1e-6)
    assert math.isnan(minimum_detectable_difference(0.0))
    assert math.isnan(minimum_detectable_difference(math.nan))
    # Student's t with 2 degrees of freedom, from the printed tables: t_0.975 = 4.303, t_0.80 = 1.061
    assert minimum_detectable_difference(0.01, df=2) == pytest.approx(0.01 * (4.3027 + 1.0607), rel=1e-3)


def test_seed_difference_interval_paired_is_the_textbook_paired_t() -> None:
    a, b = [0.633, 0.633, 0.688], [0.500, 0.500, 0.320]
    d = [0.133, 0.133, 0.368]
    centre, sd = sum(d) / 3, math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2)
    half = 4.302653 * sd / math.sqrt(3)  # t_{0.975, 2} from the printed tables
    interval = seed_difference_interval(a, b, paired_seeds=True)
    assert interval.estimate == pytest.approx(centre)
    assert (interval.low, interval.high) == pytest.approx((centre - half, centre + half), rel=1e-5)
    assert interval.df == 2 and not interval.excludes(0.0)  # +21 points, yet 3 seeds cannot tell it from 0


def test_seed_difference_interval_unpaired_is_welchs() -> None:
    a, b = [0.60, 0.70, 0.80, 0.65], [0.50, 0.52, 0.48]
    va, vb = np.var(a, ddof=1) / 4, np.var(b, ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 2)  # Welch-Satterthwaite, by hand
    half = stats.t.ppf(0.975, df) * math.sqrt(va + vb)
    interval = seed_difference_interval(a, b, paired_seeds=False)
    assert interval.df == pytest.approx(df)
    assert (interval.low, interval.high) == pytest.approx(
        (np.mean(a) - np.mean(b) - half, np.mean(a) - np.mean(b) + half)
    )


def test_seed_difference_interval_needs_two_seeds_a_side() -> None:
    interval = seed_difference_interval([0.7], [0.5], paired_seeds=True)
    assert interval.estimate == pytest.approx(0.2) and not interval.defined and not interval.excludes(0.0)


# --------------------------------------------------------------------------- pass@k


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (4, 1, 1, 1 / 4),  # pass@1 is c/n
        (4, 0, 3, 0.0),  # nothing correct
        (3, 2, 2, 1.0),  # n - c < k: every k-subset holds a correct sample
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (6, 2, 3, 1 - 4 / 20),  # 1 - C(4,3)/C(6,3)
        (8, 8, 8, 1.0),
    ],
)
def test_pass_at_k_by_hand(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_is_the_binomial_formula(case: tuple[int, int, int]) -> None:
    n, c, k = case
    assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_rejects_impossible_inputs() -> None:
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_mean_pass_at_k_and_default_ks() -> None:
    # prompts with 0, 1 and 4 correct of 4; pass@2 = mean(0, 1 - C(3,2)/C(4,2), 1) = mean(0, 0.5, 1)
    assert mean_pass_at_k([0, 1, 4], 4, 2) == pytest.approx(0.5)
    assert default_ks(1) == [1]
    assert default_ks(4) == [1, 2, 4]
    assert default_ks(10) == [1, 2, 4, 8, 10]


# --------------------------------------------------------------------------- curves


def test_curve_mean_is_area_over_span() -> None:
    # trapezoids over steps 0,1,2 with values 0,1,1: 0.5 + 1 = 1.5, span 2 -> 0.75
    assert curve_mean([0, 1, 2], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    # uneven steps: (0..2 at 0->1: area 1) + (2..3 at 1->1: area 1) = 2 over span 3
    assert curve_mean([0, 2, 3], [0.0, 1.0, 1.0]) == pytest.approx(2 / 3)
    assert curve_mean([5], [0.4]) == 0.4
    assert math.isnan(curve_mean([], []))
    assert curve_mean([0, 1, 2], [1.0, float("nan"), 1.0]) == pytest.approx(1.0)


def test_first_step_reaching_and_tail_mean() -> None:
    assert first_step_reaching([0, 10, 20, 30], [0.2, 0.5, 0.7, 0.6], 0.6) == 20
    assert math.isnan(first_step_reaching([0, 10], [0.2, 0.5], 0.6))
    assert tail_mean([1.0] * 18 + [3.0, 5.0]) == pytest.approx(4.0)  # last 10% of 20 = 2 values
    assert tail_mean([2.0, 7.0]) == 7.0  # at least one value
