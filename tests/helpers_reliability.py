"""Shared by the reliability tests: the real CLI as a subprocess, tiny recipes, store and folder checks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BAD_INPUTS = Path(__file__).resolve().parent / "bad_inputs"
TIMEOUT_S = 240

# One thread per process: the tests run beside other work on a small machine, and a fixed thread
# count keeps CPU float reductions identical between the runs a test compares.
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
    "COLUMNS": "200",
    "PYTHONPATH": str(REPO),
}


def sspo_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "sspo_cli.cli.main", *args]


def run_sspo(*args: str, cwd: Path | None = None, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(sspo_args(*args), cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def start_sspo(*args: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        sspo_args(*args), cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def write_choice_task(path: Path, rows: int = 240) -> Path:
    """Prompts `N?` with a one-character answer: a random tiny model earns some reward, so updates are real."""
    with path.open("w") as handle:
        for i in range(rows):
            handle.write(json.dumps({"prompt": f"{i}?", "answer": str(i % 3)}) + "\n")
    return path


def write_recipe(path: Path, data_file: Path, steps: int, checkpoint_every: int, extra: str = "") -> Path:
    """A tiny recipe whose steps take a fraction of a second and move the weights."""
    path.write_text(
        f"""name: rel
seed: 3
model:
  tiny: {{hidden_size: 32, num_layers: 1, num_heads: 2, num_kv_heads: 1, intermediate_size: 64}}
task: {{name: file, path: {data_file}, eval_size: 16, dev_size: 0}}
rollout: {{prompts_per_step: 4, group_size: 4, max_new_tokens: 1}}
train: {{steps: {steps}, lr: 0.01, checkpoint_every: {checkpoint_every}, keep_checkpoints: 2, threads: 1, warm_start: {{enabled: false}}}}
eval: {{every: 5, batch_size: 16}}
{extra}"""
    )
    return path


def mlflow_store(tmp_path_factory: Any, folder: Path) -> Path:
    """A fresh MLflow sqlite store with no runs at folder/mlflow.db: a copy of one initialised once per
    session (creating a store runs MLflow's migrations, seconds per store)."""
    template = tmp_path_factory.getbasetemp() / "mlflow-template" / "mlflow.db"
    if not template.is_file():
        from sspo_cli.run.tracking import open_client

        template.parent.mkdir(exist_ok=True)
        open_client(f"sqlite:///{template}")
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(template, folder / "mlflow.db"))


def run_dirs(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    return sorted(
        p for p in output_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "mlartifacts"
    )


def only_run_dir(output_dir: Path) -> Path:
    found = run_dirs(output_dir)
    assert len(found) == 1, found
    return found[0]


def count_runs(database: Path) -> int:
    """Runs in an MLflow sqlite store, deleted ones included (0 if the store was never created)."""
    if not database.is_file():
        return 0
    connection = sqlite3.connect(database)
    try:
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type='table'")}
        return connection.execute("select count(*) from runs").fetchone()[0] if "runs" in tables else 0
    finally:
        connection.close()


def run_status(database: Path, run_id: str) -> str:
    connection = sqlite3.connect(database)
    try:
        return connection.execute("select status from runs where run_uuid=?", (run_id,)).fetchone()[0]
    finally:
        connection.close()


def metric_steps(database: Path, run_id: str, key: str) -> list[int]:
    connection = sqlite3.connect(database)
    try:
        rows = connection.execute(
            "select step from metrics where run_uuid=? and key=? order by step", (run_id, key)
        ).fetchall()
        return [row[0] for row in rows]
    finally:
        connection.close()


def history_steps(run_dir: Path) -> int:
    path = run_dir / "history.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def wait_for(
    condition: Callable[[], bool], process: subprocess.Popen[str], timeout: float = TIMEOUT_S, poll: float = 0.02
) -> None:
    """Poll until `condition`, failing early (with the process's output) if it exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"process exited with {process.returncode} before the condition held\n{out}\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("timed out waiting")
        time.sleep(poll)


def interrupt(
    process: subprocess.Popen[str], sig: signal.Signals = signal.SIGINT, timeout: float = TIMEOUT_S
) -> tuple[int, str, str]:
    os.kill(process.pid, sig)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def read_stderr_until(process: subprocess.Popen[str], text: str, timeout: float = TIMEOUT_S) -> str:
    """Lines of stderr up to and including the first that contains `text` (fails if the process ends first)."""
    seen: list[str] = []

    def reader() -> None:
        for line in process.stderr:  # type: ignore[union-attr]
            seen.append(line)
            if text in line:
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    if not seen or text not in seen[-1]:
        process.kill()
        raise AssertionError(f"{text!r} never appeared on stderr:\n{''.join(seen)}")
    return "".join(seen)
