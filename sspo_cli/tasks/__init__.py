"""Verifiable tasks: train/dev/eval splits of (prompt, gold answer) examples and a reward in [0, 1].

`build_task(recipe.task)` is the entry point. Each task is a config model in `config.py` marked
`@register_task` (the recipe's `task` union) and a module here with its `Task` subclass and its builder
marked `@task_builder(ThatConfig)`; every module of this package is imported below, so a new one needs
no line here. Heavy libraries (datasets, reasoning_gym) are imported inside the builders that need them,
so importing this package is instant.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from sspo_cli.tasks.addition import ADDITION_ALPHABET, Addition
from sspo_cli.tasks.base import TASK_BUILDERS, Example, Task, TaskError, task_builder
from sspo_cli.tasks.config import TASK_CONFIGS, TaskBase, register_task, task_names
from sspo_cli.tasks.files import LocalFile
from sspo_cli.tasks.gym import ReasoningGym
from sspo_cli.tasks.sort import Sort

for _module in pkgutil.iter_modules(__path__):  # each task module registers its builder when imported
    importlib.import_module(f"{__name__}.{_module.name}")


def build_task(cfg: Any) -> Task:
    """The task for a recipe's `task` section. Raises TaskError (naming the recipe key) on bad input."""
    builder = TASK_BUILDERS.get(type(cfg))
    if builder is None:
        name = getattr(cfg, "name", None)
        if type(cfg) in TASK_CONFIGS.values():
            raise TaskError("task.name", f"task {name!r} has no builder (mark one with @task_builder)")
        names = ", ".join(n for n, config in TASK_CONFIGS.items() if config in TASK_BUILDERS)
        raise TaskError("task.name", f"unknown task {name!r} (choose from {names})")
    return builder(cfg)


__all__ = [
    "ADDITION_ALPHABET",
    "TASK_BUILDERS",
    "TASK_CONFIGS",
    "Addition",
    "Example",
    "LocalFile",
    "ReasoningGym",
    "Sort",
    "Task",
    "TaskBase",
    "TaskError",
    "build_task",
    "register_task",
    "task_builder",
    "task_names",
]
