"""Non-finite updates through the real CLI: skipped, counted, warned about; too many in a row stop the run
with a resumable checkpoint of the last good state, MLflow FAILED and exit 1.

The non-finite loss comes from a real recipe, no test hook: `objective.beta: 1e300` is a finite
number in YAML but overflows to inf in float32, so every update's loss (beta * KL) is inf or NaN.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers_reliability import mlflow_store, only_run_dir, run_sspo, run_status, write_choice_task, write_recipe

EXPLODING = "objective: {name: sspo, beta: 1.0e+300}\n"
UPDATES_PER_STEP = 4  # rollout.updates_per_rollout default


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_choice_task(tmp_path_factory.mktemp("numerics") / "data.jsonl")


def initial_weights(recipe_file: Path) -> dict:
    """The weights a run of this recipe starts from, built in this process."""
    from sspo_cli.models import load_policy
    from sspo_cli.recipe import load_recipe
    from sspo_cli.tasks import build_task

    recipe = load_recipe(recipe_file)
    model, _ = load_policy(recipe.model, build_task(recipe.task).alphabet, recipe.seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_weights_equal(folder: Path, expected: dict) -> None:
    import torch
    from safetensors.torch import load_file

    saved = load_file(folder / "model.safetensors")
    assert saved and all(torch.equal(saved[k], expected[k]) for k in saved)


def test_non_finite_updates_are_skipped_counted_and_warned_about(
    tmp_path: Path, data_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import torch

    recipe = write_recipe(tmp_path / "recipe.yaml", data_file, steps=2, checkpoint_every=10, extra=EXPLODING + "\n")
    store = mlflow_store(tmp_path_factory, tmp_path / "store")
    result = run_sspo(
        "train",
        str(recipe),
        "--set",
        "train.max_skipped=100",
        "-o",
        str(tmp_path / "out"),
        "--tracking-uri",
        f"sqlite:///{store}",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    assert "warning: step 1: skipped 4 update(s) with a non-finite loss or gradient (4 in all" in result.stderr
    assert "warning: step 2: skipped 4 update(s)" in result.stderr

    run_dir = only_run_dir(tmp_path / "out")
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [row["train/skipped_updates"] for row in rows] == [4.0, 8.0]
    assert json.loads((run_dir / "summary.json").read_text())["skipped_updates"] == 2 * UPDATES_PER_STEP
    # Weights and optimiser untouched: the weights are the initial ones, AdamW never took a step.
    final = run_dir / "checkpoints" / "final"
    assert_weights_equal(final, initial_weights(recipe))
    assert torch.load(final / "optimizer.pt", weights_only=True)["optimizer"]["state"] == {}


def test_too_many_skips_stop_with_a_resumable_checkpoint_of_the_last_good_state(
    tmp_path: Path, data_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    recipe = write_recipe(tmp_path / "recipe.yaml", data_file, steps=5, checkpoint_every=10, extra=EXPLODING + "\n")
    out = tmp_path / "out"
    store = mlflow_store(tmp_path_factory, tmp_path / "store")
    result = run_sspo(
        "train",
        str(recipe),
        "--set",
        "train.max_skipped=3",
        "-o",
        str(out),
        "--tracking-uri",
        f"sqlite:///{store}",
        "-q",
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert (
        "stopped: 3 consecutive updates had a non-finite loss or gradient (train.max_skipped) at step 1"
        in result.stderr
    )
    run_dir = only_run_dir(out)
    assert f"sspo train --resume {run_dir}" in result.stderr

    checkpoint = run_dir / "checkpoints" / "step-000001"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 1 and state["consecutive_skips"] == 3 and state["skipped_updates"] == 3
    assert_weights_equal(checkpoint, initial_weights(run_dir / "recipe.yaml"))
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    assert run_status(store, run_id) == "FAILED"

    # Resumable: it loads and carries on from step 2 (where this recipe blows up again, as it must).
    again = run_sspo("train", "--resume", str(run_dir), "-q")
    assert again.returncode == 1, again.stderr
    assert "at step 2" in again.stderr
    assert run_status(store, run_id) == "FAILED"
