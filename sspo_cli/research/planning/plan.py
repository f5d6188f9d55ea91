"""A planned run: one recipe to train (or find finished), the group it belongs to and how it is tagged."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from sspo_cli.recipe import Recipe

METHOD_TAG = "sspo.method"  # on a comparison's training runs: the method
POINT_TAG = "sspo.point"  # on a sweep's, a study's or a search's training runs: the grid point or trial


@dataclass
class PlannedRun:
    group: str  # method name (compare) or point label (sweep)
    seed: int
    recipe: Recipe
    display_name: str
    tags: dict[str, str] = field(default_factory=dict)

    @cached_property
    def fingerprint(self) -> str:
        return self.recipe.fingerprint()
