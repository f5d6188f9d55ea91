"""Checkpoints: written whole into a temporary folder, then renamed into place.

    checkpoints/step-000040/   model weights (safetensors) + tokenizer, optimizer.pt, trainer_state.json
    checkpoints/final/         the last step's files again (hard links), for the MLflow artifact
    checkpoints/step-*/sampler/weights.safetensors   under a policy lag, the older weights later steps sample with

Under LoRA (`model.lora`) the weights are the adapter's (adapter_config.json and
adapter_model.safetensors, peft's format); a tiny-model base is kept beside it in `base/`, hard
links of the previous checkpoint's (it never changes); a folder base is named by `model.path`.

A kill at any moment leaves every complete checkpoint intact: a checkpoint only gets its
`step-*` name by a rename once all its files are written and synced, and an old one is renamed
away before it is deleted. Nothing is loaded with pickle: weights are safetensors, optimiser,
scheduler and RNG states go through `torch.load(weights_only=True)`, which refuses code.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.engines.native.lag import LaggedWeights
from sspo_cli.errors import first_line
from sspo_cli.run.folder import FINAL_NAME, STEP_PREFIX, CheckpointError, step_folder_name
from sspo_cli.run.state import Policy, TrainState

if TYPE_CHECKING:
    import torch

    from sspo_cli.engines.native.learner import Learner

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SAMPLER_FOLDER = "sampler"  # the lagged copies of the trained weights (`rollout.policy_lag`, `sync_interval`)
SAMPLER_FILE = "weights.safetensors"
STAGING_PREFIX = ".tmp-"
TRASH_PREFIX = ".old-"  # a complete folder being replaced
DELETE_PREFIX = ".del-"  # a folder being deleted


@dataclass
class LoadedCheckpoint:
    """Everything a checkpoint holds, read and checked before anything is changed."""

    folder: Path
    state: dict[str, Any]  # TrainState fields
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]
    weights: dict[str, torch.Tensor]  # the whole model's, or under LoRA the adapter's
    base_weights: dict[str, torch.Tensor] | None = None  # LoRA on a tiny model: its frozen base (`base/`)
    sampler_weights: dict[str, torch.Tensor] | None = None  # under a policy lag: LaggedWeights.flat()

    @property
    def step(self) -> int:
        return int(self.state["step"])


def train_state_of(loaded: LoadedCheckpoint) -> TrainState:
    """The checkpoint's trainer_state.json as a TrainState; CheckpointError if it holds anything else."""
    data, source = loaded.state, loaded.folder
    unknown = sorted(set(data) - {f.name for f in fields(TrainState)})
    checks = {
        "step": int,
        "skipped_updates": int,
        "consecutive_skips": int,
        "history": list,
        "evals": list,
        "elapsed_seconds": (int, float),
        "resumed_from": list,
    }
    wrong = [name for name, kind in checks.items() if name in data and not isinstance(data[name], kind)]
    if unknown or wrong:
        problem = f"unknown keys {unknown}" if unknown else f"wrong types for {wrong}"
        raise CheckpointError("--resume", f"{source} is not a trainer state ({problem})")
    return TrainState(**data)


# --------------------------------------------------------------------------- writing


def save_checkpoint(root: Path, learner: Learner, state: TrainState, keep: int, final: bool = False) -> Path:
    """Write `root/step-NNNNNN` atomically (and `root/final` when `final`); keep the last `keep` steps."""
    import torch

    from sspo_cli.models import quiet_transformers, save_policy

    policy = learner.policy
    root.mkdir(parents=True, exist_ok=True)
    name = step_folder_name(state.step)
    staging = root / f"{STAGING_PREFIX}{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    with quiet_transformers():
        if policy.adapter is None:
            save_policy(policy.model, policy.tokenizer, staging)
        else:
            save_lora_policy(policy, staging, latest_checkpoint(root))
    if learner.lagged.copies:
        from safetensors.torch import save_file

        (staging / SAMPLER_FOLDER).mkdir()
        save_file(
            {k: v.contiguous() for k, v in learner.lagged.flat().items()}, str(staging / SAMPLER_FOLDER / SAMPLER_FILE)
        )
    payload = {
        "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict(),
        "rng": capture_rng(),
    }
    torch.save(payload, staging / OPTIMIZER_FILE)
    (staging / STATE_FILE).write_text(json.dumps(asdict(state)))
    _fsync_tree(staging)
    target = root / name
    _replace_dir(staging, target)
    if final:
        final_staging = root / f"{STAGING_PREFIX}{FINAL_NAME}-{os.getpid()}"
        shutil.rmtree(final_staging, ignore_errors=True)
        shutil.copytree(target, final_staging, copy_function=_link_or_copy)
        _replace_dir(final_staging, root / FINAL_NAME)
    prune_checkpoints(root, keep)
    _fsync_dir(root)
    return target


