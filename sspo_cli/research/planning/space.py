"""Search spaces of `sspo sweep --search`: ranges (optionally log-scaled or stepped) and choices of recipe keys.

A space comes from the recipe's `sweep: {space: ...}` section, from `--space key=low:high[:log]` options
and from grid values (`sweep: {grid: ...}`, `--grid key=v1,v2`), which are choices. Every parameter is
checked on its own (low below high, log only above 0, ...) and against the recipe: the recipe is
validated at each end of each range and at each choice before anything trains.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sspo_cli.recipe import apply_override, recipe_from_dict
from sspo_cli.research import ResearchError

if TYPE_CHECKING:
    from optuna.trial import Trial

    from sspo_cli.recipe import Recipe

Number = int | float


@dataclass(frozen=True)
class GridAxis:
    key: str  # dotted recipe key, e.g. objective.tau_pos
    values: tuple[Any, ...]


CHOICE_TYPES = (str, int, float, bool, type(None))  # what Optuna stores for a categorical parameter


class SpaceParam(BaseModel):
    """One searched recipe key: `low`/`high` (with `log` or `step`), or a list of `choices`."""

    model_config = ConfigDict(extra="forbid")
    low: Number | None = Field(None, description="Smallest value (with high)")
    high: Number | None = Field(None, description="Largest value (with low)")
    log: bool = Field(False, description="Sample on a log scale (needs low > 0)")
    step: Number | None = Field(None, description="Spacing of the values from low (not with log)")
    choices: list[Any] | None = Field(None, description="The values to choose from (instead of a range)")

    @model_validator(mode="after")
    def _check(self) -> SpaceParam:
        problem = self.choice_problem() if self.choices is not None else self.range_problem()
        if problem:
            raise ValueError(problem)
        return self

    def choice_problem(self) -> str:
        if self.low is not None or self.high is not None or self.log or self.step is not None:
            return "give either choices or a range (low, high, log, step), not both"
        if not self.choices:
            return "choices: needs at least one value"
        if len({json.dumps(c, sort_keys=True) for c in self.choices}) != len(self.choices):
            return "choices: a value is listed twice"
        if not all(isinstance(c, CHOICE_TYPES) for c in self.choices):
            return "choices: each must be a number, a string, true/false or null"
        return ""

    def range_problem(self) -> str:
        if self.low is None or self.high is None:
            return "needs low and high (a range) or choices"
        if self.low >= self.high:
            return f"low ({self.low}) must be below high ({self.high})"
        if self.log and self.low <= 0:
            return f"a log scale needs low > 0, got {self.low}"
        if self.log and self.step is not None:
            return "step and log do not go together"
        if self.step is not None and self.step <= 0:
            return f"step must be > 0, got {self.step}"
        return ""

    @property
    def integer(self) -> bool:
        """A range of integers: both ends (and the step) written as integers."""
        ends = (self.low, self.high, self.step if self.step is not None else 1)
        return self.choices is None and all(isinstance(v, int) and not isinstance(v, bool) for v in ends)

    def corners(self) -> list[Any]:
        """The values the recipe is validated at: each choice, or both ends of the range."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def suggest(self, trial: Trial, key: str) -> Any:
        """This parameter's value in an Optuna trial (sampled, or the trial's own if it has one)."""
        if self.choices is not None:
            return trial.suggest_categorical(key, self.choices)
        if self.integer:
            return trial.suggest_int(key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(key, float(self.low), float(self.high), step=self.step, log=self.log)

    def describe(self) -> str:
        if self.choices is not None:
            return "{" + ", ".join(json.dumps(c) for c in self.choices) + "}"
        scale = ", log" if self.log else f", step {self.step}" if self.step is not None else ""
        return f"[{self.low}, {self.high}{scale}]"


def space_param(data: dict[str, Any], key: str, where: str) -> SpaceParam:
    """A validated SpaceParam, or a ResearchError naming `where` (the option or file) and the key."""
    try:
        return SpaceParam.model_validate(data)
    except ValidationError as exc:
        problems = [pydantic_problem(err) for err in exc.errors()]
        raise ResearchError(where, f"{key}: {'; '.join(problems)}") from None


def pydantic_problem(err: Any) -> str:
    """`location: message (got value)` for a Pydantic error; our own checks lose Pydantic's 'Value error, '."""
    location = ".".join(str(p) for p in err["loc"])
    message = str(err["msg"]).removeprefix("Value error, ")
    got = err.get("input")
    if err["type"] != "value_error" and got is not None and not isinstance(got, (dict, list)):
        message += f" (got {got!r})"
    return f"{location}: {message}" if location else message


def parse_space_option(text: str) -> tuple[str, SpaceParam]:
    """`objective.tau_pos=0.5:2` or `train.lr=1e-5:1e-3:log`: a range of numbers, integers if both ends are."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    parts = raw.strip().split(":")
    if not sep or not key or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip() != "log"):
        raise ResearchError("--space", f"{text!r}: expected dotted.key=low:high or dotted.key=low:high:log")
    low, high = (parse_number(part, key) for part in parts[:2])
    return key, space_param({"low": low, "high": high, "log": len(parts) == 3}, key, "--space")


def parse_number(text: str, key: str) -> Number:
    for kind in (int, float):
        try:
            return kind(text.strip())
        except ValueError:
            continue
    raise ResearchError("--space", f"{key}: {text.strip()!r} is not a number")


def merge_space(
    from_file: dict[str, SpaceParam],
    file_grid: Sequence[GridAxis],
    cli_grid: Sequence[GridAxis],
    cli_space: Sequence[tuple[str, SpaceParam]],
) -> dict[str, SpaceParam]:
    """The file's space and grid (grid values as choices), then --grid and --space: a later source replaces
    an earlier one's entry for the same key."""
    merged = dict(from_file)
    for axis in [*file_grid, *cli_grid]:
        merged[axis.key] = space_param({"choices": list(axis.values)}, axis.key, "--grid")
    merged.update(dict(cli_space))
    return merged


def validated_space(
    space: dict[str, SpaceParam], base_data: dict[str, Any], overrides: Sequence[str], base_seed: int, recipe_path: Path
) -> dict[str, SpaceParam]:
    """Every key must be a recipe key, and every end of a range and every choice a valid value for it.

    A range written with integer ends over a key the recipe holds as a float (`tau_pos: 1:2`) is a
    float range: the recipe's type decides, not how the ends were typed.
    """
    checked = {}
    for key, param in space.items():
        recipes = [
            recipe_for_point(
                base_data, {key: v}, overrides, base_seed, f"{recipe_path} (search space {key}={json.dumps(v)})"
            )
            for v in param.corners()
        ]
        resolved = [value_at(recipe.resolved(), key) for recipe in recipes]
        if param.integer and any(isinstance(v, float) for v in resolved):
            param = param.model_copy(update={"low": float(param.low), "high": float(param.high)})
        checked[key] = param
    return checked


def recipe_for_point(
    base_data: dict[str, Any], point: dict[str, Any], overrides: Sequence[str], seed: int, source: str
) -> Recipe:
    """The base recipe with the point's values (dotted keys), the --set overrides and the seed, validated."""
    data = json.loads(json.dumps(base_data))
    for key, value in point.items():
        apply_override(data, f"{key}={json.dumps(value)}", source)
    return recipe_from_dict(data, [*overrides, f"seed={seed}"], source)


def value_at(data: dict[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node
