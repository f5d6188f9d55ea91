"""A population run: each member is the ordinary run its seed trains alone (folder, MLflow run, history, evals,
checkpoints, summary), and any member resumes alone from its checkpoint."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from conftest import REPO, TINY_OVERRIDES  # noqa: E402
from test_engines_native_population import TIMINGS  # noqa: E402

from sspo_cli.engines.dispatch import population_refusal, resume_training, run_population, run_training  # noqa: E402
from sspo_cli.recipe import load_recipe  # noqa: E402
from sspo_cli.run.state import RunOptions, TrainingObserver  # noqa: E402
from sspo_cli.signals import RunInterrupted  # noqa: E402

SEEDS = [0, 1, 2]


def recipes(*overrides: str):
    base = load_recipe(
        REPO / "recipes" / "quickstart.yaml",
        [*TINY_OVERRIDES, "performance.autocast_bf16=false", "train.lr=1e-3", *overrides],
    )
    return [base.model_copy(update={"seed": seed}) for seed in SEEDS]


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def weights_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def assert_member_is_its_run(member: dict, own: dict, client) -> None:
    """A population member's folder, records, evals, weights and MLflow run against its standalone run's."""
    member_dir, own_dir = Path(member["run_dir"]), Path(own["run_dir"])
    assert sorted(p.name for p in member_dir.iterdir()) == sorted(p.name for p in own_dir.iterdir())
    assert sorted(p.name for p in (member_dir / "checkpoints").iterdir()) == sorted(
        p.name for p in (own_dir / "checkpoints").iterdir()
    )
    assert member["seed"] == own["seed"] and member["fingerprint"] == own["fingerprint"]
    assert member["evals"] == own["evals"]  # greedy answers of equal weights: equal, step by step
    assert read_lines(member_dir / "eval_problems.jsonl") == read_lines(own_dir / "eval_problems.jsonl")
    rows, own_rows = read_lines(member_dir / "history.jsonl"), read_lines(own_dir / "history.jsonl")
    assert len(rows) == len(own_rows) == 4
    for row, own_row in zip(rows, own_rows):
        for key in set(own_row) - TIMINGS:
            assert row[key] == pytest.approx(own_row[key], rel=1e-4, abs=1e-5, nan_ok=True), key
    final, own_final = weights_of(member_dir / "checkpoints" / "final"), weights_of(own_dir / "checkpoints" / "final")
    for name, weight in own_final.items():
        torch.testing.assert_close(final[name], weight, rtol=1e-4, atol=1e-5)
    run, own_run = client.get_run(member["run_id"]), client.get_run(own["run_id"])
    assert run.info.status == own_run.info.status == "FINISHED"
    assert run.data.params == own_run.data.params
    assert set(own_run.data.metrics) <= set(run.data.metrics)
    assert run.data.tags["sspo.fingerprint"] == own_run.data.tags["sspo.fingerprint"]


def train_both_ways(members: list, tmp_path: Path) -> None:
    """`members` as one population and one by one; each member must be its own run, and the members different."""
    import mlflow

    assert population_refusal(members) is None
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    together = run_population(members, [RunOptions(tmp_path / "population", uri) for _ in members])
    alone = [run_training(recipe, RunOptions(tmp_path / "alone", uri)) for recipe in members]
    client = mlflow.MlflowClient(uri)
    for member, own in zip(together, alone):
        assert_member_is_its_run(member, own, client)
    finals = [weights_of(Path(s["run_dir"]) / "checkpoints" / "final") for s in together]
    name = "model.layers.0.mlp.down_proj.weight"
    assert all(not torch.equal(a[name], b[name]) for a, b in zip(finals, finals[1:]))  # each its own updates


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["rollout.policy_lag=1", "objective.correction=token_truncate"],  # lagged sampler, decoupled TIS
        ["rollout.policy_lag=2", "objective.name=grpo", "objective.m2_threshold=0.04"],  # M2PO's mask
    ],
    ids=["on-policy", "lag-tis", "lag-m2po"],
)
def test_each_member_is_the_run_its_seed_trains_alone(overrides: list[str], tmp_path: Path) -> None:
    train_both_ways(recipes(*overrides), tmp_path)


def test_members_may_differ_in_objective_numbers(tmp_path: Path) -> None:
    """A gate-temperature sweep as one population: each member's loss reads its own temperatures."""
    base = recipes("objective.name=sspo")[0]
    members = [
        base.model_copy(update={"seed": seed, "objective": base.objective.model_copy(update={"tau_pos": tau})})
        for seed, tau in [(0, 0.5), (1, 2.0), (0, 2.0)]
    ]
    train_both_ways(members, tmp_path)


class StopAfter(TrainingObserver):
    """Asks the process to stop (as Ctrl-C does) once a member has recorded `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("overrides", [[], ["rollout.policy_lag=2"]], ids=["on-policy", "lag"])
def test_a_stopped_population_leaves_members_that_resume_alone_to_the_same_end(
    overrides: list[str], tmp_path: Path
) -> None:
    """Under a lag a member's checkpoint carries its older sampling weights too, so it goes on sampling as before."""
    import mlflow

    members = recipes(*overrides)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    options = [RunOptions(tmp_path / "stopped", uri, StopAfter(2) if k == 0 else None) for k in range(len(members))]
    with pytest.raises(RunInterrupted):
        run_population(members, options)
    stopped = sorted((tmp_path / "stopped").glob("quickstart-*"))
    assert len(stopped) == len(SEEDS)
    client = mlflow.MlflowClient(uri)
    for run_dir in stopped:  # every member checkpointed at step 2 and is marked KILLED
        assert (run_dir / "checkpoints" / "step-000002").is_dir() and not (run_dir / "checkpoints" / "final").exists()
        run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
        assert client.get_run(run_id).info.status == "KILLED"
    uninterrupted = run_population(members, [RunOptions(tmp_path / "whole", uri) for _ in members])
    for run_dir in stopped:
        resumed = resume_training(run_dir, uri)
        whole = next(s for s in uninterrupted if s["seed"] == resumed["seed"])
        assert resumed["evals"] == whole["evals"]
        final, whole_final = (
            weights_of(run_dir / "checkpoints" / "final"),
            weights_of(Path(whole["run_dir"]) / "checkpoints" / "final"),
        )
        for name, weight in whole_final.items():
            torch.testing.assert_close(final[name], weight, rtol=1e-4, atol=1e-5)


def test_recipes_a_population_cannot_train_are_refused_with_the_reason() -> None:
    assert "differ in more than their seed" in population_refusal(
        [*recipes(), recipes("train.lr=2e-3")[0].model_copy(update={"seed": 9})]
    )
    assert "sampler dtype" in population_refusal(recipes("rollout.sampler_dtype=bfloat16"))
    assert "KL reference" in population_refusal(recipes("objective.beta=0.01"))
    assert population_refusal(recipes("rollout.policy_lag=2", "objective.correction=token_truncate")) is None
    assert "LoRA" in population_refusal(recipes("model.lora={rank: 4}"))
    assert "one recipe" in population_refusal([recipes()[0], recipes()[0]])
    assert "objective numbers" in population_refusal([recipes()[0], recipes("objective.name=grpo")[1]])