def save_lora_policy(policy: Policy, staging: Path, previous: Path | None) -> None:
    from sspo_cli.models.lora import BASE_FOLDER, save_adapter, save_base

    assert policy.adapter is not None
    save_adapter(policy.adapter, policy.tokenizer, staging)
    if not policy.adapter.base_in_checkpoint:
        return
    if previous is not None and (previous / BASE_FOLDER / "model.safetensors").is_file():
        shutil.copytree(previous / BASE_FOLDER, staging / BASE_FOLDER, copy_function=_link_or_copy)
    else:
        save_base(policy.adapter, policy.tokenizer, staging / BASE_FOLDER)


def prune_checkpoints(root: Path, keep: int) -> None:
    for old in list_checkpoints(root)[:-keep]:
        _remove_dir(old)


def recover_interrupted_writes(root: Path) -> None:
    """Tidy up after a kill: drop half-written folders, and put back a folder caught mid-replacement."""
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.startswith((STAGING_PREFIX, DELETE_PREFIX)):
            shutil.rmtree(path, ignore_errors=True)
        elif path.name.startswith(TRASH_PREFIX):
            original = root / path.name.removeprefix(TRASH_PREFIX).rsplit("-", 1)[0]
            if original.name and not original.exists() and (path / STATE_FILE).is_file():
                os.replace(path, original)
            else:
                shutil.rmtree(path, ignore_errors=True)


def capture_rng() -> dict[str, Any]:
    """Every RNG state a step could touch. Steps reseed from (seed, step), so this is belt and braces."""
    import torch

    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    import torch

    try:
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "python" in rng:
            version, internal, gauss = rng["python"]
            random.setstate((version, tuple(internal), gauss))
        if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(rng["cuda"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError("--resume", f"the RNG state in {OPTIMIZER_FILE} is invalid: {first_line(exc)}") from None


# --------------------------------------------------------------------------- reading


def list_checkpoints(root: Path) -> list[Path]:
    """Complete step checkpoints, oldest first (temporary and half-deleted folders are never listed)."""
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / STATE_FILE).is_file()
    )


