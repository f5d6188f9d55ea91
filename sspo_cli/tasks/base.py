"""Core types of the tasks package: examples, the task interface, splitting, errors."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sspo_cli.errors import InputError
from sspo_cli.rewards import Grade

if TYPE_CHECKING:
    from sspo_cli.tasks.config import TaskBase


@dataclass(frozen=True, slots=True)
class Example:
    prompt: str  # text fed to the model, e.g. "37+45="
    answer: str  # gold completion WITHOUT any end-of-sequence token, e.g. "82"
    # Extra data the task's scorer needs (e.g. the reasoning-gym entry). Not hashed: it may hold dicts.
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass
class Task:
    """A verifiable task: three disjoint splits and a reward in [0, 1] (1.0 means correct)."""

    name: str
    alphabet: str  # sorted, de-duplicated characters of every prompt and answer of all splits
    # Not in the repr: a task holds thousands of examples.
    train: list[Example] = field(repr=False)
    dev: list[Example] = field(repr=False)
    eval: list[Example] = field(repr=False)

    def reward(self, completion: str, example: Example, truncated: bool = False) -> float:
        """`truncated`: the completion ended without <eos> (it hit max_new_tokens)."""
        raise NotImplementedError

    def grade(self, completion: str, example: Example, truncated: bool = False) -> Grade:
        """The reward and whether the completion counts as correct (by default: reward 1)."""
        reward = self.reward(completion, example, truncated)
        return Grade(reward=reward, correct=reward >= 1.0)

    def fingerprint(self) -> str:
        """Hash of the splits' text: changes when the data does (e.g. a task file edited in place)."""
        digest = hashlib.sha256(f"{self.name}\0{self.alphabet}".encode())
        for split in (self.train, self.dev, self.eval):
            digest.update(b"\1")
            for example in split:
                digest.update(f"{example.prompt}\0{example.answer}\0".encode())
        return digest.hexdigest()[:16]


class TaskError(InputError):
    """Bad task input. The message is one line and starts with the recipe key, e.g. `task.path: ...`."""


def split_examples(
    examples: Sequence[Example], eval_size: int, dev_size: int, seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """Shuffle with `seed`, then take eval, dev, and the rest as train: (train, dev, eval).

    The input must already be de-duplicated by prompt, so the splits share no prompt.
    """
    if eval_size + dev_size >= len(examples):
        raise TaskError(
            "task.eval_size",
            f"eval_size {eval_size} + dev_size {dev_size} leaves no training examples "
            f"out of {len(examples)} distinct examples",
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    shuffled = [examples[i] for i in order]
    return shuffled[eval_size + dev_size :], shuffled[eval_size : eval_size + dev_size], shuffled[:eval_size]


Builder = Callable[[Any], Task]

TASK_BUILDERS: dict[type[TaskBase], Builder] = {}
"""Each task's builder, by its config model (from ``sspo_cli.tasks.config``)."""


def task_builder(config: type[TaskBase]) -> Callable[[Builder], Builder]:
    """Decorator: the function builds the task whose config model is `config` (registered with ``@register_task``)."""

    def register(function: Builder) -> Builder:
        if config in TASK_BUILDERS:
            raise ValueError(f"task {config.model_fields['name'].default!r} has two builders")
        TASK_BUILDERS[config] = function
        return function

    return register


def fill_prompt(template: str, question: str) -> str:
    """The recipe's `task.prompt_template` with the question in place of `{question}` (checked by the recipe)."""
    return template.format(question=question)


def unique_by_prompt(examples: Iterable[Example]) -> list[Example]:
    """Keep the first example of each distinct prompt, in order."""
    seen: set[str] = set()
    kept: list[Example] = []
    for example in examples:
        if example.prompt not in seen:
            seen.add(example.prompt)
            kept.append(example)
    return kept


def alphabet_of(*splits: Iterable[Example]) -> str:
    chars: set[str] = set()
    for split in splits:
        for example in split:
            chars.update(example.prompt)
            chars.update(example.answer)
    return "".join(sorted(chars))


def clamp_reward(value: Any) -> float:
    """A scorer's output as a float in [0, 1]; anything unusable (None, NaN, non-numbers) is 0."""
    try:
        reward = float(value)
    except (TypeError, ValueError):
        return 0.0
    if reward != reward:  # NaN
        return 0.0
    return min(1.0, max(0.0, reward))


def short_reason(exc: BaseException, limit: int = 200) -> str:
    """A library error as one short line: the innermost cause's first line, never a traceback."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
