"""Parallel execution: worker processes report their RL steps to the parent, and the shared warm start's
training is shown while it runs; populations: the seeds of one recipe train together, each an ordinary run of the
workflow, and a population that fails trains its runs one by one (real tiny models, real spawned workers, a real
MLflow sqlite store)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

for _name, _value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}.items():
    os.environ.setdefault(_name, _value)

from sspo_cli.recipe import recipe_from_dict  # noqa: E402
from sspo_cli.research.execution.execute import ExecutionContext, WorkflowObserver, execute  # noqa: E402
from sspo_cli.research.planning.plan import PlannedRun  # noqa: E402
from sspo_cli.run.state import TrainingObserver  # noqa: E402

STEPS = 6


def tiny_recipe(seed: int) -> dict:
    return {
        "name": "tiny",
        "seed": seed,
        "model": {
            "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}
        },
        "task": {"name": "addition", "eval_size": 16, "dev_size": 16},
        "rollout": {"prompts_per_step": 2, "group_size": 2},
        "train": {
            "steps": STEPS,
            "checkpoint_every": STEPS,
            "threads": 1,
            "warm_start": {"enabled": True, "max_steps": 4, "eval_every": 2, "batch_size": 8, "on_miss": "warn"},
        },
        "eval": {"every": STEPS},
        "tracking": {"experiment": "execute-test"},
    }


class WarmStartSteps(TrainingObserver):
    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []

    def on_warm_start(self, step: int, total: int, dev_accuracy: float | None) -> None:
        self.steps.append((step, total))

    def on_warning(self, message: str) -> None: ...


class Recording(WorkflowObserver):
    def __init__(self) -> None:
        self.progress: dict[str, list[tuple[int, int]]] = {}
        self.events: list[str] = []
        self.warm_start = WarmStartSteps()

    def on_run_start(self, planned: PlannedRun) -> None:
        self.events.append(f"start {planned.fingerprint}")

    def on_run_progress(self, fingerprint: str, step: int, total: int) -> None:
        self.progress.setdefault(fingerprint, []).append((step, total))

    def on_run_end(self, outcome) -> None:
        self.events.append(f"end {outcome.planned.fingerprint}")

    def on_populations(self, sizes: list[int]) -> None:
        self.events.append(f"populations {sizes}")

    def training_observer(self) -> TrainingObserver | None:
        return self.warm_start


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, Recording, list[PlannedRun], Path]:
    out = tmp_path_factory.mktemp("execute")
    plan = [
        PlannedRun("grpo", seed, recipe_from_dict(tiny_recipe(seed), [], "test.yaml"), f"grpo-seed{seed}")
        for seed in (0, 1)
    ]
    observer = Recording()
    ctx = ExecutionContext(out, f"sqlite:///{out / 'mlflow.db'}", "group", None, 2, observer, population=1)
    return execute(plan, ctx), observer, plan, out


def test_parallel_runs_are_trained(executed) -> None:
    outcomes, *_ = executed
    assert [o.state for o in outcomes] == ["trained", "trained"], [o.error for o in outcomes]


def test_workers_report_each_runs_steps_from_zero_to_the_last(executed) -> None:
    _, observer, plan, _ = executed
    assert set(observer.progress) == {p.fingerprint for p in plan}
    for planned in plan:
        steps = observer.progress[planned.fingerprint]
        assert steps[0] == (0, STEPS) and steps[-1] == (STEPS, STEPS)
        assert [s for s, _ in steps] == sorted(s for s, _ in steps)


def test_the_shared_warm_start_is_trained_once_in_the_parent_and_shown(executed) -> None:
    _, observer, *_ = executed
    assert observer.warm_start.steps, "the prewarm reported no step"
    last_step, last_total = observer.warm_start.steps[-1]
    assert 0 < last_step <= 4 and last_step == last_total  # the bar is closed where the warm start ended


def test_a_cached_warm_start_is_not_trained_again_or_shown(executed) -> None:
    *_, out = executed
    plan = [PlannedRun("grpo", 2, recipe_from_dict(tiny_recipe(2), [], "test.yaml"), "grpo-seed2")]
    plan.append(PlannedRun("grpo", 3, recipe_from_dict(tiny_recipe(3), [], "test.yaml"), "grpo-seed3"))
    observer = Recording()
    ctx = ExecutionContext(out, f"sqlite:///{out / 'mlflow.db'}", "group2", None, 2, observer, population=1)
    outcomes = execute(plan, ctx)
    assert [o.state for o in outcomes] == ["trained", "trained"], [o.error for o in outcomes]
    assert observer.warm_start.steps == []
    assert len(observer.progress) == 2


def test_seeds_of_one_recipe_train_as_populations_and_the_rest_alone(tmp_path: Path) -> None:
    import mlflow

    lagged = tiny_recipe(0) | {"rollout": {"prompts_per_step": 2, "group_size": 2, "sampler_dtype": "bfloat16"}}
    plan = [
        PlannedRun("grpo", seed, recipe_from_dict(tiny_recipe(seed), [], "test.yaml"), f"grpo-seed{seed}")
        for seed in (0, 1, 2, 3, 4)
    ]
    plan.append(PlannedRun("lagged", 0, recipe_from_dict(lagged, [], "test.yaml"), "lagged-seed0"))
    observer = Recording()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = ExecutionContext(tmp_path, uri, "group", None, 2, observer, population=3)
    outcomes = execute(plan, ctx)
    assert [o.state for o in outcomes] == ["trained"] * 6, [o.error for o in outcomes]
    client = mlflow.MlflowClient(uri)
    sizes = [client.get_run(o.run_id).data.metrics.get("train/population_size") for o in outcomes]
    # 5 seeds in balanced populations of at most 3; another sampler dtype trains alone
    assert sizes == [3.0, 2.0, 3.0, 2.0, 3.0, None]
    assert "populations [3, 2]" in observer.events
    for outcome in outcomes:
        run = client.get_run(outcome.run_id)
        assert run.data.tags["sspo.seed"] == str(outcome.planned.seed)
        assert run.data.tags["sspo.fingerprint"] == outcome.planned.fingerprint
        assert Path(run.data.tags["sspo.run_dir"], "summary.json").is_file()
    assert set(observer.progress) == {p.fingerprint for p in plan}  # each member's steps reach the parent
    assert all(steps[-1] == (STEPS, STEPS) for steps in observer.progress.values())


def test_a_population_that_fails_trains_its_runs_one_by_one(tmp_path: Path) -> None:
    from sspo_cli.research.execution.execute import train_unit
    from sspo_cli.run.state import RunOptions

    warnings: list[str] = []

    class Warnings(TrainingObserver):
        def on_warning(self, message: str) -> None:
            warnings.append(message)

    # another sampler dtype in one member: the population refuses at its start, having written nothing
    lagged = tiny_recipe(1) | {"rollout": {"prompts_per_step": 2, "group_size": 2, "sampler_dtype": "bfloat16"}}
    recipes = [recipe_from_dict(tiny_recipe(0), [], "test.yaml"), recipe_from_dict(lagged, [], "test.yaml")]
    options = [RunOptions(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}", Warnings()) for _ in recipes]
    results = train_unit(recipes, options)
    assert all("run_id" in result for result in results), results
    stopped = [w for w in warnings if "population" in w]
    assert len(stopped) == 1 and "train one by one" in stopped[0] and "seeds 0, 1" in stopped[0]
    assert len(list(tmp_path.glob("tiny-*"))) == 2  # no run folder of the refused population