def latest_checkpoint(root: Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(folder: Path) -> LoadedCheckpoint:
    """Read and check a whole checkpoint; a crafted or damaged file raises CheckpointError naming it."""
    state, tensors = load_training_state(folder)
    for key in ("optimizer", "scheduler"):
        if not isinstance(tensors.get(key), dict):
            raise CheckpointError("--resume", f"{folder / OPTIMIZER_FILE} has no {key} state")
    rng = tensors.get("rng") if isinstance(tensors.get("rng"), dict) else {}
    from sspo_cli.models.lora import BASE_FOLDER

    base = load_weights(folder / BASE_FOLDER) if (folder / BASE_FOLDER).is_dir() else None
    sampler = load_weights(folder / SAMPLER_FOLDER) if (folder / SAMPLER_FOLDER).is_dir() else None
    weights = load_weights(folder)
    return LoadedCheckpoint(folder, state, tensors["optimizer"], tensors["scheduler"], rng, weights, base, sampler)


def load_training_state(folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer state, {'optimizer', 'scheduler', 'rng'}) of a checkpoint; refuses pickled code."""
    import pickle

    import torch

    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError("--resume", f"{folder / STATE_FILE} cannot be read: {first_line(exc)}") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise CheckpointError("--resume", f"{folder / STATE_FILE} is not a trainer state (no step number)")
    try:
        tensors = torch.load(folder / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            "--resume",
            f"{folder / OPTIMIZER_FILE} was refused (only plain tensors are loaded, never code): {first_line(exc)}",
        ) from None
    if not isinstance(tensors, dict):
        raise CheckpointError("--resume", f"{folder / OPTIMIZER_FILE} does not hold optimizer and scheduler states")
    return state, tensors


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All safetensors shards of a checkpoint as one name -> tensor mapping (safetensors cannot hold code)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise CheckpointError("--resume", f"{folder} has no .safetensors weights")
    weights: dict[str, Any] = {}
    for file in files:
        try:
            weights.update(load_file(str(file), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError("--resume", f"{file} cannot be read as safetensors: {first_line(exc)}") from None
    return weights


def apply_policy_weights(policy: Policy, loaded: LoadedCheckpoint) -> None:
    """The checkpoint's weights into the policy: the whole model's, or under LoRA the adapter's (and
    a tiny base's); a checkpoint of the other kind is refused."""
    from sspo_cli.models.lora import adapter_weight_problems, is_adapter_folder

    lora_checkpoint = is_adapter_folder(loaded.folder)
    if lora_checkpoint != (policy.adapter is not None):
        held, wanted = ("a LoRA adapter", "the whole model") if lora_checkpoint else ("a whole model", "LoRA adapters")
        raise CheckpointError("--resume", f"{loaded.folder} holds {held} but the recipe trains {wanted} (model.lora)")
    if policy.adapter is None:
        apply_weights(policy.model, loaded.weights, loaded.folder)
    else:
        if loaded.base_weights is not None:
            copy_weights(policy.adapter.base_weights, loaded.base_weights, loaded.folder / "base")
        problem = adapter_weight_problems(policy.adapter, loaded.weights)
        if problem:
            raise CheckpointError(
                "--resume", f"the adapter in {loaded.folder} does not fit the recipe's model ({problem})"
            )


def lagged_weights_of(loaded: LoadedCheckpoint, model) -> LaggedWeights:
    """The checkpoint's lagged copies (none: the run had no lag, or no later step needed one), checked against
    the model they lag."""
    source = loaded.folder / SAMPLER_FOLDER / SAMPLER_FILE
    try:
        lagged = LaggedWeights.from_flat(loaded.sampler_weights or {})
    except ValueError as exc:
        raise CheckpointError("--resume", f"{source} does not hold lagged weights: {exc}") from None
    problem = lagged.fit_problem(model)
    if problem:
        raise CheckpointError("--resume", f"{source} does not fit the recipe's model ({problem})")
    return lagged


def copy_weights(targets: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], source: Path) -> None:
    """Copy `weights` into the tensors `targets` names, which must be exactly the same names and shapes."""
    import torch

    if targets.keys() != weights.keys() or any(targets[k].shape != weights[k].shape for k in targets):
        raise CheckpointError("--resume", f"weights in {source} do not fit the recipe's model")
    with torch.no_grad():
        for name, tensor in targets.items():
            tensor.copy_(weights[name])


def apply_weights(model, weights: dict[str, torch.Tensor], source: Path) -> None:
    """Copy checkpoint weights into `model`; every parameter must be covered (tied ones count once)."""
    import torch

    try:
        with torch.no_grad():
            result = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(
            "--resume", f"weights in {source} do not fit the recipe's model: {first_line(exc)}"
        ) from None
    current = model.state_dict()
    loaded = {current[name].data_ptr() for name in weights if name in current}
    missing = [name for name in result.missing_keys if current[name].data_ptr() not in loaded]
    if result.unexpected_keys or missing:
        detail = f"unexpected {result.unexpected_keys[:3]}" if result.unexpected_keys else f"missing {missing[:3]}"
        raise CheckpointError("--resume", f"weights in {source} do not fit the recipe's model ({detail})")


# --------------------------------------------------------------------------- file-system helpers


def _replace_dir(source: Path, target: Path) -> None:
    """Rename `source` to `target`. An old `target` is renamed away first (recover_interrupted_writes undoes a kill in between)."""
    if target.exists():
        trash = target.with_name(f"{TRASH_PREFIX}{target.name}-{os.getpid()}")
        os.replace(target, trash)
        os.replace(source, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(source, target)


def _remove_dir(folder: Path) -> None:
    """Rename then delete, so a kill mid-delete never leaves a half-empty folder under a checkpoint name."""
    trash = folder.with_name(f"{DELETE_PREFIX}{folder.name}-{os.getpid()}")
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _link_or_copy(source: str, target: str) -> None:
    """`final` shares the last step's files: checkpoint files are never modified after the rename."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_dir():
            _fsync_tree(path)
        elif path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
