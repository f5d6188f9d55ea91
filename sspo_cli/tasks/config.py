"""Task configs: one Pydantic model per task, discriminated by ``name``, and the one list of tasks.

``@register_task`` puts a config model on ``TASK_CONFIGS``, from which the recipe's ``task`` union is
built; the task's builder is registered beside its ``Task`` subclass in its module of ``sspo_cli.tasks``
(``@task_builder(ThatConfig)``). Adding a task: a config model here, a module there.
No heavy imports here (no torch, datasets or reasoning_gym): ``sspo validate`` imports this module.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sspo_cli.rewards.config import REWARD_CONFIGS, infer_format_styles, reward_config_union

PROMPT_FIELDS = ("question",)


class TaskBase(BaseModel):
    """Fields every task shares."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    eval_size: int = Field(256, ge=1, description="Held-out eval examples (never trained on).")
    dev_size: int = Field(256, ge=0, description="Held-out dev examples (for choices such as stopping the warm start).")
    split_seed: int = Field(1234, description="Seed of the train/dev/eval split.")
    prompt_template: str = Field(
        "{question}",
        min_length=1,
        description="The prompt of each example, with `{question}` standing for its question (the data's prompt "
        "column, the reasoning-gym question, `AB+CD=`). Python format syntax: a literal brace is written twice, "
        "as in '{question} Put the answer in \\boxed{{}}.'. Default: the question as it is. See docs/prompts.md.",
    )
    system_prompt: str | None = Field(
        None,
        min_length=1,
        description="System message placed before the prompt by the chat template (needs model.chat_template on or auto "
        "with a tokenizer that has one).",
    )

    @field_validator("prompt_template")
    @classmethod
    def _template_fields(cls, value: str) -> str:
        check_prompt_template(value)
        return value

    def character_lengths(self) -> tuple[int, int] | None:
        """(longest prompt, gold completion with <eos>) in tokens of the tiny model's character tokenizer, where
        every example has a known length (None: they vary)."""
        return None


Config = TypeVar("Config", bound=type[TaskBase])

TASK_CONFIGS: dict[str, type[TaskBase]] = {}
"""Every task: its name -> its config model, in the order they were registered."""

_in_use = False  # set once a union of the configs exists: a recipe model built on it would miss later ones


def register_task(config: Config) -> Config:
    """Class decorator: add a task's config model; its ``name`` field's default is the task's name.

    Register before anything builds the union (importing ``sspo_cli.recipe`` does): the recipe
    model is built once, from the tasks registered at that moment.
    """
    name = config.model_fields["name"].default
    if name in TASK_CONFIGS:
        raise ValueError(f"task {name!r} is registered twice")
    if _in_use:
        raise RuntimeError(
            f"task {name!r} registered after the task union was built (import it before sspo_cli.recipe)"
        )
    TASK_CONFIGS[name] = config
    return config


@register_task
class AdditionTask(TaskBase):
    """Embedded task: `AB+CD=` -> the exact sum."""

    name: Literal["addition"] = "addition"
    min_operand: int = Field(10, ge=0, description="Smallest operand.")
    max_operand: int = Field(99, ge=1, le=10**9, description="Largest operand.")

    @model_validator(mode="after")
    def _range(self) -> AdditionTask:
        pairs = (self.max_operand - self.min_operand + 1) ** 2
        if self.max_operand < self.min_operand:
            raise ValueError("max_operand must be >= min_operand")
        if pairs <= self.eval_size + self.dev_size:
            raise ValueError(f"only {pairs} operand pairs: not enough for eval_size + dev_size + a train split")
        return self


