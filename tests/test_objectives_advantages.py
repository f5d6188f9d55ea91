"""Group-relative advantages (spec: "Advantages"), checked against plain-Python formulas."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from sspo_cli.objectives import compute_advantages

REWARDS = [1.0, 0.0, 0.0, 1.0, 0.5, 0.25, 0.5, 0.0, 0.3, 0.3, 0.3, 0.3]
G = 4


def groups(values: list[float]) -> list[list[float]]:
    return [values[i : i + G] for i in range(0, len(values), G)]


def expected(scale: str) -> list[float]:
    batch_std = statistics.stdev(REWARDS)
    out = []
    for group in groups(REWARDS):
        mean = sum(group) / len(group)
        std = {"group": statistics.stdev(group), "batch": batch_std, "none": None}[scale]
        for r in group:
            if len(set(group)) == 1:
                out.append(0.0)
            else:
                out.append((r - mean) / (std + 1e-6) if std is not None else r - mean)
    return out


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_matches_the_formula(scale: str) -> None:
    advantages = compute_advantages(torch.tensor(REWARDS, dtype=torch.float64), G, scale)
    assert advantages.dtype == torch.float64
    assert advantages.tolist() == pytest.approx(expected(scale), rel=1e-12, abs=1e-15)


def test_default_scale_is_group() -> None:
    rewards = torch.tensor(REWARDS)
    torch.testing.assert_close(compute_advantages(rewards, G), compute_advantages(rewards, G, "group"))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_all_equal_group_gets_exactly_zero(scale: str) -> None:
    # 0.1 * 3 is not exactly 0.3 in floating point; the result must still be exactly 0.
    rewards = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.7], dtype=torch.float32)
    advantages = compute_advantages(rewards, 3, scale)
    assert torch.all(advantages[:3] == 0)
    assert torch.all(torch.isfinite(advantages))
    assert advantages[3] > 0 > advantages[4]


def test_every_group_equal_gives_zeros() -> None:
    advantages = compute_advantages(torch.ones(8), 4, "batch")
    assert torch.equal(advantages, torch.zeros(8))


def test_groups_are_contiguous_and_centred() -> None:
    rewards = torch.tensor([3.0, 1.0, 10.0, 30.0], dtype=torch.float64)
    advantages = compute_advantages(rewards, 2, "none")
    assert advantages.tolist() == [1.0, -1.0, -10.0, 10.0]


def test_group_of_one_is_zero() -> None:
    assert torch.equal(compute_advantages(torch.tensor([1.0, 0.0, 2.0]), 1), torch.zeros(3))


def test_integer_and_half_rewards_give_float32_at_least() -> None:
    assert compute_advantages(torch.tensor([1, 0, 1, 1]), 2).dtype == torch.float32
    half = compute_advantages(torch.tensor([1.0, 0.0], dtype=torch.float16), 2)
    assert half.dtype == torch.float32
    expected = 0.5 / (math.sqrt(0.5) + 1e-6)  # centred +-0.5, sample std sqrt(0.5)
    assert half.tolist() == pytest.approx([expected, -expected])


@pytest.mark.parametrize(
    ("rewards", "group_size", "scale", "match"),
    [
        (torch.ones(6), 4, "group", "group_size"),
        (torch.ones(6), 0, "group", "group_size"),
        (torch.ones(2, 3), 3, "group", "rewards"),
        (torch.ones(6), 3, "std", "scale"),
    ],
)
def test_bad_arguments_raise_value_error(rewards, group_size, scale, match) -> None:
    with pytest.raises(ValueError, match=match):
        compute_advantages(rewards, group_size, scale)
