"""Stop a real `sspo train` with real signals, resume it, and get exactly the uninterrupted run.

One run is interrupted five ways in turn, each followed by `sspo train --resume`: SIGKILL
before its first checkpoint, SIGINT (graceful), SIGTERM (graceful), two SIGINTs (the second
exits at once) and SIGKILL while a checkpoint is being written. It must end with the same summary metrics, history, weights and
optimizer state as the same recipe run without interruption, and MLflow must hold every step
exactly once.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_reliability import (
    TIMEOUT_S,
    history_steps,
    interrupt,
    metric_steps,
    mlflow_store,
    only_run_dir,
    read_stderr_until,
    run_sspo,
    run_status,
    start_sspo,
    wait_for,
    write_choice_task,
    write_recipe,
)

STEPS = 30
CHECKPOINT_EVERY = 4
VOLATILE_SUMMARY_KEYS = {"run_id", "run_name", "run_dir", "tracking_uri", "wall_seconds", "resumed_from"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    write_recipe(root / "recipe.yaml", write_choice_task(root / "data.jsonl"), STEPS, CHECKPOINT_EVERY)
    return root


class Background:
    """A `sspo train` started now and collected when first needed, so it overlaps other work."""

    def __init__(self, process: Any, out: Path):
        self.process, self.out = process, out
        self._run_dir: Path | None = None

    def run_dir(self) -> Path:
        if self._run_dir is None:
            out, err = self.process.communicate(timeout=TIMEOUT_S)
            assert self.process.returncode == 0, out + err
            self._run_dir = only_run_dir(self.out)
        return self._run_dir


@pytest.fixture(scope="module")
def uninterrupted(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Background]:
    out = workspace / "uninterrupted"
    store = mlflow_store(tmp_path_factory, out)
    background = Background(
        start_sspo(
            "train", str(workspace / "recipe.yaml"), "-o", str(out), "--tracking-uri", f"sqlite:///{store}", "-q"
        ),
        out,
    )
    yield background
    if background.process.poll() is None:
        background.process.kill()
        background.process.communicate()


def test_interrupted_and_resumed_run_equals_uninterrupted_run(
    workspace: Path, uninterrupted: Background, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = workspace / "interrupted"
    database = mlflow_store(tmp_path_factory, workspace / "interrupted-store")

    # 0. SIGKILL before the first checkpoint: `--resume` starts the same run again from step 0.
    process = start_sspo(
        "train", str(workspace / "recipe.yaml"), "-o", str(out), "--tracking-uri", f"sqlite:///{database}", "-q"
    )
    wait_for(lambda: (started := started_run(out)) is not None and history_steps(started) >= 1, process, poll=0.005)
    code, _, _ = interrupt(process, signal.SIGKILL)
    run_dir = only_run_dir(out)
    assert code == -signal.SIGKILL and not list((run_dir / "checkpoints").glob("step-*"))
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]

    # 1. Resume, then Ctrl-C: finish the step, checkpoint, KILLED, print how to resume, exit 130.
    process = start_sspo("train", "--resume", str(run_dir), "-q")
    wait_for(lambda: history_steps(run_dir) >= 3, process)
    first_stop = assert_graceful_stop(process, signal.SIGINT, run_dir, database, run_id)

    # 2. Resume, then SIGTERM: the same graceful stop.
    process = start_sspo("train", "--resume", str(run_dir), "-q")
    wait_for(lambda: history_steps(run_dir) >= first_stop + 3, process)
    second_stop = assert_graceful_stop(process, signal.SIGTERM, run_dir, database, run_id)
    assert second_stop > first_stop

    # 3. Resume, then Ctrl-C twice: the second one, sent while the first is being honoured, exits at
    #    once; the last complete checkpoint is untouched.
    process = start_sspo("train", "--resume", str(run_dir), "-q")
    wait_for(lambda: history_steps(run_dir) >= second_stop + 2, process)
    process.send_signal(signal.SIGINT)
    err = read_stderr_until(process, "stopping after the current step")
    sent = time.monotonic()
    process.send_signal(signal.SIGINT)
    err += process.stderr.read()
    assert process.wait(timeout=60) == 130, err
    assert time.monotonic() - sent < 10
    assert "SIGINT again: exiting now" in err and "Traceback" not in err
    assert_every_checkpoint_complete(run_dir)

    # 4. Resume, then SIGKILL while a checkpoint is being written: the kill leaves a staging folder
    #    (retried until one does: the write may finish between seeing it and the kill), and every
    #    complete checkpoint intact.
    assert any(kill_while_writing_checkpoint(run_dir) for _ in range(3))
    assert run_status(database, run_id) == "RUNNING"  # a killed process cannot say anything
    assert_every_checkpoint_complete(run_dir)

    # 5. Resume to the end; the staging folder is cleared away.
    result = run_sspo("train", "--resume", str(run_dir), "-q")
    assert result.returncode == 0, result.stderr
    assert not [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]

    expected = uninterrupted.run_dir()
    assert_same_training(expected, run_dir)
    assert run_status(database, run_id) == "FINISHED"
    assert metric_steps(database, run_id, "train/reward") == list(range(1, STEPS + 1))  # re-run steps not logged twice
    assert metric_steps(database, run_id, "eval/accuracy") == [0, 5, 10, 15, 20, 25, 30]
    assert metric_values(expected.parent / "mlflow.db", expected, "train/grad_norm") == metric_values(
        database, run_dir, "train/grad_norm"
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    # The resumes that led to the final state: from scratch, then from each graceful stop; the later
    # ones restarted from the step-`second_stop` checkpoint or a later one.
    assert summary["resumed_from"][:3] == [0, first_stop, second_stop] and summary["resumed_from"] == sorted(
        summary["resumed_from"]
    )


def test_a_killed_lora_run_resumes_exactly(workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """LoRA with a KL term: the checkpoint holds the adapter (and the tiny base); steps after it are trained again."""

    def holds_the_adapter(checkpoint: Path) -> None:
        assert (checkpoint / "adapter_model.safetensors").is_file()
        assert not (checkpoint / "model.safetensors").exists()

    lora = ["--set", "model.lora.rank=4", "--set", "objective.beta=0.1"]
    kill_resume_and_compare(workspace, tmp_path_factory, "lora", lora, holds_the_adapter)


@pytest.mark.parametrize("lag", ["rollout.policy_lag=3", "rollout.sync_interval=3"])
def test_a_killed_lagged_run_resumes_exactly(
    workspace: Path, tmp_path_factory: pytest.TempPathFactory, lag: str
) -> None:
    """Sampled by older weights: the checkpoint holds the copies later steps sample with, so the resumed run samples
    what the uninterrupted one does. Checkpoints every 4 steps put the kill between refreshes of a 3-step sync."""

    def holds_the_sampler_copies(checkpoint: Path) -> None:
        assert (checkpoint / "sampler" / "weights.safetensors").is_file()

    tag = lag.split(".")[1].split("=")[0]
    run_dir = kill_resume_and_compare(workspace, tmp_path_factory, tag, ["--set", lag], holds_the_sampler_copies)
    lags = [json.loads(line)["rollout/policy_lag"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert lags == ([0, 1, 2, 3, 3, 3, 3, 3, 3, 3] if tag == "policy_lag" else [0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


def test_resume_of_a_finished_run_is_refused(uninterrupted: Background) -> None:
    result = run_sspo("train", "--resume", str(uninterrupted.run_dir()))
    assert result.returncode == 2
    assert "already finished" in result.stderr and "Traceback" not in result.stderr


# --------------------------------------------------------------------------- helpers
def kill_resume_and_compare(
    workspace: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tag: str,
    overrides: list[str],
    check_checkpoint: Callable[[Path], None],
) -> Path:
    """A 10-step run with `overrides`, SIGKILLed after step 5 and resumed, equals the same run uninterrupted.

    `check_checkpoint` looks at the checkpoint the resume starts from, before the resume replaces it.
    Returns the resumed run's folder."""
    from sspo_cli.engines.native.checkpoint import latest_checkpoint

    arguments = [*overrides, "--set", "train.steps=10", "-q"]
    runs = {}
    for name in ("uninterrupted", "killed"):
        out = workspace / f"{tag}-{name}"
        store = mlflow_store(tmp_path_factory, out)
        runs[name] = start_sspo(
            "train", str(workspace / "recipe.yaml"), "-o", str(out), "--tracking-uri", f"sqlite:///{store}", *arguments
        )
    killed = workspace / f"{tag}-killed"
    wait_for(lambda: (started := started_run(killed)) is not None and history_steps(started) >= 5, runs["killed"])
    code, _, _ = interrupt(runs["killed"], signal.SIGKILL)
    assert code == -signal.SIGKILL
    run_dir = only_run_dir(killed)
    checkpoint = latest_checkpoint(run_dir / "checkpoints")
    assert checkpoint is not None
    check_checkpoint(checkpoint)
    result = run_sspo("train", "--resume", str(run_dir), "-q")
    assert result.returncode == 0, result.stderr
    out, err = runs["uninterrupted"].communicate(timeout=TIMEOUT_S)
    assert runs["uninterrupted"].returncode == 0, out + err
    assert_same_training(only_run_dir(workspace / f"{tag}-uninterrupted"), run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from"] == [int(checkpoint.name[5:])]
    return run_dir


def kill_while_writing_checkpoint(run_dir: Path) -> bool:
    """Resume, SIGKILL as soon as a checkpoint staging folder appears; True if the kill left one behind."""
    checkpoints = run_dir / "checkpoints"
    process = start_sspo("train", "--resume", str(run_dir), "-q")
    wait_for(lambda: any(p.name.startswith(".tmp-step-") for p in checkpoints.iterdir()), process, poll=0.001)
    code, _, _ = interrupt(process, signal.SIGKILL)
    assert code == -signal.SIGKILL
    return any(p.name.startswith(".tmp-step-") for p in checkpoints.iterdir())


def started_run(out: Path) -> Path | None:
    """The run folder once its MLflow run exists (run.json written)."""
    found = [p for p in out.iterdir() if (p / "run.json").is_file()] if out.is_dir() else []
    return found[0] if found else None


def assert_graceful_stop(process: Any, sig: signal.Signals, run_dir: Path, database: Path, run_id: str) -> int:
    code, out, err = interrupt(process, sig)
    assert code == 130, err
    assert "Traceback" not in out + err
    assert f"sspo train --resume {run_dir}" in err
    step = history_steps(run_dir)
    assert (run_dir / "checkpoints" / f"step-{step:06d}" / "trainer_state.json").is_file(), err
    assert json.loads((run_dir / "checkpoints" / f"step-{step:06d}" / "trainer_state.json").read_text())["step"] == step
    assert f"after step {step}" in err
    assert run_status(database, run_id) == "KILLED"
    return step


def assert_every_checkpoint_complete(run_dir: Path) -> None:
    from sspo_cli.engines.native.checkpoint import list_checkpoints, load_checkpoint

    found = list_checkpoints(run_dir / "checkpoints")
    assert found
    for folder in found:
        loaded = load_checkpoint(folder)
        assert loaded.step == int(folder.name.removeprefix("step-")) and loaded.weights


def assert_same_training(expected: Path, actual: Path) -> None:
    import torch
    from safetensors.torch import load_file

    def summary(run_dir: Path) -> dict[str, Any]:
        data = json.loads((run_dir / "summary.json").read_text())
        return {k: v for k, v in data.items() if k not in VOLATILE_SUMMARY_KEYS}

    def history(run_dir: Path) -> list[dict[str, float]]:
        rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if "seconds" not in k and "per_s" not in k} for row in rows]

    assert summary(actual) == summary(expected)
    assert history(actual) == history(expected)
    final_expected, final_actual = expected / "checkpoints" / "final", actual / "checkpoints" / "final"
    files = sorted(str(path.relative_to(final_expected)) for path in final_expected.rglob("*.safetensors"))
    assert files and files == sorted(
        str(path.relative_to(final_actual)) for path in final_actual.rglob("*.safetensors")
    )
    for file in files:  # the model's weights; under LoRA the adapter's and the tiny base's
        weights_expected, weights_actual = load_file(final_expected / file), load_file(final_actual / file)
        assert weights_expected.keys() == weights_actual.keys()
        assert all(torch.equal(weights_expected[k], weights_actual[k]) for k in weights_expected)
    optimizer_expected = torch.load(final_expected / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    optimizer_actual = torch.load(final_actual / "optimizer.pt", weights_only=True)["optimizer"]["state"]
    for index, state in optimizer_expected.items():
        assert all(torch.equal(state[k], optimizer_actual[index][k]) for k in state)


def metric_values(database: Path, run_dir: Path, key: str) -> list[float]:
    import sqlite3

    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    connection = sqlite3.connect(database)
    try:
        return [
            row[0]
            for row in connection.execute(
                "select value from metrics where run_uuid=? and key=? order by step", (run_id, key)
            )
        ]
    finally:
        connection.close()
