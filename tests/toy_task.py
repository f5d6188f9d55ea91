"""A fifth task, added the way a task is added: a config model and its builder, both registered
through `sspo_cli.tasks` and nothing else. Import it before `sspo_cli.recipe`.

`countdown`: `7,6,5=` -> the integers from `start` down to 1, each reward exact match.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from sspo_cli.tasks import Example, Task, TaskBase, register_task, task_builder
from sspo_cli.tasks.base import fill_prompt, split_examples


@register_task
class CountdownTask(TaskBase):
    """Toy task: a number -> the integers from it down to 1."""

    name: Literal["countdown"] = "countdown"
    largest: int = Field(40, ge=8, le=1000, description="Largest start of a countdown.")


@dataclass
class Countdown(Task):
    def reward(self, completion: str, example: Example, truncated: bool = False) -> float:
        return 1.0 if completion.strip() == example.answer else 0.0


@task_builder(CountdownTask)
def build_countdown(cfg: CountdownTask) -> Countdown:
    examples = [
        Example(prompt=fill_prompt(cfg.prompt_template, f"{n}="), answer=",".join(str(k) for k in range(n, 0, -1)))
        for n in range(1, cfg.largest + 1)
    ]
    train, dev, eval_ = split_examples(examples, cfg.eval_size, cfg.dev_size, cfg.split_seed)
    return Countdown(name="countdown", alphabet="".join(sorted(set("0123456789,="))), train=train, dev=dev, eval=eval_)
