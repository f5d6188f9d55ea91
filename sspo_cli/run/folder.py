"""A run folder: where it is made, what makes a folder a run, and the files that let `--resume` find everything.

    OUTPUT_DIR/<run name>/
        run.json        MLflow run id, tracking URI, experiment (written when the run starts)
        recipe.yaml     the resolved recipe; `--resume` trains exactly this
        history.jsonl   one line of metrics per RL step
        checkpoints/    step-NNNNNN/ ... and final/ (the native engine's: engines/native/checkpoint.py)
        summary.json    written when the run finishes
        .lock           held (flock) by the process training the run

This module imports no torch: `--resume` on a folder that is not a run fails in milliseconds.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.errors import InputError

if TYPE_CHECKING:
    from sspo_cli.recipe import Recipe

RUN_FILE = "run.json"
RECIPE_FILE = "recipe.yaml"
SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.jsonl"
CHECKPOINTS = "checkpoints"
FINAL_NAME = "final"  # checkpoints/final/: the last weights, whichever engine wrote them
STEP_PREFIX = "step-"
LOCK_FILE = ".lock"
RUN_FORMAT = 1


def final_checkpoint(run_dir: Path) -> Path:
    """The final weights of a run, whichever engine wrote them: a Hugging Face model folder."""
    return run_dir / CHECKPOINTS / FINAL_NAME


# Torch pickles in a checkpoint folder hold training state (optimizer, schedule, RNG), which only resume reads; the
# weights themselves are safetensors.
TRAINING_STATE_SUFFIXES = (".pt", ".pth")


def model_files(checkpoint: Path) -> list[Path]:
    """The files of a checkpoint folder that make a model to evaluate: all but the training state."""
    return sorted(p for p in checkpoint.iterdir() if p.is_file() and p.suffix not in TRAINING_STATE_SUFFIXES)


def step_folder_name(step: int) -> str:
    """The name of step `step`'s checkpoint folder: `step-000150`."""
    return f"{STEP_PREFIX}{step:06d}"


class CheckpointError(InputError):
    """A run folder or checkpoint that cannot be used; names the option (`--resume`) and the file."""


class OutputError(InputError):
    """The output dir cannot take a run folder; names `--output-dir`."""


def check_output_dir(output_dir: Path) -> None:
    """The output dir, or the folder it would be created in, takes a file; nothing is left behind."""
    existing = output_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError("--output-dir", f"cannot create {str(output_dir)!r}: {str(existing)!r} is not a folder")
    probe = existing / f".sspo-write-test-{os.getpid()}-{time.time_ns()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError("--output-dir", f"cannot write to {str(existing)!r}: {exc.strerror or exc}") from None


def ensure_writable(output_dir: Path) -> None:
    """Create the output dir; OutputError if it cannot be written."""
    check_output_dir(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError("--output-dir", f"cannot create {str(output_dir)!r}: {exc.strerror or exc}") from None


def default_run_name(recipe: Recipe) -> str:
    return f"{recipe.name}-{recipe.objective.name}-s{recipe.seed}"


def new_run_dir(output_dir: Path, run_name: str) -> Path:
    """A fresh `<run name>-<timestamp>` folder in the output dir."""
    ensure_writable(output_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        folder = output_dir / f"{run_name}-{stamp}{'' if attempt == 0 else f'-{attempt}'}"
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError(
                "--output-dir", f"cannot create a run folder in {str(output_dir)!r}: {exc.strerror or exc}"
            ) from None
    raise OutputError("--output-dir", f"cannot create a run folder for {run_name!r}")


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    tracking_uri: str
    experiment: str
    run_name: str
    format: int = RUN_FORMAT

    def write(self, run_dir: Path) -> None:
        write_json_atomic(run_dir / RUN_FILE, asdict(self))


def read_run_folder(run_dir: Path) -> RunInfo:
    """The run.json of a folder that really is a run; a CheckpointError naming `--resume` otherwise."""
    key = "--resume"
    if not run_dir.exists():
        raise CheckpointError(key, f"run folder {str(run_dir)!r} does not exist")
    if not run_dir.is_dir():
        raise CheckpointError(key, f"{str(run_dir)!r} is not a folder (give the run folder, e.g. runs/<run name>)")
    missing = [name for name in (RUN_FILE, RECIPE_FILE) if not (run_dir / name).is_file()]
    if missing:
        raise CheckpointError(key, f"{str(run_dir)!r} is not a run folder of `sspo train` (no {' or '.join(missing)})")
    try:
        data = json.loads((run_dir / RUN_FILE).read_text())
        info = RunInfo(**{name: data[name] for name in ("run_id", "tracking_uri", "experiment", "run_name")})
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(key, f"{run_dir / RUN_FILE} is damaged: {type(exc).__name__}: {exc}") from None
    if not all(isinstance(value, str) and value for value in (info.run_id, info.tracking_uri)):
        raise CheckpointError(
            key, f"{run_dir / RUN_FILE} is damaged: run_id and tracking_uri must be non-empty strings"
        )
    if (run_dir / SUMMARY_FILE).is_file():
        raise CheckpointError(key, f"run {str(run_dir)!r} already finished ({SUMMARY_FILE} exists): nothing to resume")
    return info


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def write_text_atomic(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with staging.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, path)


class RunLock:
    """An exclusive lock on a run folder while a process trains it; the OS drops it when the process dies."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / LOCK_FILE
        self._handle: Any = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; run folders are then unguarded
            return self
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise CheckpointError(
                "--resume", f"run {str(self.path.parent)!r} is being trained by {holder}; stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"sspo process {os.getpid()}")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.close()  # closing releases the flock
            self._handle = None
