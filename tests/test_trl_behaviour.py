"""Behaviour log-probs on the TRL engine without vLLM: `rollout.behaviour_logprobs`, TRL's importance weight.

vLLM cannot run here. `FakeVllm` is our trainer with TRL's vLLM code path on (`use_vllm`):
it samples with transformers and returns, where vLLM returns its log-probs, the trained model's
own log-probs of the sampled tokens (this test's forward) shifted by SHIFT, and no log-prob for
one token (vLLM's None, TRL's NaN). Everything after that is GRPOTrainer's and ours, unchanged:
TRL builds `sampling_per_token_logps`, its `old_per_token_logps` and importance weight; our
`_compute_loss` picks `old_logp` and logs the diagnostics.
"""

import dataclasses
import math

import pytest

pytest.importorskip("trl")

import torch
from conftest import REPO, TINY_OVERRIDES
from transformers import TrainerCallback

from sspo_cli.engines.trl.engine import grpo_config
from sspo_cli.engines.trl.mapping import plan_trl_run
from sspo_cli.engines.trl.trainer import SspoGRPOTrainer, task_reward_function, training_dataset
from sspo_cli.models import load_policy
from sspo_cli.recipe import load_recipe
from sspo_cli.rollout.prompts import text_format
from sspo_cli.tasks import build_task

SHIFT = (0.3, -0.2)  # vLLM's log-prob minus the trainer's, on even and odd completion tokens
VLLM = ["trl.use_vllm=true", "model.path=not-read-by-this-test"]


def shift_at(position: int) -> float:
    return SHIFT[position % 2]


