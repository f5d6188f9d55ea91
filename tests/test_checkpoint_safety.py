"""Checkpoints and run folders from someone else execute no code; interrupted writes leave no damage."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from helpers_reliability import BAD_INPUTS, run_sspo

from sspo_cli.engines.native.learner import Learner

RUN_ID = "0123456789abcdef0123456789abcdef"


class WritesAMarker:
    """What an attacker would put in a pickle: unpickling it runs a shell command (here a harmless touch)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny_policy():
    from sspo_cli.models import build_char_tokenizer, build_tiny_model
    from sspo_cli.recipe import TinyModelConfig
    from sspo_cli.run.state import Policy

    tokenizer = build_char_tokenizer("0123456789+=")
    return Policy(
        build_tiny_model(
            TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32),
            tokenizer,
            0,
        ),
        tokenizer,
    )


def make_optimizer(policy):
    import torch

    optimizer = torch.optim.AdamW(policy.model.parameters(), lr=1e-3)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: 1.0)


def fake_run_folder(root: Path, policy, step: int) -> Path:
    """A run folder as `sspo train` leaves it after an interruption at `step` (no MLflow needed to refuse it)."""
    from sspo_cli.engines.native.checkpoint import save_checkpoint
    from sspo_cli.run.state import TrainState

    run_dir = root / "someone-elses-run"
    run_dir.mkdir(parents=True)
    shutil.copy(BAD_INPUTS / "base.yaml", run_dir / "recipe.yaml")
    (run_dir / "run.json").write_text(
        json.dumps(
            {
                "run_id": RUN_ID,
                "tracking_uri": f"sqlite:///{root}/mlflow.db",
                "experiment": "sspo",
                "run_name": run_dir.name,
            }
        )
    )
    optimizer, scheduler = make_optimizer(policy)
    save_checkpoint(run_dir / "checkpoints", Learner(policy, optimizer, scheduler), TrainState(step=step), keep=2)
    return run_dir


def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_never_runs(tmp_path: Path, tiny_policy) -> None:
    import torch

    run_dir = fake_run_folder(tmp_path, tiny_policy, step=3)
    marker = tmp_path / "code-ran"
    crafted = run_dir / "checkpoints" / "step-000003" / "optimizer.pt"
    torch.save({"optimizer": WritesAMarker(marker), "scheduler": {}}, crafted)

    result = run_sspo("train", "--resume", str(run_dir))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "--resume" in result.stderr and str(crafted) in result.stderr.replace("\n", "")
    assert "refused" in result.stderr and "never code" in result.stderr
    assert not marker.exists()
    assert not (tmp_path / "mlflow.db").exists()


def test_a_run_being_trained_cannot_be_resumed_by_a_second_process(tmp_path: Path, tiny_policy) -> None:
    from sspo_cli.run.folder import RunLock

    run_dir = fake_run_folder(tmp_path, tiny_policy, step=1)
    with RunLock(run_dir):
        result = run_sspo("train", "--resume", str(run_dir))
    assert result.returncode == 2, result.stderr
    assert f"is being trained by sspo process {os.getpid()}" in result.stderr.replace("\n", "")


def test_damaged_checkpoint_files_are_named(tmp_path: Path, tiny_policy) -> None:
    from sspo_cli.engines.native.checkpoint import CheckpointError, load_checkpoint

    run_dir = fake_run_folder(tmp_path, tiny_policy, step=2)
    folder = run_dir / "checkpoints" / "step-000002"
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="model.safetensors cannot be read as safetensors"):
        load_checkpoint(folder)
    (folder / "trainer_state.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="trainer_state.json is not a trainer state"):
        load_checkpoint(folder)


def test_trust_remote_code_is_off_unless_a_recipe_sets_it_and_then_warns(tmp_path: Path, tiny_policy) -> None:
    from sspo_cli.models import load_pretrained, save_policy
    from sspo_cli.recipe import ModelConfig

    folder = tmp_path / "model"
    save_policy(tiny_policy.model, tiny_policy.tokenizer, folder)
    assert ModelConfig().trust_remote_code is False
    with pytest.warns(UserWarning, match="trust_remote_code is on"):
        load_pretrained(ModelConfig(path=str(folder), trust_remote_code=True))


def test_checkpoints_round_trip_and_keep_the_last_n(tmp_path: Path, tiny_policy) -> None:
    import torch

    from sspo_cli.engines.native.checkpoint import apply_weights, list_checkpoints, load_checkpoint, save_checkpoint
    from sspo_cli.run.state import TrainState

    root = tmp_path / "checkpoints"
    optimizer, scheduler = make_optimizer(tiny_policy)
    for step in (1, 2, 3):
        save_checkpoint(
            root,
            Learner(tiny_policy, optimizer, scheduler),
            TrainState(step=step, history=[{"step": step, "x": 0.5}]),
            keep=2,
            final=step == 3,
        )
    assert [p.name for p in list_checkpoints(root)] == ["step-000002", "step-000003"]
    assert sorted(p.name for p in root.iterdir()) == ["final", "step-000002", "step-000003"]
    # `final` shares the last step's files instead of copying them.
    assert (root / "final" / "model.safetensors").stat().st_ino == (
        root / "step-000003" / "model.safetensors"
    ).stat().st_ino

    loaded = load_checkpoint(root / "step-000003")
    assert loaded.step == 3 and loaded.state["history"] == [{"step": 3, "x": 0.5}]
    before = {k: v.clone() for k, v in tiny_policy.model.state_dict().items()}
    with torch.no_grad():
        for parameter in tiny_policy.model.parameters():
            parameter.add_(1.0)
    apply_weights(tiny_policy.model, loaded.weights, loaded.folder)
    assert all(torch.equal(before[k], v) for k, v in tiny_policy.model.state_dict().items())


def test_recovery_after_a_kill_at_any_point_of_a_checkpoint_write(tmp_path: Path, tiny_policy) -> None:
    """The folders a kill can leave: a half-written staging folder, a folder renamed away for replacement,
    a folder renamed for deletion. None is ever listed as a checkpoint; recovery puts back the one
    caught mid-replacement and clears the rest."""
    from sspo_cli.engines.native.checkpoint import (
        list_checkpoints,
        load_checkpoint,
        recover_interrupted_writes,
        save_checkpoint,
    )
    from sspo_cli.run.state import TrainState

    root = tmp_path / "checkpoints"
    optimizer, scheduler = make_optimizer(tiny_policy)
    save_checkpoint(root, Learner(tiny_policy, optimizer, scheduler), TrainState(step=4), keep=3, final=True)
    save_checkpoint(root, Learner(tiny_policy, optimizer, scheduler), TrainState(step=8), keep=3)
    os.replace(root / "final", root / ".old-final-4242")  # killed between the two renames of a replacement
    os.replace(root / "step-000004", root / ".del-step-000004-4242")  # killed while pruning
    (root / ".del-step-000004-4242" / "model.safetensors").unlink()
    half = root / ".tmp-step-000012-4242"  # killed while writing
    half.mkdir()
    (half / "optimizer.pt").write_bytes(b"partial")

    assert [p.name for p in list_checkpoints(root)] == ["step-000008"]
    recover_interrupted_writes(root)
    assert sorted(p.name for p in root.iterdir()) == ["final", "step-000008"]
    assert load_checkpoint(root / "final").step == 4
    assert load_checkpoint(root / "step-000008").step == 8
