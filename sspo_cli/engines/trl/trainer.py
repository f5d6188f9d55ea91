"""Our objectives, advantages and records inside TRL's `GRPOTrainer` (imports TRL: load lazily).

`SspoGRPOTrainer` is GRPOTrainer with small overrides and nothing copied from it:
- `_compute_loss`: the loss is `build_objective(recipe.objective)` over TRL's per-token log-probs,
  behaviour log-probs (the trainer's or vLLM's, `rollout.behaviour_logprobs`), advantages and
  completion mask, with TRL's vLLM importance weight on each token's gradient where TRL computed
  one; our diagnostics go into TRL's metrics, and `log` merges them per update (min of `*_min`,
  max of `*_max`) where TRL would average;
- `_generate_and_score_completions`: advantages from our `compute_advantages` (TRL's differ
  from the spec in the std epsilon, 1e-4 instead of 1e-6) and the spec's sampler/learner
  mismatch (`SamplerMismatch`); `_calculate_rewards` and `_generate` record `train/accuracy`
  and `train/sample_seconds`;
- `create_scheduler` and `get_decay_parameter_names`: the native engine's learning-rate
  schedule, and weight decay on every parameter as the native AdamW does.
`RunRecorder` turns TRL's logs into per-step rows for the run layer's `RunRecords` (history,
MLflow, periodic evals); `NonFiniteUpdateGuard` skips updates with a non-finite gradient.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from sspo_cli.engines.trl.records import native_keys
from sspo_cli.models.logprobs import logp_difference_sums, sampler_mismatch_metrics
from sspo_cli.objectives import METRIC_KEYS, build_objective, compute_advantages
from sspo_cli.run.metrics import merge_rows, merge_values
from sspo_cli.run.schedule import lr_multiplier
from sspo_cli.run.state import TooManySkips

if TYPE_CHECKING:
    from sspo_cli.recipe import Recipe
    from sspo_cli.rollout.prompts import TextFormat
    from sspo_cli.run.records import RunRecords
    from sspo_cli.run.state import TrainState
    from sspo_cli.tasks import Task

# Logged once per micro-batch by `_compute_loss` and merged per update in `log`.
UPDATE_KEYS = (*METRIC_KEYS, "train/entropy", "train/objective_seconds")


class SspoGRPOTrainer(GRPOTrainer):
    def __init__(self, *args: Any, recipe: Recipe, **kwargs: Any):
        self.sspo_recipe = recipe
        self.sspo_objective = build_objective(recipe.objective)
        self._rollout_rewards: torch.Tensor | None = None
        self._mismatch = SamplerMismatch()
        super().__init__(*args, **kwargs)

    # ----------------------------------------------------------------- loss

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        mask = loss_mask(inputs)
        logp, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            torch.cat([prompt_ids, completion_ids], dim=1),
            torch.cat([prompt_mask, completion_mask], dim=1),
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
        )
        learner_logp = inputs.get("old_per_token_logps")  # the trainer's, with the sampling weights
        sampler_logp = inputs.get("sampling_per_token_logps")  # vLLM's
        if learner_logp is None:
            # TRL skips that forward when every micro-batch of the rollout comes before its first update:
            # the current log-probs are then the sampling weights' (and each token is scored once).
            learner_logp = logp.detach()
            if sampler_logp is not None:
                self._mismatch.add(self.accelerator.gather, learner_logp, sampler_logp, mask)
        old_logp = self._behaviour_logp(learner_logp, sampler_logp)
        weight = inputs.get("importance_sampling_ratio")  # TRL's, with trl.vllm_importance_sampling_correction
        started = time.perf_counter()
        out = self.sspo_objective(
            logp if weight is None else weighted_gradient(logp, weight),
            old_logp,
            inputs["advantages"],
            mask.float(),
            ref_logp=inputs.get("ref_per_token_logps"),
        )
        objective_seconds = time.perf_counter() - started

        mode = "train" if self.model.training else "eval"
        # TRL's losses are divided by the accumulation steps here (transformers' own scaling is off).
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = out.loss / normalizer
        if aux_loss is not None:
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
        with torch.no_grad():
            entropy = float((entropies * mask).sum() / mask.sum().clamp(min=1))
        self._record_update_metrics(
            mode, {**out.metrics, "train/entropy": entropy, "train/objective_seconds": objective_seconds}
        )
        return loss

    def _behaviour_logp(self, learner_logp: torch.Tensor, sampler_logp: torch.Tensor | None) -> torch.Tensor:
        """The objective's `old_logp` (`rollout.behaviour_logprobs`).

        `sampler`: vLLM's, and the trainer's where vLLM gave none (a NaN, as TRL receives a token it could
        not score)."""
        if self.sspo_recipe.rollout.behaviour_logprobs == "learner":
            return learner_logp
        if sampler_logp is None:
            raise RuntimeError("rollout.behaviour_logprobs 'sampler' needs vLLM's log-probs (trl.use_vllm)")
        return torch.where(torch.isnan(sampler_logp), learner_logp, sampler_logp)

    def _record_update_metrics(self, mode: str, metrics: dict[str, float]) -> None:
        """Append one micro-batch's metrics, merged over processes (min of *_min, max of *_max, else mean)."""
        keys = list(metrics)
        local = torch.tensor([metrics[k] for k in keys], dtype=torch.float32, device=self.accelerator.device)
        gathered = self.accelerator.gather(local.unsqueeze(0)).view(-1, len(keys)).cpu()
        for column, key in enumerate(keys):
            # Processes run side by side: their durations do not add up.
            self._metrics[mode][key].append(merge_values(key, gathered[:, column].tolist(), summed=()))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL averages its metrics over the micro-batches of an update; ours need min/max/sum where named so."""
        mode = "train" if self.model.training else "eval"
        for key in UPDATE_KEYS:
            if key in self._metrics[mode]:
                logs[key] = merge_values(key, self._metrics[mode].pop(key))
        logs.update(self._mismatch.pop())  # once per rollout: with its first update
        super().log(logs, start_time)

    # ----------------------------------------------------------------- rewards and advantages

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rollout_rewards = rewards_per_func[:, 0]  # all processes, group by group
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["train/accuracy"].append(float((self._rollout_rewards >= 1.0).float().mean()))
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        rollout = self.sspo_recipe.rollout
        advantages = compute_advantages(
            self._rollout_rewards.float().cpu(), rollout.group_size, rollout.advantage_scale
        )
        start = self.accelerator.process_index * len(inputs)
        output["advantages"] = advantages[start : start + len(inputs)].to(output["advantages"].device)
        sampler_logp, learner_logp = output.get("sampling_per_token_logps"), output.get("old_per_token_logps")
        if sampler_logp is None:
            self._mismatch.same_computation()
        elif learner_logp is not None:  # else measured by _compute_loss, without another forward
            self._mismatch.add(self.accelerator.gather, learner_logp, sampler_logp, loss_mask(output))
        return output

    def _generate(self, prompts):
        started = time.perf_counter()
        result = super()._generate(prompts)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["train/sample_seconds"].append(time.perf_counter() - started)
        return result

    # ----------------------------------------------------------------- optimiser

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, lr_multiplier(self.sspo_recipe)
            )
        return self.lr_scheduler

    def get_decay_parameter_names(self, model) -> list[str]:
        return [name for name, _ in model.named_parameters()]

    # ----------------------------------------------------------------- layout facts

    @property
    def weights_are_whole(self) -> bool:
        """Every process holds the full weights (single process, DDP, ZeRO-1/2); not under ZeRO-3 or FSDP."""
        if self.is_fsdp_enabled:
            return False
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return not (self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3)


def loss_mask(batch: dict[str, Any]) -> torch.Tensor:
    """The completion tokens the loss counts: TRL's completion mask, times its tool mask where there is one."""
    mask = batch["completion_mask"]
    return mask if "tool_mask" not in batch else mask * batch["tool_mask"]


