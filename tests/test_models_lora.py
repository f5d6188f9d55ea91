"""LoRA through peft (`model.lora`): real `sspo train` and `sspo eval` runs of the tiny model and of
a model folder, and the policy's parts in process: only the adapters train, the KL reference is
the base model with its adapters off (no second copy), checkpoints hold the adapter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers_reliability import only_run_dir, run_sspo, write_choice_task

pytest.importorskip("peft")

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}


def lora_recipe(path: Path, data_file: Path, model: dict[str, Any], steps: int = 4) -> Path:
    """A choice task (a random tiny model earns some reward), a KL term, a learning rate that moves the adapters."""
    recipe = {
        "name": "lora",
        "seed": 3,
        "model": model,
        "task": {"name": "file", "path": str(data_file), "eval_size": 32, "dev_size": 0},
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 1},
        "objective": {"name": "grpo", "beta": 0.1},
        "train": {
            "steps": steps,
            "lr": 0.05,
            "checkpoint_every": 2,
            "keep_checkpoints": 2,
            "threads": 1,
            "warm_start": {"enabled": False},
        },
        "eval": {"every": 2, "batch_size": 32},
    }
    path.write_text(json.dumps(recipe))  # JSON is YAML
    return path


def train(recipe: Path, out: Path) -> Path:
    result = run_sspo("train", str(recipe), "-o", str(out), "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    return only_run_dir(out)


def eval_report(run_dir: Path) -> dict[str, Any]:
    result = run_sspo("eval", str(run_dir), "-o", str(run_dir.parent))
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(next((run_dir / "evals").glob("eval-*.json")).read_text())


def tiny_base(recipe: Path):
    """The recipe's tiny model as it was before training (warm start off: built from the seed)."""
    from sspo_cli.models import load_policy
    from sspo_cli.recipe import load_recipe
    from sspo_cli.tasks import build_task

    r = load_recipe(recipe)
    return load_policy(r.model.model_copy(update={"device": "cpu"}), build_task(r.task).alphabet, r.seed)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lora")
    recipe = lora_recipe(
        root / "recipe.yaml", write_choice_task(root / "data.jsonl"), {"tiny": TINY, "lora": {"rank": 4}}
    )
    return train(recipe, root / "out")


def test_a_lora_run_trains_only_the_adapters(tiny_run: Path) -> None:
    import torch
    from safetensors.torch import load_file

    final = tiny_run / "checkpoints" / "final"
    assert not (final / "model.safetensors").exists()  # no whole model: the adapter, and the tiny base beside it
    adapter = load_file(final / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in name or ".lora_B." in name for name in adapter)
    assert any(".lora_B." in name and bool(tensor.abs().sum() > 0) for name, tensor in adapter.items())  # B starts at 0

    base_model, _ = tiny_base(tiny_run / "recipe.yaml")
    saved_base = load_file(final / "base" / "model.safetensors")
    initial = base_model.state_dict()
    assert saved_base.keys() == initial.keys()
    assert all(torch.equal(saved_base[name], initial[name]) for name in initial)  # bit-identical after training

    # The base never changes, so every checkpoint shares one copy of it.
    bases = [folder / "base" / "model.safetensors" for folder in (tiny_run / "checkpoints").iterdir()]
    assert len({path.stat().st_ino for path in bases}) == 1

    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["diagnostics"]["kl/k3"]["max"] > 0  # the KL term saw a reference that differs from the policy


def test_eval_of_a_lora_run_gives_its_final_eval(tiny_run: Path) -> None:
    report = eval_report(tiny_run)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert report["decoding"] == "greedy" and report["size"] == 32
    assert report["accuracy"] == summary["eval_after"]["accuracy"]
    assert report["mean_reward"] == summary["eval_after"]["mean_reward"]
    assert summary["eval_after"] != summary["eval_before"]  # the adapters changed what the model answers


def test_lora_on_a_model_folder_saves_only_the_adapter_and_evaluates(tmp_path: Path, model_folder: Path) -> None:
    """The shared BPE model folder, its chat template on, with micro-batches and gradient checkpointing as well."""
    lora = {"rank": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    recipe = lora_recipe(
        tmp_path / "recipe.yaml",
        write_choice_task(tmp_path / "data.jsonl"),
        {"path": str(model_folder), "lora": lora},
        2,
    )
    overrides = {"performance": {"micro_batch_size": 3, "gradient_checkpointing": True}}
    recipe.write_text(json.dumps({**json.loads(recipe.read_text()), **overrides}))
    run_dir = train(recipe, tmp_path / "out")

    final = run_dir / "checkpoints" / "final"
    assert not (final / "base").exists() and not (final / "model.safetensors").exists()  # the base stays in its folder
    adapter_config = json.loads((final / "adapter_config.json").read_text())
    assert adapter_config["r"] == 2 and sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]
    from sspo_cli.research.execution.evaluation import EvalOptions, eval_recipe, evaluate_target, resolve_target

    target = resolve_target(str(run_dir), None, run_dir.parent)  # in process: the CLI's eval is tested above
    report = evaluate_target(str(run_dir), target, eval_recipe(target, None, None, []), EvalOptions())
    after = json.loads((run_dir / "summary.json").read_text())["eval_after"]
    assert (report.accuracy, report.mean_reward) == (after["accuracy"], after["mean_reward"])


