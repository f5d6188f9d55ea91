"""The analysis scripts under benchmarks/: how a sort answer's mistake is named."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from sort_errors import error_kind  # noqa: E402


def test_error_kinds_of_sorted_digit_strings() -> None:
    gold = "0011223344"
    assert error_kind(gold + "\n", gold) == "exact"
    assert error_kind("001122334", gold) == "wrong length"
    assert error_kind("0011223444", gold) == "1 digit(s) miscounted"  # one 3 became a 4
    assert error_kind("0001223445", gold) == "2 digit(s) miscounted"
    assert error_kind("0011223443", gold) == "unsorted, 0 digit(s) miscounted"  # the right digits, out of order
