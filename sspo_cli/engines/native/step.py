"""One RL step of the algorithm, top to bottom.

    sample G completions per prompt (with the sampling weights: `run/sampler_policy.py`) and their behaviour
    log-probs -> rewards -> group advantages -> the reference's log-probs
    -> `updates_per_rollout` optimiser updates on mini-batches through the objective
       (each mini-batch optionally in micro-batches whose gradients add up to its own)

Everything a step draws at random depends on (seed, step) alone, so a resumed run repeats
exactly what an uninterrupted one does. `trainer.py` runs these steps; the run layer keeps the records.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sspo_cli.engines.native.lag import LagSchedule
from sspo_cli.engines.native.tuning import (
    attention_kernel,
    autocast,
    bf16_updates,
    bucket_count,
    length_bucket_parts,
    micro_batch_price,
    prepared_model,
    sampler_precision,
    update_attention_for,
)
from sspo_cli.models.logprobs import completion_logprobs, logp_difference_sums, sampler_mismatch_metrics
from sspo_cli.recipe import PerformanceConfig, Recipe, RolloutConfig, stable_hash
from sspo_cli.rollout.collect import generate, grade_all, loss_mask, truncated_fraction
from sspo_cli.rollout.prompts import text_format
from sspo_cli.run.metrics import merge_rows

if TYPE_CHECKING:
    import torch

    from sspo_cli.engines.native.learner import Learner
    from sspo_cli.rewards import Grade
    from sspo_cli.rollout.collect import Rollout
    from sspo_cli.run.state import TrainState
    from sspo_cli.tasks import Example, Task


def rl_step(recipe: Recipe, learner: Learner, task: Task, objective, state: TrainState) -> dict[str, float]:
    """One rollout and its `updates_per_rollout` optimiser updates."""
    import torch

    cfg, perf, policy = recipe.rollout, recipe.performance, learner.policy
    started = time.perf_counter()
    torch.manual_seed(step_seed(recipe.seed, state.step))  # sampling depends on (seed, step) alone: resumable
    model = prepared_model(policy.model, perf)
    schedule = LagSchedule.of(cfg)

    # 1. Rollout: G completions for each of P prompts, grouped prompt by prompt, by the sampling weights
    #    (the current policy's, or older ones under a policy lag) and in the sampler's dtype.
    prompts = prompts_for_step(task.train, recipe.seed, state.step, cfg.prompts_per_step)
    examples = [e for e in prompts for _ in range(cfg.group_size)]
    policy.model.eval()
    with learner.lagged.sampling(policy.model, schedule, state.step):
        with sampler_precision(next(model.parameters()).device, cfg.sampler_dtype):
            rollout = generate(
                model,
                policy.tokenizer,
                [e.prompt for e in examples],
                cfg.max_new_tokens,
                cfg.temperature,
                perf,
                with_logprobs=perf.sampling_logprobs,
                text=text_format(recipe, policy.tokenizer),
            )
        sampled = time.perf_counter()
        shared_prompts = rollout.prompt_index if perf.share_prompt_prefix else None
        # One attention kernel for every learner forward of this step (behaviour, reference, updates).
        attention = learner_attention(recipe, model, rollout.input_ids.shape, rollout.input_ids.device)
        # 1b. Behaviour log-probs at the sampling temperature, with the sampling weights.
        behaviour = behaviour_logprobs(model, rollout, cfg, perf, shared_prompts, attention)

    # 2. Rewards and group-relative advantages.
    grades = grade_all(task, examples, rollout.completions, rollout.truncated)
    rewards, advantages = group_advantages(grades, cfg)
    device = rollout.input_ids.device
    advantages, mask = advantages.to(device), loss_mask(rollout, cfg.mask_truncated_completions)

    # 3. Decoupled mode (a sampler correction or the M2PO mask): the sampler's log-probs stay the behaviour's,
    #    and the objective's ratio is taken against the proximal policy, the learner's current weights,
    #    recomputed once for the whole rollout. Then the reference's log-probs, for a KL penalty.
    old_logp, token_entropy, behav_logp, staleness = behaviour.old_logp, behaviour.entropy, None, None
    if is_decoupled(objective.config):
        behav_logp = behaviour.sampler_logp if behaviour.sampler_logp is not None else behaviour.old_logp
        old_logp = proximal_logprobs(model, rollout, cfg.temperature, shared_prompts, perf, attention)
        staleness = torch.full((rollout.input_ids.shape[0],), float(schedule.lag(state.step)), device=device)
    ref_logp = None
    if policy.has_reference:
        with torch.inference_mode(), policy.reference_model() as reference, attention_kernel(reference, attention):
            ref_logp, _ = completion_logprobs(
                reference,
                rollout.input_ids,
                rollout.attention_mask,
                rollout.completion_len,
                cfg.temperature,
                shared_prompts,
                perf.logprob_chunk_mb,
            )

    # 4. Optimiser updates on mini-batches; the first is on-policy, later ones are not.
    data = UpdateData(
        rollout.input_ids,
        rollout.attention_mask,
        rollout.completion_len,
        old_logp,
        advantages,
        mask,
        ref_logp,
        behav_logp,
        staleness,
    )
    policy.model.train()
    update_metrics: list[dict[str, float]] = []
    objective_seconds = 0.0
    for rows in minibatches(rollout.input_ids.shape[0], cfg, recipe.seed, state.step):
        update = accumulate_gradients(model, objective, data, rows.to(device), shared_prompts, recipe, attention)
        objective_seconds += update.objective_seconds
        update_metrics.append(
            {
                **update.metrics,
                **apply_update(update.loss, policy.model, learner.optimizer, learner.scheduler, recipe, state),
            }
        )
    policy.model.eval()

    elapsed = time.perf_counter() - started
    tokens = float(rollout.completion_mask.sum())
    return {
        **sampled_metrics(rollout, grades, rewards, token_entropy),
        "rollout/policy_lag": float(schedule.lag(state.step)),
        **behaviour.mismatch(rollout.completion_mask),
        "train/lr": learner.scheduler.get_last_lr()[0],
        "train/tokens_per_s": tokens / elapsed,
        "train/step_seconds": elapsed,
        "train/sample_seconds": sampled - started,
        "train/objective_seconds": objective_seconds,
        "train/skipped_updates": float(state.skipped_updates),
        **merge_rows(update_metrics),
    }


@dataclass(frozen=True)
class Behaviour:
    """The sampling policy's log-probs of the sampled tokens as the objective sees them, and its entropy. [N, Tc]"""

    old_logp: torch.Tensor
    entropy: torch.Tensor
    sampler_logp: torch.Tensor | None = None
    """The sampler's own, where it is another computation than the learner's (`rollout.sampler_dtype`)."""
    learner_logp: torch.Tensor | None = None

    def mismatch(self, tokens: torch.Tensor) -> dict[str, float]:
        """The spec's `rollout/sampler_logp_diff_mean`/`_max` over the completion tokens `tokens` ([N, Tc] 0/1)."""
        if self.sampler_logp is None or self.learner_logp is None:  # one computation: 0 by definition
            return sampler_mismatch_metrics(0.0, 0.0, 0.0)
        return sampler_mismatch_metrics(*logp_difference_sums(self.learner_logp, self.sampler_logp, tokens).tolist())