# --------------------------------------------------------------------------- in process


def lora_policy(beta: float = 0.1, **lora: Any):
    from sspo_cli.engines.native.loop import build_policy
    from sspo_cli.models import load_policy
    from sspo_cli.recipe import recipe_from_dict
    from sspo_cli.tasks import build_task

    overrides = [f"model.tiny.{k}={v}" for k, v in TINY.items()]
    overrides += ["model.device=cpu", "objective.name=grpo", f"objective.beta={beta}", "model.lora={}"]
    overrides += [f"model.lora.{k}={json.dumps(v)}" for k, v in lora.items()]
    recipe = recipe_from_dict({}, overrides)
    model, tokenizer = load_policy(recipe.model, build_task(recipe.task).alphabet, recipe.seed)
    return recipe, build_policy(recipe, model, tokenizer)


def test_the_kl_reference_is_the_base_with_its_adapters_off() -> None:
    import torch

    from sspo_cli.models.logprobs import completion_logprobs

    recipe, policy = lora_policy()
    base, tokenizer = load_base_like(recipe)
    assert policy.reference is None and policy.has_reference  # no frozen copy of the model
    assert sum(p.numel() for p in policy.model.parameters()) == sum(p.numel() for p in base.parameters()) + sum(
        p.numel() for p in policy.model.parameters() if p.requires_grad
    )
    with torch.no_grad():
        for name, parameter in policy.model.named_parameters():
            if ".lora_B." in name:
                parameter.normal_()  # adapters that change the outputs
    batch = tokenizer(["12?1", "7?20"], return_tensors="pt", padding=True)

    def logprobs(model):
        with torch.no_grad():
            return completion_logprobs(model, batch["input_ids"], batch["attention_mask"], 2, 1.0)[0]

    with policy.reference_model() as reference:
        assert reference is policy.model
        assert torch.equal(logprobs(reference), logprobs(base))
    assert not torch.allclose(logprobs(policy.model), logprobs(base))  # the adapters are back on after the block


def load_base_like(recipe):
    from sspo_cli.models import load_policy
    from sspo_cli.tasks import build_task

    return load_policy(recipe.model, build_task(recipe.task).alphabet, recipe.seed)


def test_only_adapter_parameters_reach_the_optimiser() -> None:
    from sspo_cli.engines.native.loop import make_optimizer

    recipe, policy = lora_policy(target_modules=["q_proj"])
    optimizer, _ = make_optimizer(recipe, policy.model)
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    names = {name for name, p in policy.model.named_parameters() if id(p) in optimised}
    assert names == {name for name, _ in policy.model.named_parameters() if ".lora_" in name}
    assert names and all(".q_proj.lora_" in name for name in names)


def test_a_full_model_checkpoint_does_not_resume_a_lora_recipe(tmp_path: Path) -> None:
    from sspo_cli.engines.native.checkpoint import (
        CheckpointError,
        apply_policy_weights,
        load_checkpoint,
        save_checkpoint,
    )
    from sspo_cli.engines.native.learner import Learner
    from sspo_cli.engines.native.loop import make_optimizer
    from sspo_cli.run.state import Policy, TrainState

    recipe, policy = lora_policy()
    full = Policy(*load_base_like(recipe))
    save_checkpoint(tmp_path, Learner(full, *make_optimizer(recipe, full.model)), TrainState(step=1), keep=1)
    with pytest.raises(CheckpointError, match="holds a whole model but the recipe trains LoRA adapters"):
        apply_policy_weights(policy, load_checkpoint(tmp_path / "step-000001"))


def test_the_warm_start_cache_key_ignores_lora() -> None:
    from sspo_cli.recipe import recipe_from_dict
    from sspo_cli.run.warm_start import warm_start_key
    from sspo_cli.tasks import build_task

    plain = recipe_from_dict({}, [])
    task = build_task(plain.task)
    assert warm_start_key(plain, task) == warm_start_key(recipe_from_dict({}, ["model.lora.rank=4"]), task)
    assert warm_start_key(plain, task) != warm_start_key(recipe_from_dict({}, ["model.tiny.num_layers=2"]), task)
