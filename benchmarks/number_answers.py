"""Where the right number sits in a run's held-out greedy answers, before RL and after: decode the held-out
split with the recipe's starting model and with the run's final weights, and sort every answer.

    python benchmarks/number_answers.py RUN_DIR [RUN_DIR ...]

For tasks whose reward reads the last number of a completion (a `regex` reward such as `(-?\\d+)`).
Each answer is `last number right`, `right number, not last` (the model wrote the answer and went on) or
`right number absent`, and either ended (at the end token) or `cut off` at the token limit. The reward
counts only `last number right, ended` (a cut-off answer scores 0); the answers holding the right number
anywhere bound what learning to answer and stop alone could reach, so a final figure above that bound is
arithmetic the model did not state before. The starting model is decoded once per recipe.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from held_out import greedy_answers, run_recipe  # noqa: E402

from sspo_cli.models import load_policy  # noqa: E402
from sspo_cli.models.lora import load_trained  # noqa: E402
from sspo_cli.tasks import build_task  # noqa: E402

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sspo_cli.recipe import Recipe
    from sspo_cli.tasks import Task

INTEGER = re.compile(r"-?\d+")


def answer_kind(completion: str, gold: str, truncated: bool) -> str:
    numbers = INTEGER.findall(completion.replace(",", ""))
    if numbers and numbers[-1] == gold:
        kind = "last number right"
    else:
        kind = "right number, not last" if gold in numbers else "right number absent"
    return f"{kind}, {'cut off' if truncated else 'ended'}"


def anatomy(
    recipe: Recipe, task: Task, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> tuple[Counter, float]:
    """(kinds of answer, mean length in tokens) on the task's held-out split."""
    kinds: Counter = Counter()
    lengths: list[int] = []
    for example, completion, truncated in greedy_answers(recipe, task, model, tokenizer):
        kinds[answer_kind(completion, example.answer, truncated)] += 1
        lengths.append(len(tokenizer(completion, add_special_tokens=False).input_ids))
    return kinds, sum(lengths) / len(lengths)


def report(label: str, kinds: Counter, mean_length: float) -> str:
    problems = sum(kinds.values())
    shares = "; ".join(f"{kind} {kinds[kind] / problems:.1%}" for kind in sorted(kinds))
    return f"  {label} (mean {mean_length:.1f} tokens): {shares}"


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    args = parser.parse_args(argv)
    starts: dict[str, str] = {}
    for run_dir in args.run_dirs:
        recipe, checkpoint = run_recipe(run_dir)
        task = build_task(recipe.task)
        start_key = recipe.model.model_dump_json() + recipe.task.model_dump_json()
        if start_key not in starts:
            starts[start_key] = report("start", *anatomy(recipe, task, *load_policy(recipe.model, "", recipe.seed)))
        print(run_dir)
        print(starts[start_key])
        print(report("final", *anatomy(recipe, task, *load_trained(recipe.model, checkpoint))))


if __name__ == "__main__":
    main()