def behaviour_logprobs(
    model,
    rollout: Rollout,
    cfg: RolloutConfig,
    perf: PerformanceConfig,
    shared_prompts: torch.Tensor | None,
    attention: str = "same",
) -> Behaviour:
    """The behaviour log-probs, taken with the weights `model` holds (the sampling weights).

    With `sampler_dtype: same` and float32 updates the sampler is the learner's computation: its log-probs are
    the sampling pass's where it recorded them (the same numbers up to float32 rounding), else one more no-grad
    forward. Otherwise (another sampler dtype, or bf16 updates: `performance.autocast_bf16`, whose rounding
    alone moves a 135M model's on-policy sequence ratios by about 2%) both are taken, the sampler's in its
    dtype and the learner's as the updates run it, and `rollout.behaviour_logprobs` picks the objective's.
    The learner's forwards use the updates' attention kernel `attention`; the sampler's, the loaded one.
    """
    device = rollout.input_ids.device
    if cfg.sampler_dtype == "same" and not bf16_updates(device, perf.autocast_bf16):
        if rollout.logprobs is not None and rollout.entropy is not None:
            return Behaviour(rollout.logprobs, rollout.entropy)
        return Behaviour(*forward_logprobs(model, rollout, cfg.temperature, shared_prompts, perf, None, attention))
    learner_logp, entropy = forward_logprobs(
        model, rollout, cfg.temperature, shared_prompts, perf, autocast(device, perf.autocast_bf16), attention
    )
    sampler_logp = rollout.logprobs
    if sampler_logp is None:
        precision = sampler_precision(device, cfg.sampler_dtype)
        sampler_logp, _ = forward_logprobs(model, rollout, cfg.temperature, shared_prompts, perf, precision)
    old_logp = learner_logp if cfg.behaviour_logprobs == "learner" else sampler_logp
    return Behaviour(old_logp, entropy, sampler_logp, learner_logp)


