"""What compare and sweep plan to train, checked before anything trains (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sspo_cli.recipe import RecipeError
from sspo_cli.research import ResearchError
from sspo_cli.research.compare import Method, group_id_of, parse_methods, plan_comparison, recipe_data_for
from sspo_cli.research.planning.grid import grid_points, parse_grid_option, short_keys
from sspo_cli.research.planning.recipe_files import read_recipe_file, read_variants
from sspo_cli.research.sweep import plan_sweep

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


def test_plain_methods_and_variants() -> None:
    variants = read_variants(RECIPES / "variants.yaml")
    methods = parse_methods("grpo, sspo-arctan", variants)
    assert methods[0] == Method("grpo", {"objective": {"name": "grpo"}})
    assert methods[1].patch == {"objective": {"name": "sspo", "gate": "arctan"}}
    with pytest.raises(ResearchError, match="--methods: unknown method 'sspo-atan'"):
        parse_methods("sspo-atan", variants)
    with pytest.raises(ResearchError, match="--methods: grpo named twice"):
        parse_methods("grpo,grpo", {})


def test_same_objective_refines_the_base_other_objective_replaces_it() -> None:
    base = {"objective": {"name": "sspo", "tau_pos": 3.0}, "rollout": {"group_size": 4}}
    assert recipe_data_for(base, Method("sspo-arctan", {"objective": {"gate": "arctan"}}))["objective"] == {
        "name": "sspo",
        "tau_pos": 3.0,
        "gate": "arctan",
    }
    assert recipe_data_for(base, Method("grpo", {"objective": {"name": "grpo"}}))["objective"] == {"name": "grpo"}
    dr = recipe_data_for(
        base, Method("grpo-dr", {"objective": {"name": "grpo"}, "rollout": {"advantage_scale": "none"}})
    )
    assert dr["rollout"] == {"group_size": 4, "advantage_scale": "none"}
    assert base["objective"] == {"name": "sspo", "tau_pos": 3.0}  # the base is not modified


def test_every_shipped_variant_is_a_valid_recipe() -> None:
    variants = read_variants(RECIPES / "variants.yaml")
    plan, _ = plan_comparison(RECIPES / "quickstart.yaml", [], ",".join(variants), 1, RECIPES / "variants.yaml")
    assert len({p.fingerprint for p in plan}) == len(variants)


def test_comparison_plan_is_methods_times_seeds_with_overrides_for_all() -> None:
    plan, base = plan_comparison(RECIPES / "quickstart.yaml", ["train.steps=7", "seed=10"], "grpo,sapo", 3, None)
    assert [(p.group, p.seed) for p in plan] == [
        ("grpo", 10),
        ("grpo", 11),
        ("grpo", 12),
        ("sapo", 10),
        ("sapo", 11),
        ("sapo", 12),
    ]
    assert all(p.recipe.train.steps == 7 for p in plan)
    assert plan[0].recipe.objective.name == "grpo" and plan[3].recipe.objective.name == "sapo"
    assert base.seed == 10
    # the id only depends on what is planned: the same comparison finds its parent run again
    again, _ = plan_comparison(RECIPES / "quickstart.yaml", ["train.steps=7", "seed=10"], "grpo,sapo", 3, None)
    assert group_id_of("comparison", plan) == group_id_of("comparison", again)


def test_an_override_invalid_for_one_method_names_the_key() -> None:
    with pytest.raises(RecipeError, match="tau_pos"):
        plan_comparison(RECIPES / "quickstart.yaml", ["objective.tau_pos=2"], "grpo", 1, None)


def test_grid_option_parsing() -> None:
    assert parse_grid_option("objective.tau_pos=0.5,1,2").values == (0.5, 1, 2)
    assert parse_grid_option("objective.gate=[sigmoid, arctan]").values == ("sigmoid", "arctan")
    for bad in ("objective.tau_pos", "=1,2", "objective.tau_pos=1,1"):
        with pytest.raises(ResearchError, match="--grid"):
            parse_grid_option(bad)


def test_short_keys_stay_unique() -> None:
    assert short_keys(["objective.tau_pos", "objective.tau_neg"]) == {
        "objective.tau_pos": "tau_pos",
        "objective.tau_neg": "tau_neg",
    }
    assert short_keys(["train.lr", "train.warm_start.lr"]) == {
        "train.lr": "train.lr",
        "train.warm_start.lr": "warm_start.lr",
    }


def test_sweep_grid_from_the_recipe_and_the_command_line() -> None:
    plan = plan_sweep(RECIPES / "sweep_tau.yaml", ["train.steps=3"], [], None, None)
    assert len(plan.points) == 9 and plan.seeds == 2 and len(plan.runs) == 18 and plan.metric == "final_accuracy"
    assert plan.labels[0] == "tau_pos=0.5 tau_neg=1.0"
    assert plan.runs[0].recipe.objective.tau_pos == 0.5 and plan.runs[0].recipe.train.steps == 3
    # --grid replaces the file's values for that key; --seeds the file's seeds
    plan = plan_sweep(RECIPES / "sweep_tau.yaml", [], ["objective.tau_pos=4"], 1, "reward_auc")
    assert [p["objective.tau_pos"] for p in plan.points] == [4, 4, 4] and len(plan.runs) == 3
    assert grid_points([]) == [{}]


def test_sweep_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="objective has no key 'tau_p'"):
        plan_sweep(RECIPES / "quickstart.yaml", [], ["objective.tau_p=1,2"], 1, None)
    with pytest.raises(RecipeError, match="tau_pos"):
        plan_sweep(RECIPES / "quickstart.yaml", [], ["objective.tau_pos=1,-2"], 1, None)
    with pytest.raises(ResearchError, match="--metric: unknown metric 'acc'"):
        plan_sweep(RECIPES / "sweep_tau.yaml", [], [], 1, "acc")
    with pytest.raises(ResearchError, match="--grid: no grid"):
        plan_sweep(RECIPES / "quickstart.yaml", [], [], 1, None)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"sweep": {"grid": {"seed": [1]}, "seed": 3}}))
    with pytest.raises(RecipeError, match="sweep.seed"):
        plan_sweep(bad, [], [], None, None)


def test_recipe_file_loader_strips_the_sweep_section() -> None:
    data, section = read_recipe_file(RECIPES / "sweep_tau.yaml")
    assert "sweep" not in data and section["seeds"] == 2


def test_parallel_jobs_share_the_cores_and_eta_counts_rounds() -> None:
    from sspo_cli.research.execution.execute import available_cores, eta_seconds, threads_per_job

    cores = available_cores()
    assert threads_per_job(1) == cores and threads_per_job(cores * 4) == 1
    assert threads_per_job(2) == max(1, cores // 2)
    # 5 runs left, 2 at a time: 3 rounds of the mean duration so far (60 s)
    assert eta_seconds([50.0, 70.0], remaining=5, jobs=2) == 180.0
    assert eta_seconds([], remaining=3, jobs=1) != eta_seconds([], remaining=3, jobs=1)  # NaN: unknown yet


def test_the_commands_import_nothing_heavy() -> None:
    import subprocess
    import sys

    code = "import sys, sspo_cli.cli.research; print(sorted(m for m in ('torch', 'transformers', 'mlflow', 'matplotlib') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