def recipe_for(*overrides: str):
    return load_recipe(
        REPO / "recipes" / "quickstart.yaml",
        [*TINY_OVERRIDES, "engine=trl", "train.steps=1", "rollout.updates_per_rollout=1", *VLLM, *overrides],
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FakeVllm(SspoGRPOTrainer):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.use_vllm = True  # TRL's vLLM branches from here on; the sampling itself stays transformers'
        self.batches: list[dict[str, torch.Tensor]] = []  # what each _compute_loss call was given
        self.missing_left = True

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        self.use_vllm = False
        try:
            completion_ids, _ = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        finally:
            self.use_vllm = True
        return completion_ids, [self.vllm_logprobs(p, c) for p, c in zip(prompt_ids, completion_ids)]

    def vllm_logprobs(self, prompt: list[int], completion: list[int]) -> list[float | None]:
        with torch.no_grad():
            logits = self.model(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1].float()
        own = torch.log_softmax(logits / self.temperature, -1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
        values: list[float | None] = [float(v) + shift_at(t) for t, v in enumerate(own)]
        if self.missing_left and len(values) > 1:  # one token vLLM could not score
            values[1], self.missing_left = None, False
        return values

    def _compute_loss(self, model, inputs):
        self.batches.append({k: v.detach().clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        return super()._compute_loss(model, inputs)


class Logs(TrainerCallback):
    def __init__(self):
        self.updates: list[dict[str, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "train_runtime" not in logs:
            self.updates.append(dict(logs))


def train_fake_vllm(tmp_path, *overrides: str) -> tuple[FakeVllm, list[dict[str, float]]]:
    """The recipe planned for a GPU with vLLM, then run on CPU by FakeVllm."""
    recipe = recipe_for(*overrides)
    plan = plan_trl_run(recipe, cuda_available=True)
    args = grpo_config(dataclasses.replace(plan, config={**plan.config, "use_vllm": False, "use_cpu": True}), tmp_path)
    task = build_task(recipe.task)
    model, tokenizer = load_policy(recipe.model.model_copy(update={"path": None}), task.alphabet, seed=3)
    text = text_format(recipe, tokenizer)
    logs = Logs()
    trainer = FakeVllm(
        model=model,
        reward_funcs=task_reward_function(task, text.end_ids(tokenizer, model)),
        args=args,
        train_dataset=training_dataset(task, tokenizer, text),
        processing_class=tokenizer,
        callbacks=[logs],
        recipe=recipe,
    )
    trainer.train()
    assert len(logs.updates) == recipe.rollout.updates_per_rollout
    return trainer, logs.updates


def shifts(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """|SHIFT| of every position, the counted tokens, and those vLLM scored."""
    mask = batch["completion_mask"].bool()
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    size = torch.tensor([abs(s) for s in SHIFT])[positions % 2]
    return size, mask, mask & ~torch.isnan(batch["sampling_per_token_logps"])


def expected_mismatch(batches: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
    """The spec's mean and max of |vLLM - trainer| over the scored completion tokens: |SHIFT|."""
    total, tokens, largest = 0.0, 0, 0.0
    for batch in batches:
        size, _, scored = shifts(batch)
        total, tokens = total + float(size[scored].sum()), tokens + int(scored.sum())
        largest = max(largest, float(size[scored].max()))
    return total / tokens, largest


def test_sampler_logprobs_are_the_objectives_old_logprobs(tmp_path) -> None:
    trainer, (update,) = train_fake_vllm(tmp_path, "rollout.behaviour_logprobs=sampler")
    (batch,) = trainer.batches  # one update, one micro-batch: the whole rollout
    assert "old_per_token_logps" not in batch  # TRL skipped its forward: one update per rollout
    size, mask, scored = shifts(batch)
    assert int((mask & ~scored).sum()) == 1  # the token vLLM could not score
    # First update, sampling weights: log(ratio) = logp - vLLM's = -SHIFT, and 0 where the trainer's stood in.
    assert update["ratio/log_abs_mean"] == pytest.approx(float(size[scored].sum()) / int(mask.sum()), abs=1e-5)
    assert update["ratio/token_max"] == pytest.approx(math.exp(-SHIFT[1]), abs=1e-5)
    assert update["ratio/token_min"] == pytest.approx(math.exp(-SHIFT[0]), abs=1e-5)
    mean, largest = expected_mismatch(trainer.batches)
    assert update["rollout/sampler_logp_diff_mean"] == pytest.approx(mean, abs=1e-5)
    assert update["rollout/sampler_logp_diff_max"] == pytest.approx(largest, abs=1e-5)


def test_learner_logprobs_leave_vllms_out_of_the_loss(tmp_path) -> None:
    trainer, (update,) = train_fake_vllm(tmp_path)  # rollout.behaviour_logprobs: learner, no TRL weight
    (batch,) = trainer.batches
    assert "importance_sampling_ratio" not in batch
    # old_logp is the trainer's: the first update is exactly on-policy, whatever vLLM said.
    assert update["ratio/log_abs_mean"] == 0.0 and update["ratio/token_max"] == update["ratio/token_min"] == 1.0
    mean, largest = expected_mismatch(trainer.batches)  # still measured
    assert update["rollout/sampler_logp_diff_mean"] == pytest.approx(mean, abs=1e-5)
    assert update["rollout/sampler_logp_diff_max"] == pytest.approx(largest, abs=1e-5)


def test_trls_importance_weight_is_its_truncated_ratio(tmp_path) -> None:
    cap = 1.1
    trainer, (update,) = train_fake_vllm(
        tmp_path,
        "trl.vllm_importance_sampling_correction=true",
        "trl.vllm_importance_sampling_mode=token_truncate",
        f"trl.vllm_importance_sampling_clip_max={cap}",
    )
    (batch,) = trainer.batches
    _, mask, scored = shifts(batch)
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    # min(exp(old - sampling), cap) with old - sampling = -SHIFT; 1 (no correction) where vLLM gave no log-prob.
    by_hand = torch.tensor([min(math.exp(-s), cap) for s in SHIFT])[positions % 2]
    by_hand = torch.where(scored, by_hand, 1.0)
    torch.testing.assert_close(batch["importance_sampling_ratio"][mask], by_hand[mask], rtol=0, atol=1e-5)
    assert update["ratio/log_abs_mean"] < 1e-5  # old_logp: the trainer's (TRL's forward, same weights)
    mean, _ = expected_mismatch(trainer.batches)
    assert update["rollout/sampler_logp_diff_mean"] == pytest.approx(mean, abs=1e-5)
    assert update["sampling/importance_sampling_ratio/max"] == pytest.approx(cap)


def test_mismatch_over_the_whole_rollout_when_trl_takes_its_own_forward(tmp_path) -> None:
    """Two updates: TRL scores the rollout after sampling; the mismatch is logged once, with the first update."""
    trainer, (first, second) = train_fake_vllm(
        tmp_path, "rollout.behaviour_logprobs=sampler", "rollout.updates_per_rollout=2"
    )
    assert len(trainer.batches) == 2 and all("old_per_token_logps" in b for b in trainer.batches)
    mean, largest = expected_mismatch(trainer.batches)  # both halves of the rollout
    assert first["rollout/sampler_logp_diff_mean"] == pytest.approx(mean, abs=1e-5)
    assert first["rollout/sampler_logp_diff_max"] == pytest.approx(largest, abs=1e-5)
    assert "rollout/sampler_logp_diff_mean" not in second
    size, mask, scored = shifts(trainer.batches[0])
    assert first["ratio/log_abs_mean"] == pytest.approx(float(size[scored].sum()) / int(mask.sum()), abs=1e-5)
