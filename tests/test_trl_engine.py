"""`engine: trl` end to end on the tiny model: a normal run for every objective, in the native format."""

import json
from pathlib import Path

import pytest

pytest.importorskip("trl")

from conftest import REPO, TINY_OVERRIDES

from sspo_cli.engines.trl.engine import run_training_trl
from sspo_cli.objectives import METRIC_KEYS, objective_names
from sspo_cli.recipe import load_recipe
from sspo_cli.run.state import RunOptions

TRAIN_METRICS = [
    "train/reward",
    "train/accuracy",
    "train/response_length",
    "train/entropy",
    "train/grad_norm",
    "train/lr",
    "train/tokens_per_s",
    "train/loss",
]
# Two rollouts of 16 completions, two updates each (the second off-policy), evals at 0, 1 and 2.
# One thread: on a loaded 2-core machine more threads make these tiny matrices several times slower.
SHORT = [
    "engine=trl",
    "train.steps=2",
    "rollout.updates_per_rollout=2",
    "eval.every=1",
    "train.checkpoint_every=1",
    "task.eval_size=16",
    "train.threads=1",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store for the module: creating a sqlite store runs MLflow's migrations (seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def keep_torch_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def tiny_trl_recipe(*extra: str):
    return load_recipe(REPO / "recipes" / "quickstart.yaml", [*TINY_OVERRIDES, *SHORT, *extra])


def history_of(summary) -> list[dict]:
    return [json.loads(line) for line in (Path(summary["run_dir"]) / "history.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", objective_names())
def test_every_objective_trains_and_writes_a_normal_run(objective: str, tmp_path: Path, store: str) -> None:
    from mlflow.tracking import MlflowClient

    summary = run_training_trl(
        tiny_trl_recipe(f"objective.name={objective}"), RunOptions(output_dir=tmp_path, tracking_uri=store)
    )
    run_dir = Path(summary["run_dir"])
    assert summary["objective"] == objective and summary["steps"] == 2 and summary["engine"] == "trl"
    assert [e["step"] for e in summary["evals"]] == [0, 1, 2]
    assert summary["eval_before"]["step"] == 0 and summary["eval_after"]["step"] == 2
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    assert load_recipe(run_dir / "recipe.yaml").fingerprint() == summary["fingerprint"]
    assert (run_dir / "checkpoints" / "final" / "model.safetensors").is_file()
    assert json.loads((run_dir / "run.json").read_text())["run_id"] == summary["run_id"]
    history = history_of(summary)
    assert [row["step"] for row in history] == [1, 2]
    assert all(set(METRIC_KEYS) | set(TRAIN_METRICS) <= set(row) for row in history)

    client = MlflowClient(summary["tracking_uri"])
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["engine"] == "trl" and run.data.params["objective.name"] == objective
    assert run.data.tags["sspo.engine"] == "trl" and run.data.tags["sspo.fingerprint"] == summary["fingerprint"]
    # As in the native test: the untrained tiny model earns no reward, so the `weight/*` and
    # `grad_weight/*` means are over an empty set (NaN, not sent to MLflow).
    for key in [*METRIC_KEYS[:9], "kl/k3", *TRAIN_METRICS, "eval/accuracy", "eval/mean_reward", "eval/mean_length"]:
        assert key in run.data.metrics, key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/reward")] == [1, 2]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [0, 1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"recipe.yaml", "summary.json", "final_checkpoint"} <= artifacts


def test_both_engines_write_the_same_records(tmp_path: Path, store: str) -> None:
    """Same summary keys, same history keys (TRL's extra numbers only under `trl/`), same experiment."""
    from sspo_cli.engines.dispatch import run_training

    trl_summary = run_training_trl(tiny_trl_recipe(), RunOptions(output_dir=tmp_path, tracking_uri=store))
    native_summary = run_training(tiny_trl_recipe("engine=native"), RunOptions(output_dir=tmp_path, tracking_uri=store))
    assert set(trl_summary) - {"engine"} == set(native_summary)
    assert trl_summary["experiment"] == native_summary["experiment"]
    assert trl_summary["tracking_uri"] == native_summary["tracking_uri"]
    assert set(trl_summary["diagnostics"]) == set(native_summary["diagnostics"])
    trl_keys = set(history_of(trl_summary)[0])
    native_keys = set(history_of(native_summary)[0])
    assert native_keys <= trl_keys
    assert all(key.startswith("trl/") for key in trl_keys - native_keys)
    for row in history_of(trl_summary):  # transformers samples: the trained model, one computation
        assert row["rollout/sampler_logp_diff_mean"] == row["rollout/sampler_logp_diff_max"] == 0.0
        assert row["rollout/policy_lag"] == 0.0


def test_same_seed_same_metrics(tmp_path: Path, store: str) -> None:
    def without_timings(summary):
        return [
            {k: v for k, v in row.items() if "seconds" not in k and "per_s" not in k and k != "trl/step_time"}
            for row in history_of(summary)
        ]

    first = run_training_trl(
        tiny_trl_recipe("objective.name=grpo"), RunOptions(output_dir=tmp_path, tracking_uri=store)
    )
    second = run_training_trl(
        tiny_trl_recipe("objective.name=grpo"), RunOptions(output_dir=tmp_path, tracking_uri=store)
    )
    assert json.dumps(without_timings(first)) == json.dumps(without_timings(second))
    assert first["evals"] == second["evals"]


def test_kl_penalty_trains_against_the_starting_policy(tmp_path: Path, store: str) -> None:
    summary = run_training_trl(
        tiny_trl_recipe("objective.name=grpo", "objective.beta=0.1", "train.steps=1"),
        RunOptions(output_dir=tmp_path, tracking_uri=store),
    )
    assert summary["steps"] == 1
    assert not (Path(summary["run_dir"]) / ".reference").exists()  # the reference weights are not kept


def test_unsupported_recipe_fails_before_any_run_exists(tmp_path: Path) -> None:
    from sspo_cli.engines.trl.mapping import TrlEngineError

    with pytest.raises(TrlEngineError) as info:
        run_training_trl(tiny_trl_recipe("rollout.updates_per_rollout=3"), RunOptions(output_dir=tmp_path))
    assert info.value.key == "rollout.updates_per_rollout"
    assert not any(p.is_dir() and p.name.startswith("quickstart") for p in tmp_path.iterdir())
    assert not (tmp_path / "mlflow.db").exists()


# `objective.beta: 1e300` is finite in YAML and inf in float32: every loss is NaN, no test hook needed.
EXPLODING = ["objective.name=grpo", "objective.beta=1.0e+300"]


def test_non_finite_updates_are_skipped_and_counted(tmp_path: Path, store: str) -> None:
    import torch
    from safetensors.torch import load_file

    from sspo_cli.models import load_policy
    from sspo_cli.tasks import build_task

    recipe = tiny_trl_recipe(*EXPLODING, "train.max_skipped=100")
    summary = run_training_trl(recipe, RunOptions(output_dir=tmp_path, tracking_uri=store))
    assert [row["train/skipped_updates"] for row in history_of(summary)] == [2.0, 4.0]
    assert summary["skipped_updates"] == 4
    initial, _ = load_policy(recipe.model, build_task(recipe.task).alphabet, recipe.seed)
    saved = load_file(Path(summary["run_dir"]) / "checkpoints" / "final" / "model.safetensors")
    assert saved and all(torch.equal(tensor, initial.state_dict()[name]) for name, tensor in saved.items())


def test_too_many_skips_stop_the_run_as_failed(tmp_path: Path, store: str) -> None:
    from mlflow.tracking import MlflowClient

    from sspo_cli.run.state import TooManySkips

    with pytest.raises(TooManySkips) as info:
        run_training_trl(
            tiny_trl_recipe(*EXPLODING, "train.max_skipped=3"), RunOptions(output_dir=tmp_path, tracking_uri=store)
        )
    assert info.value.count == 3 and info.value.step == 2  # the third update is the first of step 2
    run_id = json.loads((info.value.run_dir / "run.json").read_text())["run_id"]
    assert MlflowClient(store).get_run(run_id).info.status == "FAILED"