def is_decoupled(config) -> bool:
    """Whether the objective (its `config`) asks for the sampler's log-probs beside the proximal ones: a sampler
    correction or the M2PO mask (spec: "Sampler correction", decoupled PPO)."""
    return config.correction != "none" or config.m2_threshold is not None


def group_advantages(grades: list[Grade], cfg: RolloutConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The rollout's rewards [N] and their group-relative advantages [N] (rows laid out group by group)."""
    import torch

    from sspo_cli.objectives import compute_advantages  # its lazy attribute imports torch

    rewards = torch.tensor([g.reward for g in grades], dtype=torch.float32)
    return rewards, compute_advantages(rewards, cfg.group_size, cfg.advantage_scale)


def sampled_metrics(
    rollout: Rollout, grades: list[Grade], rewards: torch.Tensor, token_entropy: torch.Tensor
) -> dict[str, float]:
    """What a step sampled: reward, accuracy, length, cut-off share, and the mean entropy over every sampled token
    (masked-out truncated completions included)."""
    sampled = rollout.completion_mask
    return {
        "train/reward": float(rewards.mean()),
        "train/accuracy": sum(g.correct for g in grades) / max(len(grades), 1),
        "train/response_length": float(sampled.sum()) / sampled.shape[0],
        "rollout/truncated_frac": truncated_fraction(rollout),
        "train/entropy": float((token_entropy * sampled).sum() / sampled.sum().clamp(min=1)),
    }


def grad_clip_norm(recipe: Recipe) -> float:
    """The largest gradient norm an update keeps (`train.grad_clip`; none: inf)."""
    return recipe.train.grad_clip if recipe.train.grad_clip is not None else math.inf


def proximal_logprobs(
    model,
    rollout: Rollout,
    temperature: float,
    shared_prompts: torch.Tensor | None,
    perf: PerformanceConfig,
    attention: str,
) -> torch.Tensor:
    """The proximal policy's log-probs: the learner's current weights, computed exactly as the updates run them
    (precision, attention kernel, temperature), once before the rollout's first update."""
    device = rollout.input_ids.device
    logp, _ = forward_logprobs(
        model, rollout, temperature, shared_prompts, perf, autocast(device, perf.autocast_bf16), attention
    )
    return logp


def forward_logprobs(
    model,
    rollout: Rollout,
    temperature: float,
    shared_prompts: torch.Tensor | None,
    perf: PerformanceConfig,
    precision,
    attention: str = "same",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One no-grad forward: the sampled tokens' log-probs and the per-token entropy. [N, Tc] each"""
    import torch

    with torch.inference_mode(), precision or contextlib.nullcontext(), attention_kernel(model, attention):
        logp, entropy = completion_logprobs(
            model,
            rollout.input_ids,
            rollout.attention_mask,
            rollout.completion_len,
            temperature,
            shared_prompts,
            perf.logprob_chunk_mb,
            with_entropy=True,
        )
    assert entropy is not None
    return logp, entropy


@dataclass(frozen=True)
class UpdateData:
    """What the optimiser updates read of a rollout, one row per completion."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_len: int
    old_logp: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    ref_logp: torch.Tensor | None
    behav_logp: torch.Tensor | None = None  # decoupled mode: the sampler's; old_logp is then the proximal policy's
    staleness: torch.Tensor | None = None  # decoupled mode: [rows] learner steps between sampler and proximal

    def objective_inputs(self, rows: torch.Tensor, width: int | None = None) -> dict[str, torch.Tensor | None]:
        """The objective's loss arguments after `logp` for these rows (their first `width` completion columns)."""
        cols = slice(None, width)
        return {
            "old_logp": self.old_logp[rows, cols],
            "advantages": self.advantages[rows],
            "mask": self.mask[rows, cols],
            "ref_logp": None if self.ref_logp is None else self.ref_logp[rows, cols],
            "behav_logp": None if self.behav_logp is None else self.behav_logp[rows, cols],
        }

    def metric_inputs(self, rows: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """The objective's diagnostics arguments after `logp`: the loss's, and the staleness of each row."""
        return self.objective_inputs(rows) | {"staleness": None if self.staleness is None else self.staleness[rows]}

    def width_of(self, rows: torch.Tensor) -> int:
        """Completion columns up to the last one these rows count in the loss (at least 1)."""
        counted = (self.mask[rows] != 0).any(0).nonzero()
        return int(counted[-1]) + 1 if counted.numel() else 1


@dataclass(frozen=True)
class AccumulatedUpdate:
    loss: float
    """The mini-batch's loss (non-finite: the update must be skipped)."""
    metrics: dict[str, float]
    """The objective's diagnostics over the whole mini-batch."""
    objective_seconds: float


def accumulate_gradients(
    model,
    objective,
    data: UpdateData,
    rows: torch.Tensor,
    shared_prompts: torch.Tensor | None,
    recipe: Recipe,
    attention: str | None = None,
) -> AccumulatedUpdate:
    """Zero the gradients, then forward and backward the mini-batch `rows`, micro-batch by micro-batch.

    Each micro-batch's loss is scaled by its share of the objective's normaliser over the whole
    mini-batch (`Objective.normaliser`: non-empty completions, or tokens for a token mean), so the
    scaled losses and their gradients add up to the un-split mini-batch's. A non-finite part is not
    backpropagated; the loss returned is then non-finite. The diagnostics are taken once, over the
    whole mini-batch's detached log-probs: the same numbers as without splitting.

    With `trim_padding` each micro-batch runs only up to its own longest counted completion (the
    columns after it are padding in all its rows: the loss gives them weight 0), and with
    `length_buckets` an un-split mini-batch is cut into micro-batches of similar completion lengths.
    `attention`: the step's attention kernel (`learner_attention`; None: decided here).
    """
    import torch

    perf = recipe.performance
    device = data.input_ids.device
    if perf.gradient_checkpointing:  # a layer replayed in backward cannot reuse the shared prompt's KV cache
        shared_prompts = None
    total = objective.normaliser(data.mask[rows]).clamp(min=1)
    parts = micro_batches(rows, perf.micro_batch_size, shared_prompts)
    if objective.config.m2_threshold is not None:
        parts = [rows]  # M2PO's mask is a rule over the whole mini-batch: a split would keep other tokens
    elif len(parts) == 1:
        count = bucket_count(perf, device)
        price = micro_batch_price(model) if count is None else 0.0
        parts = length_bucket_parts(rows, data, shared_prompts, count, price)
    prompt_len = data.input_ids.shape[1] - data.completion_len
    if attention is None:
        attention = learner_attention(recipe, model, data.input_ids.shape, device)
    model.zero_grad(set_to_none=True)
    loss, seconds, logps = 0.0, 0.0, []
    for part in parts:
        width = data.width_of(part) if perf.trim_padding else data.completion_len
        # the backward pass too: gradient checkpointing replays the layers there
        with attention_kernel(model, attention):
            with autocast(device, perf.autocast_bf16):
                logp, _ = completion_logprobs(
                    model,
                    data.input_ids[part, : prompt_len + width],
                    data.attention_mask[part, : prompt_len + width],
                    width,
                    recipe.rollout.temperature,
                    None if shared_prompts is None else shared_prompts[part],
                    perf.logprob_chunk_mb,
                )
            t0 = time.perf_counter()
            inputs = data.objective_inputs(part, width)
            part_loss = objective.loss(logp, **inputs) * (objective.normaliser(inputs["mask"]) / total)
            seconds += time.perf_counter() - t0
            if torch.isfinite(part_loss):
                part_loss.backward()
        loss += float(part_loss.detach())
        # the trimmed columns are padding (weight 0) for the diagnostics too
        logps.append(torch.nn.functional.pad(logp.detach(), (0, data.completion_len - width)))
    t0 = time.perf_counter()
    metrics = objective.metrics(torch.cat(logps), **data.metric_inputs(torch.cat(parts)))
    return AccumulatedUpdate(loss, metrics, seconds + time.perf_counter() - t0)


def learner_attention(recipe: Recipe, model, shape: tuple[int, int], device: torch.device) -> str:
    """The attention kernel of an RL step's learner forwards: the behaviour log-probs where a forward takes them,
    the reference's and every update's. One choice per step, so that the first update is exactly on-policy and
    the KL starts at 0; made for the largest micro-batch of a rollout of `shape` (rows, tokens) at full length."""
    rows, length = shape
    largest = min(minibatch_rows(rows, recipe.rollout), recipe.performance.micro_batch_size or rows)
    return update_attention_for(recipe.performance, device, model, largest, length)


def micro_batches(rows: torch.Tensor, size: int | None, prompt_index: torch.Tensor | None) -> list[torch.Tensor]:
    """`rows` in slices of at most `size` (None: one slice), the last one possibly smaller.

    Rows of one prompt are put next to each other first, so that a slice holds whole groups where
    it can and `share_prompt_prefix` still runs each of its prompts once.
    """
    import torch

    if size is None or size >= rows.shape[0]:
        return [rows]
    if prompt_index is not None:
        rows = rows[torch.argsort(prompt_index[rows], stable=True)]
    return list(rows.split(size))


def apply_update(loss: float, model, optimizer, scheduler, recipe: Recipe, state: TrainState) -> dict[str, float]:
    """Clip and step on the accumulated gradients; a non-finite loss or gradient leaves weights and optimiser untouched."""
    import torch

    if math.isfinite(loss):
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm(recipe)))
    else:
        grad_norm = math.nan
    if not math.isfinite(grad_norm):
        optimizer.zero_grad(set_to_none=True)
        state.count_skipped_update(recipe.train.max_skipped)
        return {"train/loss": math.nan, "train/grad_norm": math.nan}
    state.count_applied_update()
    optimizer.step()
    scheduler.step()
    return {"train/loss": loss, "train/grad_norm": grad_norm}


# --------------------------------------------------------------------------- small pure helpers


def step_seed(seed: int, step: int) -> int:
    return int(stable_hash([seed, step]), 16) % (2**63)


def prompts_for_step(train: list[Example], seed: int, step: int, count: int) -> list[Example]:
    """Epoch-wise shuffled order, a pure function of (seed, step): no data-loader state to save."""
    import torch

    picked: list[Example] = []
    position = (step - 1) * count
    while len(picked) < count:
        epoch, offset = divmod(position, len(train))
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(step_seed(seed, -1 - epoch)))
        take = min(count - len(picked), len(train) - offset)
        picked += [train[i] for i in order[offset : offset + take].tolist()]
        position += take
    return picked


def minibatch_rows(n: int, cfg: RolloutConfig) -> int:
    """Completions per optimiser update, of a rollout of `n`."""
    return cfg.minibatch_size or math.ceil(n / cfg.updates_per_rollout)


def minibatches(n: int, cfg: RolloutConfig, seed: int, step: int) -> Iterator[torch.Tensor]:
    """`updates_per_rollout` row sets of `minibatch_size`, cycling through reshuffled epochs."""
    import torch

    size = minibatch_rows(n, cfg)
    generator = torch.Generator().manual_seed(step_seed(seed, step) ^ 0x5EED)
    order = torch.randperm(n, generator=generator)
    offset = 0
    for _ in range(cfg.updates_per_rollout):
        if offset + size > n:
            order, offset = torch.randperm(n, generator=generator), 0
        yield order[offset : offset + size]
        offset += size
