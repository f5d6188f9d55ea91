"""One RL step: deterministic for a fixed state, and the speed switches do not change its maths."""

from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")

from sspo_cli.engines.native.learner import Learner  # noqa: E402
from sspo_cli.engines.native.step import rl_step  # noqa: E402
from sspo_cli.models import load_policy  # noqa: E402
from sspo_cli.objectives import build_objective  # noqa: E402
from sspo_cli.recipe import recipe_from_dict  # noqa: E402
from sspo_cli.run.schedule import lr_multiplier  # noqa: E402
from sspo_cli.run.state import Policy, TrainState  # noqa: E402
from sspo_cli.tasks import build_task  # noqa: E402

TIMING_KEYS = {"train/tokens_per_s", "train/step_seconds", "train/sample_seconds", "train/objective_seconds"}


def tiny_recipe(tiny_overrides: list[str], objective: str = "sspo", **performance):
    overrides = tiny_overrides + ["model.device=cpu", "rollout.max_new_tokens=6", "rollout.updates_per_rollout=2"]
    overrides += [f"performance.{key}={value}" for key, value in performance.items()]
    return recipe_from_dict({"objective": {"name": objective}}, overrides)


def fresh_run(recipe):
    task = build_task(recipe.task)
    model, tokenizer = load_policy(recipe.model, task.alphabet, recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.train.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(recipe))
    return task, Policy(model, tokenizer), build_objective(recipe.objective), optimizer, scheduler, TrainState()


def step_from(recipe, run, step: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """rl_step on a deep copy of (policy, optimizer, scheduler, state) at `step`."""
    task, policy, objective, optimizer, scheduler, state = run
    policy = copy.deepcopy(policy)
    optimizer_copy = torch.optim.AdamW(policy.model.parameters(), lr=recipe.train.lr)
    optimizer_copy.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    scheduler_copy = torch.optim.lr_scheduler.LambdaLR(optimizer_copy, lr_multiplier(recipe))
    scheduler_copy.load_state_dict(scheduler.state_dict())
    state = copy.deepcopy(state)
    state.step = step
    metrics = rl_step(recipe, Learner(policy, optimizer_copy, scheduler_copy), task, objective, state)
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}, {
        k: v.clone() for k, v in policy.model.state_dict().items()
    }


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("autocast_bf16", [False, True])
def test_two_steps_from_the_same_state_are_identical(tiny_overrides, autocast_bf16):
    recipe = tiny_recipe(tiny_overrides, autocast_bf16=autocast_bf16)
    run = fresh_run(recipe)
    first_metrics, first_weights = step_from(recipe, run, 3)
    second_metrics, second_weights = step_from(recipe, run, 3)
    assert first_metrics.keys() == second_metrics.keys()
    assert all(same(first_metrics[k], second_metrics[k]) for k in first_metrics), first_metrics
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)


@pytest.mark.parametrize(
    "switches",
    [
        {"sampling_logprobs": False},
        {"share_prompt_prefix": False},
        {"sampling_logprobs": False, "share_prompt_prefix": False},
        {"trim_padding": False},
        {"length_buckets": "auto"},
        {"reserve_kv_cache": False},
        {"update_attention": "same"},
        {"update_attention": "sdpa"},
        {"update_attention": "eager"},
        {"length_buckets": 3},
        {"length_buckets": 2, "share_prompt_prefix": False},
        {"micro_batch_size": 3},
        {"micro_batch_size": 1, "share_prompt_prefix": False},
        {"gradient_checkpointing": True},
        {"gradient_checkpointing": True, "micro_batch_size": 5},
    ],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()),
)
def test_speed_switches_do_not_change_the_step(tiny_overrides, switches):
    """Same samples (same random stream), same advantages; losses and weights equal up to float rounding."""
    fast = tiny_recipe(tiny_overrides, "grpo", autocast_bf16=False)
    slow = tiny_recipe(tiny_overrides, "grpo", autocast_bf16=False, **switches)
    fast_metrics, fast_weights = step_from(fast, fresh_run(fast), 1)
    slow_metrics, slow_weights = step_from(slow, fresh_run(slow), 1)
    for key in ("train/reward", "train/response_length"):
        assert fast_metrics[key] == slow_metrics[key]
    for key in ("train/loss", "train/entropy", "train/grad_norm"):
        assert fast_metrics[key] == pytest.approx(slow_metrics[key], rel=1e-4, abs=1e-6), key
    for name in fast_weights:
        torch.testing.assert_close(fast_weights[name], slow_weights[name], rtol=1e-4, atol=1e-6)


def test_baseline_sampler_still_trains(tiny_overrides):
    recipe = tiny_recipe(
        tiny_overrides, sampler="hf_generate", sampling_logprobs=False, share_prompt_prefix=False, trim_padding=False
    )
    metrics, _ = step_from(recipe, fresh_run(recipe), 1)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/response_length"] > 0


def test_bf16_autocast_keeps_the_loss_float32_and_close(tiny_overrides):
    fp32 = tiny_recipe(tiny_overrides, "grpo", autocast_bf16=False)
    bf16 = tiny_recipe(tiny_overrides, "grpo", autocast_bf16=True)
    fp32_metrics, _ = step_from(fp32, fresh_run(fp32), 1)
    task, policy, objective, *rest = fresh_run(bf16)
    seen = []

    class CheckedObjective:
        """The real objective, recording the dtypes of each loss it computes."""

        def loss(self, logp, **inputs):
            loss = objective.loss(logp, **inputs)
            seen.append((logp.dtype, loss.dtype))
            return loss

        def __getattr__(self, name):
            return getattr(objective, name)

    bf16_metrics, _ = step_from(bf16, (task, policy, CheckedObjective(), *rest), 1)
    assert seen and all(dtypes == (torch.float32, torch.float32) for dtypes in seen)
    assert bf16_metrics["train/reward"] == fp32_metrics["train/reward"]
    assert math.isfinite(bf16_metrics["train/loss"])
    assert bf16_metrics["train/grad_norm"] == pytest.approx(fp32_metrics["train/grad_norm"], rel=0.1)
