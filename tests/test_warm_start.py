"""The warm start says when it missed its dev-accuracy target: terminal, summary.json, MLflow tag, and `on_miss`."""

import json
import subprocess
from pathlib import Path

from conftest import REPO, TINY_OVERRIDES, sspo_command

# Two supervised steps cannot bring a random model to 99% dev accuracy: a sure miss, in seconds.
MISS = [
    "train.warm_start.enabled=true",
    "train.warm_start.max_steps=2",
    "train.warm_start.eval_every=1",
    "train.warm_start.target_dev_accuracy=0.99",
    "task.dev_size=16",
    "train.steps=1",
]


def train(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    sets = [a for o in [*TINY_OVERRIDES, *MISS, *overrides] for a in ("--set", o)]
    command = sspo_command("train", str(REPO / "recipes" / "quickstart.yaml"), *sets, "-o", str(tmp_path), "--quiet")
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def only_summary(tmp_path: Path) -> dict:
    (summary_file,) = tmp_path.glob("quickstart-sspo-s0-*/summary.json")
    return json.loads(summary_file.read_text())


def mlflow_runs(tmp_path: Path) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])]


def test_a_missed_target_warns_and_is_recorded_then_rl_goes_on(tmp_path: Path) -> None:
    result = train(tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "warning:" in result.stderr and "short of its target 99.0%" in result.stderr
    assert "train.warm_start.max_steps" in result.stderr  # says what to change
    warm = only_summary(tmp_path)["warm_start"]
    assert warm["reached_target"] is False and warm["target"] == 0.99 and warm["steps"] == 2
    (run,) = mlflow_runs(tmp_path)
    assert run.data.tags["sspo.warm_start.reached_target"] == "false"


def test_on_miss_stop_exits_2_naming_the_key_and_leaves_no_run(tmp_path: Path) -> None:
    result = train(tmp_path, "train.warm_start.on_miss=stop")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert any("quickstart.yaml" in line and "train.warm_start.target_dev_accuracy" in line for line in lines), (
        result.stderr
    )
    assert not list(tmp_path.glob("quickstart-sspo-*")), "no run folder"
    assert mlflow_runs(tmp_path) == []


def test_a_reached_target_is_recorded_and_on_miss_does_not_change_the_cache_key(tmp_path: Path) -> None:
    first = train(tmp_path, "train.warm_start.target_dev_accuracy=0.0")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "short of its target" not in first.stderr
    warm = only_summary(tmp_path)["warm_start"]
    assert warm["reached_target"] is True and warm["cached"] is False
    assert mlflow_runs(tmp_path)[0].data.tags["sspo.warm_start.reached_target"] == "true"
    # The same weights, whatever happens after a miss: the second run reads the first one's cache.
    second = train(tmp_path, "train.warm_start.target_dev_accuracy=0.0", "train.warm_start.on_miss=stop", "seed=1")
    assert second.returncode == 0, second.stderr[-2000:]
    (summary_file,) = tmp_path.glob("quickstart-sspo-s1-*/summary.json")
    assert json.loads(summary_file.read_text())["warm_start"]["cached"] is True
