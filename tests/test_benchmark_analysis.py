"""The analysis scripts under benchmarks/: how a sort answer's mistake is named, where a number answer sits."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from number_answers import answer_kind  # noqa: E402
from sort_errors import error_kind  # noqa: E402


def test_error_kinds_of_sorted_digit_strings() -> None:
    gold = "0011223344"
    assert error_kind(gold + "\n", gold) == "exact"
    assert error_kind("001122334", gold) == "wrong length"
    assert error_kind("0011223444", gold) == "1 digit(s) miscounted"  # one 3 became a 4
    assert error_kind("0001223445", gold) == "2 digit(s) miscounted"
    assert error_kind("0011223443", gold) == "unsorted, 0 digit(s) miscounted"  # the right digits, out of order


def test_where_the_right_number_sits_in_an_answer() -> None:
    assert answer_kind("13 * 15 = 195", "195", truncated=False) == "last number right, ended"
    assert answer_kind("It is 1,950 / 10 = 195", "195", truncated=True) == "last number right, cut off"
    assert (
        answer_kind("13 * 15 = 195\n\nThis takes 2 steps", "195", truncated=True) == "right number, not last, cut off"
    )
    assert answer_kind("13 * 15 = 190", "195", truncated=False) == "right number absent, ended"
    assert answer_kind("4 - 9 = -5", "-5", truncated=False) == "last number right, ended"
    assert answer_kind("4 - 9 = 5", "-5", truncated=False) == "right number absent, ended"
