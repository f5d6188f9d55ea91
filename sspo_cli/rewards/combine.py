"""A task's reward: the weighted mean of its rewards, and correctness from its answer rewards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sspo_cli.rewards.config import BaseRewardConfig, infer_format_styles
from sspo_cli.rewards.functions import GOLD_CHECKS, REWARD_FUNCTIONS


@dataclass(frozen=True, slots=True)
class Grade:
    reward: float  # in [0, 1]
    correct: bool  # what accuracy counts


@dataclass(frozen=True)
class Scorer:
    rewards: tuple[BaseRewardConfig, ...]

    def __post_init__(self) -> None:
        if not any(r.is_answer for r in self.rewards):
            raise ValueError("the rewards need at least one answer reward (all but 'format' are)")

    def grade(self, completion: str, gold: str, truncated: bool = False) -> Grade:
        """Reward: sum(weight * score) / sum(weight). Correct: every answer reward scored 1."""
        scores = [_clamped(REWARD_FUNCTIONS[r.name](completion, gold, truncated, r)) for r in self.rewards]
        total = sum(r.weight for r in self.rewards)
        reward = sum(r.weight * s for r, s in zip(self.rewards, scores)) / total
        correct = all(s >= 1.0 for r, s in zip(self.rewards, scores) if r.is_answer)
        return Grade(reward=min(1.0, max(0.0, reward)), correct=correct)

    def gold_problem(self, gold: str) -> tuple[int, str] | None:
        """(index of the reward, why) for the first reward that cannot read this gold answer; None if all can."""
        for index, reward in enumerate(self.rewards):
            check = GOLD_CHECKS.get(reward.name)
            reason = check(gold, reward) if check is not None else None
            if reason is not None:
                return index, reason
        return None


def scorer(rewards: Sequence[BaseRewardConfig]) -> Scorer:
    """The rewards' scorer; a format reward without a style takes the answer reward's (as the recipe does)."""
    return Scorer(tuple(infer_format_styles(list(rewards))))


def _clamped(value: float) -> float:
    return 0.0 if value != value else min(1.0, max(0.0, float(value)))
