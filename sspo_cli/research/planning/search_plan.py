"""What a search is: the settings its Optuna study runs with, and the runs of a trial."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sspo_cli.recipe import Recipe, stable_hash
from sspo_cli.research.analysis.measures import metric_spec
from sspo_cli.research.planning.grid import short_keys
from sspo_cli.research.planning.plan import POINT_TAG, PlannedRun
from sspo_cli.research.planning.space import SpaceParam, recipe_for_point

TRIAL_TAG = "sspo.trial"


@dataclass
class SearchPlan:
    recipe_path: Path
    overrides: list[str]
    base_data: dict[str, Any]
    base: Recipe
    space: dict[str, SpaceParam]
    strategy: str
    pruner: str
    trials: int
    seeds: int
    metric: str
    threshold: float

    @property
    def search_id(self) -> str:
        """Same base recipe, space, strategy, pruner, metric and seeds: the same study, whatever --trials says."""
        space = {key: param.model_dump() for key, param in self.space.items()}
        identity = [self.base.fingerprint(), space, self.strategy, self.pruner, self.metric, self.seeds, self.threshold]
        return stable_hash(["search", identity])[:12]

    @property
    def study_name(self) -> str:
        return f"search-{self.base.name}-{self.search_id}"

    @property
    def direction(self) -> str:
        return "maximize" if metric_spec(self.metric).better == "higher" else "minimize"

    def runs_for(self, params: dict[str, Any], number: int) -> list[PlannedRun]:
        label = trial_label(number, params)
        tags = {POINT_TAG: label, TRIAL_TAG: str(number)}
        runs = []
        for seed in range(self.base.seed, self.base.seed + self.seeds):
            recipe = recipe_for_point(
                self.base_data, params, self.overrides, seed, f"{self.recipe_path} (trial {number})"
            )
            runs.append(PlannedRun(label, seed, recipe, f"{recipe.name}-t{number:03d}-s{seed}", tags))
        return runs


def trial_label(number: int, params: dict[str, Any]) -> str:
    names = short_keys(list(params))
    shown = " ".join(f"{names[k]}={v:.4g}" if isinstance(v, float) else f"{names[k]}={v}" for k, v in params.items())
    return f"t{number} {shown}"
