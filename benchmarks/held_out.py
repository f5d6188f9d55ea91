"""A run's held-out split decoded greedily, for the analysis scripts under benchmarks/ (`sort_errors.py`,
`number_answers.py`): the run's recipe and final weights, and each problem with its answer."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sspo_cli.research.execution.evaluation import eval_recipe, resolve_target  # noqa: E402
from sspo_cli.rollout.collect import generate  # noqa: E402
from sspo_cli.rollout.prompts import text_format  # noqa: E402

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sspo_cli.recipe import Recipe
    from sspo_cli.tasks import Example, Task

BATCH_SIZE = 64


def run_recipe(run_dir: str) -> tuple[Recipe, Path]:
    """The recipe a run trained with, and the checkpoint folder of its final weights."""
    target = resolve_target(run_dir, None, Path(run_dir).parent)
    return eval_recipe(target, None, None, []), target.checkpoint


def greedy_answers(
    recipe: Recipe, task: Task, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> Iterator[tuple[Example, str, bool]]:
    """(problem, greedy answer, cut off at the token limit) for every problem of the held-out split."""
    text = text_format(recipe, tokenizer)
    max_new = recipe.eval.max_new_tokens or recipe.rollout.max_new_tokens
    for start in range(0, len(task.eval), BATCH_SIZE):
        batch = task.eval[start : start + BATCH_SIZE]
        rollout = generate(model, tokenizer, [e.prompt for e in batch], max_new, None, text=text)
        yield from zip(batch, rollout.completions, rollout.truncated)