def weighted_gradient(logp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`logp`'s values, with the gradient through each token multiplied by `weight` ([B, T], or [B, 1] per sequence).

    TRL multiplies its per-token loss by its vLLM importance weight; our objectives give one loss, so the
    weight goes onto each token's share of the gradient instead. For objectives whose per-token term
    depends on that token alone (grpo, sapo), and for per-sequence weights, this is TRL's gradient; the
    loss value and the diagnostics stay the objective's own."""
    frozen = logp.detach()
    return frozen + (logp - frozen) * weight.to(logp.dtype)


class SamplerMismatch:
    """The spec's `rollout/sampler_logp_diff_mean`/`_max`: mean and max of |logp_sampler - logp_learner|, both with
    the sampling weights, over the rollout's counted completion tokens on every process.

    Tokens vLLM could not score (NaN) are left out, as in TRL's own figure. Without sampler log-probs the
    trained model sampled: one computation, 0 by definition. `pop` hands the figures over once, with the next log."""

    def __init__(self) -> None:
        self._sums: tuple[float, float, float] | None = None  # |difference| summed, tokens, largest; since the last log

    def add(self, gather: Callable[[torch.Tensor], torch.Tensor], learner, sampler, mask: torch.Tensor) -> None:
        """One batch of the rollout on this process (all processes call it together); batches add up."""
        sums = logp_difference_sums(learner, sampler, mask)
        total, tokens, largest = gather(sums[None]).view(-1, 3).T
        before = self._sums or (0.0, 0.0, 0.0)
        self._sums = (
            before[0] + float(total.sum()),
            before[1] + float(tokens.sum()),
            max(before[2], float(largest.max())),
        )

    def same_computation(self) -> None:
        self._sums = (0.0, 0.0, 0.0)

    def pop(self) -> dict[str, float]:
        if self._sums is None:
            return {}
        sums, self._sums = self._sums, None
        return sampler_mismatch_metrics(*sums)


def task_reward_function(task: Task, end_ids: Sequence[int]) -> Callable[..., list[float]]:
    """TRL reward function: the task's reward of each completion against its training example.

    A completion whose tokens hold no end token (`end_ids`: <eos>) was cut off at max_completion_length."""

    def task_reward(
        prompts: list[Any], completions: list[Any], completion_ids: list[list[int]], example_index: list[int], **_: Any
    ) -> list[float]:
        return [
            task.reward(completion_text(text), task.train[index], truncated=not any(t in end_ids for t in ids))
            for text, ids, index in zip(completions, completion_ids, example_index)
        ]

    return task_reward


def completion_text(completion: Any) -> str:
    """TRL hands a completion of a chat prompt over as its assistant message."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def training_dataset(task: Task, tokenizer, text: TextFormat):
    """The train split as TRL reads it: a prompt column, and the row's index for the reward.

    With the chat template on, the prompt is the messages of `TextFormat.messages`: TRL applies the tokenizer's
    chat template to them as `TextFormat.prompt_text` does (generation prompt added, no second <bos>)."""
    from datasets import Dataset

    prompts = [text.messages(e.prompt) if text.chat else e.prompt for e in task.train]
    return Dataset.from_dict({"prompt": prompts, "example_index": list(range(len(task.train)))})


# --------------------------------------------------------------------------- callbacks


@dataclass
class RunContext:
    """What the recorder writes to; `records` is None on every process but the main one."""

    recipe: Recipe
    state: TrainState
    run_dir: Path
    records: RunRecords | None
    evaluate: Callable[[Any], dict[str, float]]  # model -> eval/* metrics


class RunRecorder(TrainerCallback):
    """One native-format row per rollout: history.jsonl, MLflow, the observer, periodic evals."""

    def __init__(self, context: RunContext, updates_per_rollout: int, rollout_size: int, periodic_eval: bool):
        self.context = context
        self.updates_per_rollout = updates_per_rollout
        self.rollout_size = rollout_size
        self.periodic_eval = periodic_eval
        self.pending: list[dict[str, float]] = []
        self.last_logged_update = 0
        self.lr_after_update = math.nan
        self.rollout_started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        self.rollout_started = time.perf_counter()

    def on_step_end(self, args, state, control, lr_scheduler=None, **kwargs):
        if lr_scheduler is not None:
            self.lr_after_update = float(lr_scheduler.get_last_lr()[0])

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not logs or "train_runtime" in logs or state.global_step == self.last_logged_update:
            return
        self.last_logged_update = state.global_step
        self.pending.append(native_keys(logs))
        if state.global_step % self.updates_per_rollout:
            return
        step = state.global_step // self.updates_per_rollout
        metrics = self.rollout_metrics(merge_rows(self.pending))
        self.pending = []
        if state.is_world_process_zero:
            self.record_step(step, metrics, model)
        self.rollout_started = time.perf_counter()

    def rollout_metrics(self, merged: dict[str, float]) -> dict[str, float]:
        elapsed = time.perf_counter() - self.rollout_started
        tokens = merged.get("train/response_length", math.nan) * self.rollout_size
        return {
            **merged,
            "train/lr": self.lr_after_update,
            "train/tokens_per_s": tokens / elapsed,
            "train/step_seconds": elapsed,
            "train/skipped_updates": float(self.context.state.skipped_updates),
        }

    def record_step(self, step: int, metrics: dict[str, float], model) -> None:
        ctx = self.context
        ctx.state.step = step
        ctx.records.record_step(metrics)
        last = step == ctx.recipe.train.steps  # evaluated after training, on the saved final weights
        if self.periodic_eval and not last and step % ctx.recipe.eval.every == 0:
            ctx.records.record_eval(step, ctx.evaluate(model))


class NonFiniteUpdateGuard(TrainerCallback):
    """Skips an optimiser update whose gradient is not finite, as the native engine does.

    Runs on every process; the verdict is shared so all processes skip together. Under DeepSpeed
    the gradients live in DeepSpeed's buffers, not in `param.grad`: there it sees none and lets
    DeepSpeed decide. The learning-rate schedule still advances on a skipped update.
    """

    def __init__(self, state: TrainState, max_consecutive: int, run_dir: Path):
        self.state = state
        self.max_consecutive = max_consecutive
        self.run_dir = run_dir

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        from accelerate.utils import reduce

        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:  # DeepSpeed: its own buffers hold the gradients
            return
        local_bad = (~torch.stack([torch.isfinite(g).all() for g in grads]).all()).float()
        bad = bool(reduce(local_bad, reduction="sum") > 0)
        if not bad:
            self.state.count_applied_update()
            return
        for param in model.parameters():
            param.grad = None  # AdamW leaves parameters without a gradient untouched
        try:
            self.state.count_skipped_update(self.max_consecutive)
        except TooManySkips as stop:
            stop.step, stop.run_dir = (
                self.state.step + 1,
                self.run_dir,
            )  # no last-good checkpoint: TRL runs do not resume
            raise
