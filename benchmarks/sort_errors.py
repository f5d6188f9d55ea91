"""What the wrong answers of a `sort` run look like: decode the held-out split greedily with a run's final
weights and count, per answer, how it differs from the sorted string.

    python benchmarks/sort_errors.py RUN_DIR [RUN_DIR ...]

Exact match of a long sorted string flips with one digit, so a run's exact accuracy can swing by tens of
points while its similarity reward barely moves; this shows which mistakes are behind a figure. Each
answer is `exact`, `wrong length`, or `k digit(s) miscounted` (same length: the multiset of digits differs
in k places), `unsorted` when the answer is not in order.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from held_out import greedy_answers, run_recipe  # noqa: E402

from sspo_cli.models.lora import load_trained  # noqa: E402
from sspo_cli.tasks import build_task  # noqa: E402


def error_kind(answer: str, gold: str) -> str:
    answer = answer.strip()
    if answer == gold:
        return "exact"
    if len(answer) != len(gold):
        return "wrong length"
    difference = collections.Counter(answer)
    difference.subtract(collections.Counter(gold))
    miscounted = sum(abs(v) for v in difference.values()) // 2
    order = "" if list(answer) == sorted(answer) else "unsorted, "
    return f"{order}{miscounted} digit(s) miscounted"


def anatomy(run_dir: str) -> tuple[collections.Counter, float, int]:
    """(kinds of answer, mean reward, problems) of the run's final weights on its held-out split."""
    recipe, checkpoint = run_recipe(run_dir)
    task = build_task(recipe.task)
    kinds: collections.Counter = collections.Counter()
    rewards: list[float] = []
    for example, answer, truncated in greedy_answers(recipe, task, *load_trained(recipe.model, checkpoint)):
        kinds[error_kind(answer, example.answer)] += 1
        rewards.append(task.grade(answer, example, truncated).reward)
    return kinds, sum(rewards) / len(rewards), len(rewards)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    args = parser.parse_args(argv)
    for run_dir in args.run_dirs:
        kinds, reward, problems = anatomy(run_dir)
        summary = ", ".join(f"{kind} {count}" for kind, count in kinds.most_common())
        print(f"{run_dir}: exact {kinds['exact'] / problems:.1%}, mean reward {reward:.4f}; {summary}")


if __name__ == "__main__":
    main()
