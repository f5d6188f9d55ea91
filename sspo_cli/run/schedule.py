"""The learning-rate schedule of a recipe, as a multiplier per optimiser update (both engines use it)."""

from __future__ import annotations

import math
from collections.abc import Callable

from sspo_cli.recipe import Recipe

SCHEDULES: dict[str, Callable[[float], float]] = {
    "constant": lambda progress: 1.0,
    "linear": lambda progress: 1.0 - progress,
    "cosine": lambda progress: 0.5 * (1 + math.cos(math.pi * progress)),
}


def lr_multiplier(recipe: Recipe) -> Callable[[int], float]:
    """Linear warm-up over `train.lr_warmup_steps` updates, then `train.lr_schedule` to the last update."""
    total = max(recipe.train.steps * recipe.rollout.updates_per_rollout, 1)
    warmup = recipe.train.lr_warmup_steps
    decay = SCHEDULES[recipe.train.lr_schedule]

    def multiplier(update: int) -> float:
        if warmup and update < warmup:
            return (update + 1) / warmup
        return decay(min(1.0, (update - warmup) / max(total - warmup, 1)))

    return multiplier
