"""Greedy accuracy (or sampled accuracy at a temperature) of a policy on a split, graded by the task."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from sspo_cli.rollout.collect import generate, grade_all

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sspo_cli.recipe import PerformanceConfig
    from sspo_cli.rewards import Grade
    from sspo_cli.rollout.prompts import TextFormat
    from sspo_cli.tasks import Example, Task


class ProblemResult(NamedTuple):
    """One held-out problem's greedy answer, as the task graded it."""

    prompt: str
    correct: bool
    reward: float | None  # None: not kept (per-problem files written before rewards were)


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # share of completions graded correct (reward 1, or every answer reward 1)
    mean_reward: float
    mean_length: float  # completion tokens, <eos> included
    size: int
    problems: tuple[ProblemResult, ...] = ()  # per example, in order

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}/accuracy": self.accuracy,
            f"{prefix}/mean_reward": self.mean_reward,
            f"{prefix}/mean_length": self.mean_length,
        }


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int,
    temperature: float | None = None,
    performance: PerformanceConfig | None = None,
    text: TextFormat | None = None,
) -> EvalResult:
    """Greedy (default) or sampled decoding of every example, scored by the task; `text` as in `generate`."""
    grades: list[Grade] = []
    lengths: list[float] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        prompts = [e.prompt for e in batch]
        rollout = generate(model, tokenizer, prompts, max_new_tokens, temperature, performance, text=text)
        grades += grade_all(task, batch, rollout.completions, rollout.truncated)
        lengths += rollout.completion_mask.sum(1).tolist()
    model.train(was_training)
    n = max(len(grades), 1)
    return EvalResult(
        accuracy=sum(g.correct for g in grades) / n,
        mean_reward=sum(g.reward for g in grades) / n,
        mean_length=sum(lengths) / n,
        size=len(grades),
        problems=tuple(ProblemResult(e.prompt, g.correct, g.reward) for e, g in zip(examples, grades)),
    )
