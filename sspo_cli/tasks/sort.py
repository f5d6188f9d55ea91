"""Embedded long-completion task: `58317=` -> `13578`, the digits in ascending order.

The completion is as long as the prompt's digit string (a knob, `task.length`), so importance
weights are products over many tokens; the default reward gives partial credit by similarity.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sspo_cli.tasks.base import Example, Task, fill_prompt, task_builder
from sspo_cli.tasks.config import SortTask as SortConfig

SORT_ALPHABET = "".join(sorted(set("0123456789=")))


@dataclass
class Sort(Task):
    exact_only: bool = False

    def reward(self, completion: str, example: Example, truncated: bool = False) -> float:
        text = completion.strip()
        if self.exact_only:
            return 1.0 if text == example.answer else 0.0
        return similarity(text, example.answer)


def similarity(text: str, gold: str) -> float:
    """difflib's ratio: 2 * matched characters / (len(text) + len(gold)); 1.0 only for equal strings."""
    from difflib import SequenceMatcher

    return SequenceMatcher(None, text, gold, autojunk=False).ratio()


@task_builder(SortConfig)
def build_sort(cfg: SortConfig) -> Sort:
    """Distinct random digit strings for eval, dev and train (in that order, from task.split_seed)."""
    rng = random.Random(cfg.split_seed)
    symbols = "0123456789"[: cfg.digits]
    seen: set[str] = set()
    splits: list[list[Example]] = []
    for size in (cfg.eval_size, cfg.dev_size, cfg.train_size):
        split = []
        while len(split) < size:
            question = "".join(rng.choice(symbols) for _ in range(cfg.length))
            if question in seen:
                continue
            seen.add(question)
            split.append(
                Example(prompt=fill_prompt(cfg.prompt_template, question + "="), answer="".join(sorted(question)))
            )
        splits.append(split)
    eval_, dev, train = splits
    alphabet = "".join(sorted(set(SORT_ALPHABET + fill_prompt(cfg.prompt_template, ""))))
    return Sort(name="sort", alphabet=alphabet, train=train, dev=dev, eval=eval_, exact_only=cfg.reward == "exact")
