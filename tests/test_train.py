"""`sspo train` end to end on tiny models: outputs, MLflow records, determinism."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, TINY_OVERRIDES, sspo_command

from sspo_cli.engines.dispatch import run_training
from sspo_cli.objectives import objective_names
from sspo_cli.recipe import load_recipe
from sspo_cli.run.state import RunOptions

SPEC_METRICS = [
    "ratio/token_mean",
    "ratio/token_std",
    "ratio/token_min",
    "ratio/token_max",
    "ratio/log_abs_mean",
    "ratio/seq_mean",
    "ratio/seq_std",
    "ratio/seq_min",
    "ratio/seq_max",
    "weight/seq_mean",
    "weight/seq_var",
    "grad_weight/mean",
    "grad_weight/pos_mean",
    "grad_weight/neg_mean",
    "grad_weight/saturated_frac",
    "kl/k3",
]
TRAIN_METRICS = [
    "train/reward",
    "train/accuracy",
    "train/response_length",
    "train/entropy",
    "train/grad_norm",
    "train/lr",
    "train/tokens_per_s",
]


def tiny_recipe(*extra: str):
    return load_recipe(REPO / "recipes" / "quickstart.yaml", [*TINY_OVERRIDES, *extra])


def test_cli_train_writes_run_folder_summary_and_mlflow_run(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    result = subprocess.run(
        sspo_command(
            "train",
            str(REPO / "recipes" / "quickstart.yaml"),
            *[a for o in TINY_OVERRIDES for a in ("--set", o)],
            "-o",
            str(tmp_path),
            "--quiet",
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    run_dirs = [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("quickstart-sspo-s0-")]
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("eval_before", "eval_after"):
        assert set(summary[key]) >= {"accuracy", "mean_reward"}
        assert 0.0 <= summary[key]["accuracy"] <= 1.0
    assert summary["steps"] == 4 and summary["wall_seconds"] > 0
    assert (run_dir / "recipe.yaml").is_file()
    assert load_recipe(run_dir / "recipe.yaml").fingerprint() == summary["fingerprint"]
    assert (run_dir / "checkpoints" / "final" / "model.safetensors").is_file()
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [1, 2, 3, 4]
    assert all(set(SPEC_METRICS + TRAIN_METRICS) <= set(row) for row in history)

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["objective.name"] == "sspo"
    assert run.data.params["rollout.group_size"] == "4"
    assert run.data.tags["sspo.fingerprint"] == summary["fingerprint"]
    # An untrained tiny model earns no reward, so every advantage is 0 and the `weight/*` and
    # `grad_weight/*` means are over an empty set (NaN, not sent to MLflow); the rest must be there.
    for key in [*SPEC_METRICS[:9], "kl/k3", *TRAIN_METRICS, "eval/accuracy", "eval/mean_reward"]:
        assert key in run.data.metrics, key
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/reward")]
    assert steps == [1, 2, 3, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/accuracy")] == [0, 2, 4]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"recipe.yaml", "summary.json", "final_checkpoint"} <= artifacts
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "final_checkpoint")}
    assert "model.safetensors" in logged and "config.json" in logged
    assert "optimizer.pt" not in logged and (run_dir / "checkpoints" / "final" / "optimizer.pt").is_file()
    # The closing lines land a user on the runs and charts, not on MLflow 3.17's GenAI overview.
    assert summary["experiment_id"] == run.info.experiment_id
    landing = f"/#/experiments/{run.info.experiment_id}?workflowType=machine_learning"
    assert landing in result.stdout.replace("\n", ""), result.stdout[-800:]


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path: Path) -> None:
    first = run_training(tiny_recipe(), RunOptions(output_dir=tmp_path))
    second = run_training(tiny_recipe(), RunOptions(output_dir=tmp_path))
    other = run_training(tiny_recipe("seed=1"), RunOptions(output_dir=tmp_path))

    def history(summary):
        return (Path(summary["run_dir"]) / "history.jsonl").read_text().splitlines()

    def without_timings(lines):
        rows = [json.loads(line) for line in lines]
        return [{k: v for k, v in row.items() if "seconds" not in k and "per_s" not in k} for row in rows]

    assert without_timings(history(first)) == without_timings(history(second))
    assert first["evals"] == second["evals"]
    assert without_timings(history(first)) != without_timings(history(other))


@pytest.mark.parametrize("objective", objective_names())
def test_every_objective_trains_with_a_kl_penalty(tmp_path: Path, objective: str) -> None:
    summary = run_training(
        tiny_recipe(f"objective.name={objective}", "objective.beta=0.05", "train.steps=2"),
        RunOptions(output_dir=tmp_path),
    )
    rows = [json.loads(line) for line in (Path(summary["run_dir"]) / "history.jsonl").read_text().splitlines()]
    assert all(row["kl/k3"] >= 0 for row in rows)
    assert summary["objective"] == objective and summary["skipped_updates"] == 0


def test_warm_start_is_cached_across_seeds(tmp_path: Path) -> None:
    warm = [
        "train.warm_start.enabled=true",
        "train.warm_start.max_steps=10",
        "train.warm_start.eval_every=5",
        "train.steps=1",
    ]
    first = run_training(tiny_recipe(*warm), RunOptions(output_dir=tmp_path))
    second = run_training(tiny_recipe(*warm, "seed=7"), RunOptions(output_dir=tmp_path))
    assert first["warm_start"]["cached"] is False and second["warm_start"]["cached"] is True
    assert first["eval_before"] == second["eval_before"]  # identical starting weights
    assert len(list((tmp_path / ".cache" / "warm_start").iterdir())) == 1


@pytest.mark.parametrize("logged", [True, False])
def test_eval_by_run_id_without_the_run_folder_reads_the_logged_model(tmp_path: Path, logged: bool) -> None:
    """The MLflow run's final model (no optimizer state) is enough for `sspo eval RUN_ID`; kept out of MLflow
    (`tracking.log_checkpoint: false`), the run folder alone holds it, and without it eval says so."""
    from mlflow.tracking import MlflowClient

    recipe = tiny_recipe("train.steps=1", f"tracking.log_checkpoint={str(logged).lower()}")
    summary = run_training(recipe, RunOptions(output_dir=tmp_path))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    logged_files = {Path(a.path).name for a in client.list_artifacts(summary["run_id"], "final_checkpoint")}
    assert ("model.safetensors" in logged_files) is logged and "optimizer.pt" not in logged_files
    shutil.rmtree(summary["run_dir"])
    result = subprocess.run(
        sspo_command("eval", summary["run_id"], "--size", "8", "-o", str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if logged:
        assert result.returncode == 0, result.stderr[-2000:]
        assert "accuracy" in result.stdout
    else:
        assert result.returncode == 2 and "final_checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_a_local_hugging_face_folder_trains_as_model_path(tmp_path: Path) -> None:
    """The path for real models: any local causal-LM folder with its tokenizer (here, our own checkpoint)."""
    first = run_training(tiny_recipe("train.steps=1"), RunOptions(output_dir=tmp_path))
    folder = Path(first["run_dir"]) / "checkpoints" / "final"
    second = run_training(tiny_recipe(f"model.path={folder}", "train.steps=2"), RunOptions(output_dir=tmp_path))
    assert second["eval_before"]["accuracy"] == first["eval_after"]["accuracy"]
    assert second["steps"] == 2


@pytest.mark.parametrize("setting", ["true", "auto"])
def test_forced_bf16_warns_only_where_this_machine_has_no_native_bf16(tmp_path: Path, setting: str) -> None:
    import torch

    from sspo_cli.engines.native.tuning import native_bf16

    sets = [a for o in [*TINY_OVERRIDES, "train.steps=1", f"performance.autocast_bf16={setting}"] for a in ("--set", o)]
    result = subprocess.run(
        sspo_command("train", str(REPO / "recipes" / "quickstart.yaml"), *sets, "-o", str(tmp_path), "--quiet"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    warned = "no native bfloat16" in result.stderr
    assert warned == (setting == "true" and not native_bf16(torch.device("cpu"))), result.stderr
