"""Statistics of the research workflow against hand-computed values."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sspo_cli.research.stats import (
    curve_mean,
    default_ks,
    first_step_reaching,
    mean_pass_at_k,
    pass_at_k,
    sample_std,
    student_t_cdf,
    student_t_quantile,
    t_interval,
    tail_mean,
)

# Two-sided 95% critical values t_{0.975, df} from a printed t table.
T_TABLE_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 29: 2.045, 120: 1.980}


@pytest.mark.parametrize("df,expected", sorted(T_TABLE_975.items()))
def test_t_quantile_matches_the_printed_table(df: int, expected: float) -> None:
    assert student_t_quantile(0.975, df) == pytest.approx(expected, abs=5e-4)


def test_t_quantile_closed_forms() -> None:
    # df=1 is the Cauchy distribution: t_p = tan(pi (p - 1/2)); df=2: t_p = (2p-1) sqrt(2 / (4p(1-p)))
    for p in (0.6, 0.9, 0.975, 0.995):
        assert student_t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)
        assert student_t_quantile(p, 2) == pytest.approx((2 * p - 1) * math.sqrt(2 / (4 * p * (1 - p))), rel=1e-10)
    assert student_t_quantile(0.025, 4) == pytest.approx(-student_t_quantile(0.975, 4), rel=1e-12)
    assert student_t_cdf(0.0, 7) == pytest.approx(0.5)


def test_t_interval_three_values_by_hand() -> None:
    # values 1, 2, 3: mean 2, s = 1, se = 1/sqrt(3), t_{0.975,2} = 4.302653 -> half-width 2.484138
    interval = t_interval([1.0, 2.0, 3.0])
    assert interval.mean == 2.0
    assert interval.n == 3
    assert interval.half_width == pytest.approx(4.302652729749464 / math.sqrt(3), rel=1e-9)
    assert (interval.low, interval.high) == pytest.approx((2 - 2.4841377117, 2 + 2.4841377117), rel=1e-9)


def test_t_interval_known_numbers_five_seeds() -> None:
    # 0.62, 0.70, 0.66, 0.58, 0.64: mean 0.64, sum of squares of deviations 0.008, s^2 = 0.002
    # half-width = 2.776445 * sqrt(0.002) / sqrt(5) = 2.776445 * 0.02 = 0.0555289
    interval = t_interval([0.62, 0.70, 0.66, 0.58, 0.64])
    assert interval.mean == pytest.approx(0.64)
    assert sample_std([0.62, 0.70, 0.66, 0.58, 0.64]) == pytest.approx(math.sqrt(0.002))
    assert interval.half_width == pytest.approx(0.0555289, abs=1e-6)


def test_t_interval_degenerate_inputs() -> None:
    assert math.isnan(t_interval([0.5]).half_width) and t_interval([0.5]).mean == 0.5
    empty = t_interval([])
    assert empty.n == 0 and math.isnan(empty.mean)
    assert t_interval([1.0, float("nan"), 3.0, None]).n == 2  # undefined values are left out, not zeros
    assert t_interval([4.0, 4.0, 4.0]).half_width == 0.0


def test_t_interval_other_confidence() -> None:
    # 90%: t_{0.95,2} = 2.919986
    assert t_interval([1.0, 2.0, 3.0], confidence=0.90).half_width == pytest.approx(2.919986 / math.sqrt(3), rel=1e-6)


def test_t_quantile_agrees_with_scipy_where_installed() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 7, 30, 1000):
        for p in (0.55, 0.9, 0.975, 0.9995):
            assert student_t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9)


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