@register_task
class SortTask(TaskBase):
    """Embedded long-completion task: a string of digits -> the same digits in ascending order."""

    name: Literal["sort"] = "sort"
    length: int = Field(
        64,
        ge=2,
        le=4096,
        description="Digits per example: with the tiny model's character tokenizer each completion is this many "
        "tokens plus <eos> (set rollout.max_new_tokens to at least length + 1 and model.tiny.max_positions to at "
        "least 2 * length + 2).",
    )
    digits: int = Field(10, ge=2, le=10, description="The digits are drawn uniformly from 0 .. digits - 1.")
    train_size: int = Field(20000, ge=1, description="Training examples generated (distinct from eval and dev).")
    reward: Literal["similarity", "exact"] = Field(
        "similarity",
        description="'similarity': difflib's ratio of the completion to the sorted string (2 * matched characters / "
        "total characters; a digit too many or too few costs one position, not the rest of the string), a dense "
        "reward for long completions; 'exact': 1 for the sorted string, else 0. A completion counts as correct "
        "(accuracy) only when it is exactly the sorted string, under either reward.",
    )

    def character_lengths(self) -> tuple[int, int]:
        prompt = len(self.prompt_template.format(question="0" * self.length + "="))
        return prompt, self.length + 1

    @model_validator(mode="after")
    def _enough_strings(self) -> SortTask:
        needed = self.train_size + self.eval_size + self.dev_size
        if self.digits**self.length < 2 * needed:
            raise ValueError(
                f"only {self.digits**self.length} strings of {self.length} digits: too few for "
                f"{needed} distinct examples (raise length or digits, or lower the sizes)"
            )
        return self


@register_task
class ReasoningGymTask(TaskBase):
    """Any reasoning-gym dataset; its `score_answer` is the reward."""

    name: Literal["reasoning_gym"] = "reasoning_gym"
    dataset: str = Field(..., min_length=1, description="reasoning-gym dataset name, e.g. 'basic_arithmetic'.")
    config: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the dataset.")
    size: int = Field(2000, ge=2, description="Total examples generated (split into train/dev/eval).")


RewardConfig = reward_config_union()


@register_task
class FileTask(TaskBase):
    """Local data read with `datasets` (JSONL, CSV, Parquet or a `save_to_disk` folder) with prompt and answer columns."""

    name: Literal["file"] = "file"
    path: str = Field(
        ...,
        min_length=1,
        description="A .jsonl/.json, .csv or .parquet file, or a folder written by `datasets`' save_to_disk. "
        "Relative to the recipe's folder; made absolute when the recipe is loaded.",
    )
    prompt_column: str = Field("prompt", description="Column holding the prompt text.")
    answer_column: str = Field("answer", description="Column holding the gold answer.")
    match: Literal["exact", "numeric"] | None = Field(
        None, description="Shorthand for `reward: [{name: <match>}]` (older recipes); not together with `reward`."
    )
    reward: list[RewardConfig] = Field(  # type: ignore[valid-type]
        default_factory=list,
        description="Rewards and their weights, e.g. [{name: boxed, weight: 1.0}, {name: format, weight: 0.1}]; "
        "the reward is their weighted mean. Default: exact. See docs/rewards.md.",
    )

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return str(Path(value).expanduser().absolute())

    @model_validator(mode="after")
    def _rewards(self) -> FileTask:
        shorthand = [REWARD_CONFIGS[self.match or "exact"]()]
        # A resolved recipe holds both, equal; a recipe that says two different things is an error.
        if self.match is not None and self.reward and _dumped(self.reward) != _dumped(shorthand):
            raise ValueError("give task.match or task.reward, not both (match: x is reward: [{name: x}])")
        if self.reward and not any(r.is_answer for r in self.reward):
            raise ValueError("task.reward needs an answer reward (every reward but 'format' is one)")
        self.reward = infer_format_styles(self.reward or shorthand)
        return self


def check_prompt_template(template: str) -> None:
    """A prompt template names `{question}` and no other field (ValueError otherwise)."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise ValueError(f"{exc} (a literal brace is written twice: {{{{ or }}}})") from None
    unknown = sorted({f"{{{field}}}" for field in fields if field not in PROMPT_FIELDS})
    if unknown:
        raise ValueError(
            f"unknown field {', '.join(unknown)} (the one field is {{question}}; a literal brace is written twice: {{{{ or }}}})"
        )
    if not fields:
        raise ValueError("the template has no {question}: every prompt would be the same text")


def _dumped(models: list[BaseModel]) -> list[dict[str, Any]]:
    return [m.model_dump() for m in models]


def task_names() -> tuple[str, ...]:
    return tuple(TASK_CONFIGS)


def task_config_union() -> Any:
    """Any registered task's config; Pydantic picks the model from the ``name`` key."""
    global _in_use
    _in_use = True
    return Annotated[Union[tuple(TASK_CONFIGS.values())], Field(discriminator="name")]  # noqa: UP007 (a runtime tuple)
