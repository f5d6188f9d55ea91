"""Reward configs: one Pydantic model per reward, discriminated by ``name``, and the one list of rewards.

A recipe's ``task.reward`` is a list of these (each with a ``weight``). ``@register_reward`` puts a
config model on ``REWARD_CONFIGS``, from which the recipe's union is built; the reward's function is
registered beside it in ``functions.py`` (``@reward_function(ThatConfig)``). No heavy imports here:
``sspo validate`` imports this module.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

ANSWER_STYLES = ("boxed", "gsm8k", "regex")


class BaseRewardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str
    weight: float = Field(1.0, gt=0.0, le=1000.0, description="Weight of this reward in the weighted mean.")

    # Answer rewards decide correctness (accuracy); the others only shape the reward.
    is_answer: ClassVar[bool] = True


Config = TypeVar("Config", bound=type[BaseRewardConfig])

REWARD_CONFIGS: dict[str, type[BaseRewardConfig]] = {}
"""Every reward: its name -> its config model, in the order they were registered."""


def register_reward(config: Config) -> Config:
    """Class decorator: add a reward's config model; its ``name`` field's default is the reward's name."""
    name = config.model_fields["name"].default
    if name in REWARD_CONFIGS:
        raise ValueError(f"reward {name!r} is registered twice")
    REWARD_CONFIGS[name] = config
    return config


def _compiled(pattern: str) -> str:
    try:
        groups = re.compile(pattern).groups
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    if groups < 1:
        raise ValueError("needs a capture group: the answer is the first group of the last match")
    return pattern


@register_reward
class ExactReward(BaseRewardConfig):
    """1 when the whole completion equals the gold answer, both stripped of surrounding whitespace."""

    name: Literal["exact"] = "exact"


@register_reward
class NumericReward(BaseRewardConfig):
    """1 when the whole completion and the gold answer are equal numbers (thousands commas allowed)."""

    name: Literal["numeric"] = "numeric"


@register_reward
class RegexReward(BaseRewardConfig):
    """1 when the first group of the pattern's last match equals the gold answer (as text or as numbers)."""

    name: Literal["regex"] = "regex"
    pattern: str = Field(..., min_length=1, description="Python regular expression with at least one group.")

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        return _compiled(value)


@register_reward
class BoxedReward(BaseRewardConfig):
    """1 when the last balanced ``\\boxed{...}`` equals the gold answer (math-verify, or as numbers)."""

    name: Literal["boxed"] = "boxed"


@register_reward
class Gsm8kReward(BaseRewardConfig):
    """1 when the number after the last ``####`` equals the gold number (``$``, commas and units ignored)."""

    name: Literal["gsm8k"] = "gsm8k"


@register_reward
class MathVerifyReward(BaseRewardConfig):
    """1 when math-verify finds the completion's answer symbolically equal to the gold answer."""

    name: Literal["math_verify"] = "math_verify"


@register_reward
class FormatReward(BaseRewardConfig):
    """1 when the completion holds exactly one final answer in the expected style, and was not cut off."""

    name: Literal["format"] = "format"
    is_answer: ClassVar[bool] = False
    style: Literal["boxed", "gsm8k", "regex"] | None = Field(
        None, description="Expected answer style; default: that of the list's boxed, gsm8k or regex reward."
    )
    pattern: str | None = Field(None, description="For style 'regex': the pattern (default: the regex reward's).")

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        return None if value is None else _compiled(value)


def reward_config_union() -> Any:
    """The discriminated union of every registered reward config (one list entry of ``task.reward``)."""
    members = tuple(REWARD_CONFIGS.values())
    return Annotated[Union[members], Field(discriminator="name")]  # noqa: UP007 (a runtime tuple)


def infer_format_styles(rewards: list[BaseRewardConfig]) -> list[BaseRewardConfig]:
    """Fill in each format reward's style (and pattern) from the list's one answer reward that has a style."""
    styled = [r for r in rewards if r.is_answer and r.name in ANSWER_STYLES]
    out: list[BaseRewardConfig] = []
    for reward in rewards:
        if isinstance(reward, FormatReward):
            reward = _with_style(reward, styled)
        out.append(reward)
    return out


def _with_style(reward: FormatReward, styled: list[BaseRewardConfig]) -> FormatReward:
    if reward.style is None:
        names = sorted({r.name for r in styled})
        if len(names) != 1:
            found = f"found {', '.join(names)}" if names else "found none"
            raise ValueError(
                f"format needs a style: give format.style, or exactly one boxed, gsm8k or regex reward ({found})"
            )
        reward = reward.model_copy(update={"style": names[0]})
    if reward.style == "regex" and reward.pattern is None:
        patterns = [r.pattern for r in styled if isinstance(r, RegexReward)]
        if len(patterns) != 1:
            raise ValueError("format with style 'regex' needs a pattern: give format.pattern or one regex reward")
        reward = reward.model_copy(update={"pattern": patterns[0]})
    return reward
