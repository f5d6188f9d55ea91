"""Which planned runs train together: the seeds of one recipe as populations, balanced, split to keep every
`--jobs` worker busy, bounded by memory; everything a population cannot train, alone."""

from __future__ import annotations

import pytest

from sspo_cli.recipe import recipe_from_dict
from sspo_cli.research import ResearchError
from sspo_cli.research.execution import units
from sspo_cli.research.execution.units import auto_members, parse_population, training_units
from sspo_cli.research.planning.plan import PlannedRun

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}


def planned(method: str, seed: int, objective: dict | None = None, **rollout) -> PlannedRun:
    data = {
        "name": "units",
        "seed": seed,
        "model": {"tiny": TINY},
        "task": {"name": "addition"},
        "objective": {"name": method, **(objective or {})},
        "rollout": {"prompts_per_step": 2, "group_size": 2, **rollout},
    }
    return PlannedRun(method, seed, recipe_from_dict(data, [], "units.yaml"), f"{method}-s{seed}")


def seeds_of(plan_units: list[list[PlannedRun]]) -> list[list[tuple[str, int]]]:
    return [[(p.group, p.seed) for p in unit] for unit in plan_units]


def test_the_seeds_of_each_recipe_train_together_in_balanced_populations() -> None:
    plan = [planned(m, s) for m in ("grpo", "sspo") for s in range(5)]
    assert seeds_of(training_units(plan, 3, jobs=1)) == [
        [("grpo", 0), ("grpo", 2), ("grpo", 4)],
        [("grpo", 1), ("grpo", 3)],
        [("sspo", 0), ("sspo", 2), ("sspo", 4)],
        [("sspo", 1), ("sspo", 3)],
    ]


def test_a_sweep_of_an_objective_number_trains_as_one_population() -> None:
    plan = [planned("sspo", s, {"tau_pos": tau}) for tau in (0.5, 1.0, 2.0) for s in range(2)]
    assert [len(u) for u in training_units(plan, 8, jobs=1)] == [6]
    switched = [planned("sspo", 0, {"correction": "token_truncate"}), planned("sspo", 1)]
    assert [len(u) for u in training_units(switched, 8, jobs=1)] == [1, 1]  # another kind of step


def test_off_trains_every_run_alone() -> None:
    plan = [planned("grpo", s) for s in range(3)]
    assert seeds_of(training_units(plan, 1, jobs=2)) == [[("grpo", 0)], [("grpo", 1)], [("grpo", 2)]]


def test_auto_splits_populations_until_every_worker_has_one() -> None:
    plan = [planned("grpo", s) for s in range(8)]
    assert [len(u) for u in training_units(plan, None, jobs=1)] == [8]
    assert [len(u) for u in training_units(plan, None, jobs=2)] == [4, 4]
    assert [len(u) for u in training_units(plan[:3], None, jobs=4)] == [1, 1, 1]
    assert [len(u) for u in training_units(plan, 8, jobs=2)] == [8]  # a number given is kept


def test_auto_leaves_long_completions_alone() -> None:
    plan = [planned("grpo", s, max_new_tokens=units.AUTO_MAX_NEW_TOKENS + 1) for s in range(4)]
    assert [len(u) for u in training_units(plan, None, jobs=1)] == [1, 1, 1, 1]
    assert [len(u) for u in training_units(plan, 4, jobs=1)] == [4]  # asked for, it trains them together


def test_a_recipe_a_population_cannot_train_trains_alone() -> None:
    plan = [planned("grpo", s, sampler_dtype="bfloat16") for s in range(3)] + [planned("sspo", s) for s in range(2)]
    assert seeds_of(training_units(plan, 8, jobs=1)) == [
        [("grpo", 0)],
        [("grpo", 1)],
        [("grpo", 2)],
        [
            ("sspo", 0),
            ("sspo", 1),
        ],
    ]


def test_auto_members_shrink_with_the_memory_available() -> None:
    recipe = planned("grpo", 0).recipe
    one = units.member_bytes(recipe)
    assert auto_members(recipe, jobs=1, memory=3.2 * one / units.MEMORY_SHARE) == 3
    assert auto_members(recipe, jobs=2, memory=3.2 * one / units.MEMORY_SHARE) == 1
    assert auto_members(recipe, jobs=2, memory=1000 * one) == units.AUTO_MEMBERS
    assert units.available_memory() > 0


@pytest.mark.parametrize(("text", "members"), [("auto", None), ("AUTO", None), ("off", 1), ("1", 1), ("12", 12)])
def test_population_option(text: str, members: int | None) -> None:
    assert parse_population(text) == members


@pytest.mark.parametrize("text", ["0", "-1", "half", ""])
def test_bad_population_option(text: str) -> None:
    with pytest.raises(ResearchError, match="--population"):
        parse_population(text)
