"""Embedded task: `AB+CD=` -> the exact sum."""

from __future__ import annotations

from dataclasses import dataclass

from sspo_cli.tasks.base import Example, Task, TaskError, fill_prompt, split_examples, task_builder
from sspo_cli.tasks.config import AdditionTask as AdditionConfig

# Fixed, not derived from the data, so the tokenizer is the same for every operand range.
ADDITION_ALPHABET = "".join(sorted(set("0123456789+-=* ")))
# Every pair becomes an Example in memory; beyond this the task is too big to enumerate.
MAX_PAIRS = 1_000_000


@dataclass
class Addition(Task):
    def reward(self, completion: str, example: Example, truncated: bool = False) -> float:
        return 1.0 if completion.strip() == example.answer else 0.0


@task_builder(AdditionConfig)
def build_addition(cfg: AdditionConfig) -> Addition:
    width = cfg.max_operand - cfg.min_operand + 1
    if width < 1:
        raise TaskError("task.max_operand", f"max_operand {cfg.max_operand} is below min_operand {cfg.min_operand}")
    pairs = width * width
    if pairs > MAX_PAIRS:
        raise TaskError(
            "task.max_operand",
            f"{pairs:,} operand pairs is too many to enumerate (at most {MAX_PAIRS:,}: "
            f"max_operand - min_operand must be below {int(MAX_PAIRS**0.5)})",
        )
    operands = range(cfg.min_operand, cfg.max_operand + 1)
    examples = [
        Example(prompt=fill_prompt(cfg.prompt_template, f"{a}+{b}="), answer=str(a + b))
        for a in operands
        for b in operands
    ]
    train, dev, eval_ = split_examples(examples, cfg.eval_size, cfg.dev_size, cfg.split_seed)
    # A template's own characters join the fixed alphabet (the default template has none).
    alphabet = "".join(sorted(set(ADDITION_ALPHABET + fill_prompt(cfg.prompt_template, ""))))
    return Addition(name="addition", alphabet=alphabet, train=train, dev=dev, eval=eval_)
