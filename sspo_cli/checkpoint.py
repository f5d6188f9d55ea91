"""Checkpoints: written whole into a temporary folder, then renamed into place.

A kill during the write leaves the previous checkpoint intact. Nothing is loaded with pickle:
weights are safetensors, optimiser state goes through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sspo_cli.trainer import Policy, TrainState

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


class TooManySkips(RuntimeError):
    def __init__(self, count: int):
        self.count = count
        super().__init__(f"{count} consecutive updates had a non-finite loss or gradient (train.max_skipped)")


class CheckpointError(ValueError):
    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


def save_checkpoint(root: Path, policy: "Policy", optimizer, scheduler, state: "TrainState", keep: int, final: bool = False) -> Path:
    import torch

    from sspo_cli.models import save_policy

    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{state.step:06d}"
    staging = root / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    save_policy(policy.model, policy.tokenizer, staging)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, staging / OPTIMIZER_FILE)
    (staging / STATE_FILE).write_text(json.dumps(asdict(state)))
    _fsync_tree(staging)
    target = root / name
    _replace_dir(staging, target)
    if final:
        final_staging = root / f".tmp-final-{os.getpid()}"
        shutil.rmtree(final_staging, ignore_errors=True)
        shutil.copytree(target, final_staging)
        _replace_dir(final_staging, root / "final")
    prune_checkpoints(root, keep)
    return target


def prune_checkpoints(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete step checkpoints, oldest first (temporary folders are never listed)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).is_file())


def load_training_state(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer state, {'optimizer', 'scheduler'}) of a checkpoint; refuses pickled code."""
    import pickle

    import torch

    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError("--resume", f"{folder / STATE_FILE} cannot be read: {exc}") from None
    try:
        tensors = torch.load(folder / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError("--resume", f"{folder / OPTIMIZER_FILE} was refused (only plain tensors are loaded, never code): {first}") from None
    return state, tensors


def _replace_dir(source: Path, target: Path) -> None:
    """Rename `source` to `target`, replacing any old `target` without a moment where neither exists complete."""
    if target.exists():
        trash = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.replace(target, trash)
        os.replace(source, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(source, target)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
