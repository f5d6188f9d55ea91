"""Verifiable tasks: train/dev/eval splits of (prompt, gold answer) examples and a reward in [0, 1].

`build_task(recipe.task)` is the entry point. Heavy libraries (datasets, reasoning_gym) are imported
inside the builders that need them, so importing this package is instant.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sspo_cli.tasks.addition import ADDITION_ALPHABET, Addition, build_addition
from sspo_cli.tasks.base import Example, Task, TaskError
from sspo_cli.tasks.files import LocalFile, build_file
from sspo_cli.tasks.gym import ReasoningGym, build_reasoning_gym
from sspo_cli.tasks.sort import Sort, build_sort

# task.name -> builder taking that kind's config from sspo_cli.recipe.
BUILDERS: dict[str, Callable[[Any], Task]] = {
    "addition": build_addition,
    "sort": build_sort,
    "reasoning_gym": build_reasoning_gym,
    "file": build_file,
}


def build_task(cfg: Any) -> Task:
    """The task for a recipe's `task` section. Raises TaskError (naming the recipe key) on bad input."""
    builder = BUILDERS.get(cfg.name)
    if builder is None:
        raise TaskError("task.name", f"unknown task {cfg.name!r} (choose from {', '.join(BUILDERS)})")
    return builder(cfg)


__all__ = [
    "ADDITION_ALPHABET",
    "BUILDERS",
    "Addition",
    "Example",
    "LocalFile",
    "ReasoningGym",
    "Sort",
    "Task",
    "TaskError",
    "build_task",
]
