"""Any reasoning-gym dataset; its `score_answer` is the reward."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any

from sspo_cli.tasks.base import (
    Example,
    Task,
    TaskError,
    alphabet_of,
    clamp_reward,
    fill_prompt,
    short_reason,
    split_examples,
    task_builder,
    unique_by_prompt,
)
from sspo_cli.tasks.config import ReasoningGymTask as ReasoningGymConfig

# create_dataset takes these from task.size and task.split_seed; in task.config they would clash.
RESERVED_CONFIG_KEYS = ("size", "seed")


@dataclass
class ReasoningGym(Task):
    dataset: Any = field(repr=False)  # the reasoning_gym ProceduralDataset; its score_answer is the reward

    def reward(self, completion: str, example: Example, truncated: bool = False) -> float:
        try:
            score = self.dataset.score_answer(completion.strip(), example.meta)
        except Exception:  # a scorer that chokes on a malformed completion means the completion is wrong
            return 0.0
        return clamp_reward(score)


@task_builder(ReasoningGymConfig)
def build_reasoning_gym(cfg: ReasoningGymConfig) -> ReasoningGym:
    dataset = _create_dataset(cfg)
    try:
        entries = list(dataset)
    except Exception as exc:
        raise TaskError(
            "task.config", f"reasoning-gym dataset {cfg.dataset!r} failed to generate examples: {short_reason(exc)}"
        ) from None
    examples = unique_by_prompt(_to_example(entry, cfg.dataset, cfg.prompt_template) for entry in entries)
    train, dev, eval_ = split_examples(examples, cfg.eval_size, cfg.dev_size, cfg.split_seed)
    return ReasoningGym(
        name="reasoning_gym",
        alphabet=alphabet_of(train, dev, eval_),
        train=train,
        dev=dev,
        eval=eval_,
        dataset=dataset,
    )


def _create_dataset(cfg: ReasoningGymConfig) -> Any:
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if cfg.dataset not in DATASETS:
        close = difflib.get_close_matches(cfg.dataset, list(DATASETS), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TaskError("task.dataset", f"unknown reasoning-gym dataset {cfg.dataset!r}{hint}")
    clashes = [key for key in RESERVED_CONFIG_KEYS if key in cfg.config]
    if clashes:
        raise TaskError("task.config", f"{', '.join(clashes)} cannot be set here: use task.size and task.split_seed")
    try:
        return reasoning_gym.create_dataset(cfg.dataset, size=cfg.size, seed=cfg.split_seed, **cfg.config)
    except (TypeError, ValueError, AssertionError) as exc:
        raise TaskError(
            "task.config", f"invalid config for reasoning-gym dataset {cfg.dataset!r}: {short_reason(exc)}"
        ) from None


def _to_example(entry: dict[str, Any], dataset_name: str, template: str) -> Example:
    if entry.get("answer") is None:
        # Without a gold answer there is nothing to warm-start on or to report accuracy against.
        raise TaskError("task.dataset", f"reasoning-gym dataset {dataset_name!r} gives entries without a gold answer")
    return Example(prompt=fill_prompt(template, str(entry["question"])), answer=str(entry["answer"]), meta=entry)
