"""A population's optimiser step: each member's gradients clipped by that member's own norm, then one AdamW step over
the stacked weights (`models/population.py`). AdamW is elementwise with scalar hyper-parameters, so a step over the
stacked tensors is each member's own step; only the clipping reads a whole member, and it is taken member by member
here, as `torch.nn.utils.clip_grad_norm_` takes it for one model."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sspo_cli.engines.native.lag import LaggedWeights, LagSchedule
from sspo_cli.engines.native.loop import adamw_with_schedule
from sspo_cli.engines.native.step import (
    Behaviour,
    UpdateData,
    grad_clip_norm,
    group_advantages,
    is_decoupled,
    minibatch_rows,
    minibatches,
    prompts_for_step,
    sampled_metrics,
    step_seed,
)
from sspo_cli.engines.native.tuning import autocast, bf16_updates, update_attention_for
from sspo_cli.models.kv_cache import position_ids_for
from sspo_cli.models.logprobs import entropy_of, logprobs_from_logits
from sspo_cli.models.population import Population, PopulationCache
from sspo_cli.rollout.collect import grade_all, loss_mask
from sspo_cli.rollout.population import generate_population
from sspo_cli.rollout.prompts import text_format
from sspo_cli.run.metrics import merge_rows

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sspo_cli.recipe import Recipe
    from sspo_cli.rollout.collect import Rollout
    from sspo_cli.tasks import Task

# torch.nn.utils.clip_grad_norm_'s guard against dividing by a zero norm
CLIP_EPS = 1e-6


def clip_member_grad_norms_(weights: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale each member's gradients (row k of every stacked weight's `.grad`) so that their joint 2-norm is at most
    `max_norm` (inf: leave them); returns each member's norm before clipping, [K]."""
    import torch

    grads = [w.grad for w in weights if w.grad is not None]
    per_weight = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads], dim=1)
    norms = torch.linalg.vector_norm(per_weight, 2, dim=1)
    if math.isinf(max_norm):
        return norms
    scale = (max_norm / (norms + CLIP_EPS)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
    return norms


class NonFiniteMemberUpdate(RuntimeError):
    """A member's loss or gradient was not finite: its standalone run would skip the update, a population cannot."""

    def __init__(self, seeds: list[int], step: int) -> None:
        super().__init__(f"step {step}: the update of seed(s) {seeds} was not finite; train them as standalone runs")
        self.seeds, self.step = seeds, step


def population_unsupported(recipe: Recipe) -> str | None:
    """Why a population cannot train `recipe` member for member as `rl_step` would (None: it can)."""
    rollout, perf = recipe.rollout, recipe.performance
    checks = {
        "another sampler dtype (rollout.sampler_dtype)": rollout.sampler_dtype == "same",
        "a KL reference (objective.beta)": not recipe.objective.beta,
        "LoRA (model.lora)": recipe.model.lora is None,
        "hf_generate sampling (performance.sampler)": perf.sampler == "kv_cache",
    }
    failed = [name for name, ok in checks.items() if not ok]
    return ", ".join(failed) if failed else None


@dataclass
class PopulationLearner:
    """A population, one AdamW over its stacked weights and one schedule (every member's learning rate is the same)."""

    population: Population
    like: PreTrainedModel  # a model of the members' architecture: its config and end tokens
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    lagged: LaggedWeights = field(default_factory=LaggedWeights)  # stacked copies, under a policy lag

    def member_lagged(self, member: int) -> LaggedWeights:
        """Member `member`'s older weights, as its standalone run keeps them."""
        copies = self.lagged.copies
        return LaggedWeights({kept: {n: w[member] for n, w in weights.items()} for kept, weights in copies.items()})

    @classmethod
    def of(cls, recipe: Recipe, models: list[PreTrainedModel], tokenizer: PreTrainedTokenizerBase) -> PopulationLearner:
        """`models` stacked, with the optimiser and schedule a standalone run of `recipe` builds for one of them."""
        population = Population.stack(models)
        return cls(population, models[0], tokenizer, *adamw_with_schedule(recipe, population.parameters()))


def population_rl_step(
    recipe: Recipe, learner: PopulationLearner, task: Task, objectives: list, seeds: list[int], step: int
) -> list[dict[str, float]]:
    """RL step `step` of every member (member k: the recipe with seed `seeds[k]` and objective `objectives[k]`, which
    may differ from the others' in its numbers), as `rl_step` takes it for each member alone: its prompts, samples
    and mini-batches from its own seed; one batched sampling pass, one batched forward and backward per update, one
    optimiser step. Returns each member's metrics."""
    import torch

    cfg = recipe.rollout
    started = time.perf_counter()
    schedule = LagSchedule.of(cfg)
    prompts = [prompts_for_step(task.train, seed, step, cfg.prompts_per_step) for seed in seeds]
    examples = [[e for e in member for _ in range(cfg.group_size)] for member in prompts]
    generators = [torch.Generator().manual_seed(step_seed(seed, step)) for seed in seeds]
    text = text_format(recipe, learner.tokenizer)
    # 1. Every member's rollout and behaviour log-probs, by its sampling weights (older ones under a policy lag).
    with learner.lagged.sampling(learner.population, schedule, step):
        rollouts = generate_population(
            learner.population,
            learner.like,
            learner.tokenizer,
            [[e.prompt for e in member] for member in examples],
            cfg.max_new_tokens,
            cfg.temperature,
            generators,
            text,
        )
        sampled = time.perf_counter()
        eager = eager_attention(recipe, learner, rollouts)
        behaviours = population_behaviour(learner.population, rollouts, recipe, eager)
    # 2. Rewards and advantages; 3. in decoupled mode the proximal policy's log-probs, the current weights'.
    grades = [grade_all(task, member, r.completions, r.truncated) for member, r in zip(examples, rollouts)]
    decoupled = is_decoupled(objectives[0].config)  # the same for every member (`Recipe.population_key`)
    proximal = proximal_logprobs(learner.population, rollouts, recipe, eager) if decoupled else None
    rewards, data = [], []
    for k, (rollout, member_grades, behaviour) in enumerate(zip(rollouts, grades, behaviours)):
        member_rewards, advantages = group_advantages(member_grades, cfg)
        mask = loss_mask(rollout, cfg.mask_truncated_completions)
        rewards.append(member_rewards)
        old_logp, behav_logp, staleness = behaviour.old_logp, None, None
        if proximal is not None:
            behav_logp = behaviour.sampler_logp if behaviour.sampler_logp is not None else behaviour.old_logp
            old_logp = proximal[k]
            staleness = torch.full((rollout.input_ids.shape[0],), float(schedule.lag(step)))
        data.append(
            UpdateData(
                rollout.input_ids,
                rollout.attention_mask,
                rollout.completion_len,
                old_logp,
                advantages,
                mask,
                None,
                behav_logp,
                staleness,
            )
        )
    batches = [minibatches(r.input_ids.shape[0], cfg, seed, step) for r, seed in zip(rollouts, seeds)]
    precision = autocast(rollouts[0].input_ids.device, recipe.performance.autocast_bf16)
    updates: list[list[dict[str, float]]] = [[] for _ in seeds]
    objective_seconds = 0.0
    for _ in range(cfg.updates_per_rollout):
        rows = [next(member_batches) for member_batches in batches]
        with precision:
            batch = MemberRows(data, rows, shared_prompts(rollouts, rows, recipe))
            logps, _ = population_logprobs(learner.population, batch, cfg.temperature, eager_attention=eager)
        t0 = time.perf_counter()
        losses = [o.loss(logp, **d.objective_inputs(r)) for o, logp, d, r in zip(objectives, logps, data, rows)]
        objective_seconds += time.perf_counter() - t0
        learner.optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        norms = clip_member_grad_norms_(learner.population.parameters(), grad_clip_norm(recipe))
        unfinished = [seeds[k] for k in range(len(seeds)) if not math.isfinite(float(norms[k]))]
        if unfinished:  # a standalone run skips such an update; one AdamW over stacked weights cannot skip a member
            raise NonFiniteMemberUpdate(unfinished, step)
        learner.optimizer.step()
        learner.scheduler.step()
        t0 = time.perf_counter()
        for k, (objective, logp, d, r) in enumerate(zip(objectives, logps, data, rows)):
            diagnostics = objective.metrics(logp.detach(), **d.metric_inputs(r))
            updates[k].append(
                {**diagnostics, "train/loss": float(losses[k].detach()), "train/grad_norm": float(norms[k])}
            )
        objective_seconds += time.perf_counter() - t0
    lr = learner.scheduler.get_last_lr()[0]
    elapsed = time.perf_counter() - started
    shared = {  # the population's step: its seconds are every member's
        "rollout/policy_lag": float(schedule.lag(step)),
        "train/lr": lr,
        "train/step_seconds": elapsed,
        "train/sample_seconds": sampled - started,
        "train/objective_seconds": objective_seconds,
        "train/skipped_updates": 0.0,
        "train/population_size": float(len(seeds)),
    }
    return [
        {
            **sampled_metrics(r, g, member_rewards, b.entropy),
            **b.mismatch(r.completion_mask),
            **shared,
            "train/tokens_per_s": float(r.completion_mask.sum()) / elapsed,
            **merge_rows(member_updates),
        }
        for r, g, member_rewards, b, member_updates in zip(rollouts, grades, rewards, behaviours, updates)
    ]


def shared_prompts(rollouts: list[Rollout], rows: list[torch.Tensor], recipe: Recipe) -> list[torch.Tensor] | None:
    """Each member's prompt of `rows`, where the recipe runs each distinct prompt once (`share_prompt_prefix`)."""
    if not recipe.performance.share_prompt_prefix or any(r.prompt_index is None for r in rollouts):
        return None
    return [r.prompt_index[member_rows] for r, member_rows in zip(rollouts, rows)]


def eager_attention(recipe: Recipe, learner: PopulationLearner, rollouts: list[Rollout]) -> bool:
    """Whether the step's learner forwards take eager attention: `performance.update_attention` resolved as a
    standalone step resolves it, for the largest update of the whole population (every member's rows)."""
    rows, length = rollouts[0].input_ids.shape
    update_rows = len(rollouts) * minibatch_rows(rows, recipe.rollout)
    device = rollouts[0].input_ids.device
    return update_attention_for(recipe.performance, device, learner.like, update_rows, length) == "eager"


def proximal_logprobs(
    population: Population, rollouts: list[Rollout], recipe: Recipe, eager: bool
) -> list[torch.Tensor]:
    """Each member's proximal log-probs: its current weights, computed as the updates run them (precision, attention
    kernel, temperature), once before the rollout's first update (`step.proximal_logprobs` for one model)."""
    logps, _ = every_row_logprobs(population, rollouts, recipe, eager)
    return logps


def population_behaviour(
    population: Population, rollouts: list[Rollout], recipe: Recipe, eager: bool = False
) -> list[Behaviour]:
    """Each member's behaviour log-probs, as `step.behaviour_logprobs` takes them for one model: the sampling pass's
    with float32 updates; under bf16 updates also the learner's own, from one no-grad bf16 forward of the population
    over every row, and `rollout.behaviour_logprobs` picks which the objective reads."""
    if not bf16_updates(rollouts[0].input_ids.device, recipe.performance.autocast_bf16):
        return [Behaviour(r.logprobs, r.entropy) for r in rollouts]
    learner_logps, entropies = every_row_logprobs(population, rollouts, recipe, eager, with_entropy=True)
    use_learner = recipe.rollout.behaviour_logprobs == "learner"
    return [
        Behaviour(learner if use_learner else r.logprobs, entropy, r.logprobs, learner)
        for r, learner, entropy in zip(rollouts, learner_logps, entropies)
    ]


def every_row_logprobs(
    population: Population, rollouts: list[Rollout], recipe: Recipe, eager: bool, with_entropy: bool = False
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """One no-grad forward of the population over every row of each member's rollout, in the updates' precision:
    each member's log-probs of its completion tokens (and, asked, the entropies)."""
    import torch

    device = rollouts[0].input_ids.device
    every_row = [torch.arange(r.input_ids.shape[0], device=device) for r in rollouts]
    batch = MemberRows(rollouts, every_row, shared_prompts(rollouts, every_row, recipe))
    with torch.inference_mode(), autocast(device, recipe.performance.autocast_bf16):
        return population_logprobs(
            population, batch, recipe.rollout.temperature, with_entropy=with_entropy, eager_attention=eager
        )


class Sequences(Protocol):
    """Rows of prompts followed by completions: a `Rollout` or an `UpdateData`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_len: int


@dataclass(frozen=True)
class MemberRows:
    """What one forward of a population reads: member k's rows `rows[k]` of its sequences `data[k]`, and to run each
    distinct prompt once, each of those rows' prompt (`prompt_index[k]`: rows with equal ones share their prompt)."""

    data: Sequence[Sequences]
    rows: list[torch.Tensor]
    prompt_index: list[torch.Tensor] | None = None


def population_logprobs(
    population: Population,
    batch: MemberRows,
    temperature: float,
    with_entropy: bool = False,
    eager_attention: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """Each member's log softmax(logits / T) of its rows' completion tokens ([rows, Tc] of that member), from one
    forward of the population, and with `with_entropy` the entropy of each of those positions' distributions; every
    member's sequences padded on the right to the longest (masked, never read)."""
    import torch

    data, rows = batch.data, batch.rows
    starts = {d.input_ids.shape[1] - d.completion_len for d in data}
    assert len(starts) == 1, "a population's prompts share one width"
    (start,) = starts
    width = max(d.input_ids.shape[1] for d in data)
    ids = torch.stack([pad_right(d.input_ids[r], width, 0) for d, r in zip(data, rows)])
    mask = torch.stack([pad_right(d.attention_mask[r], width, 0) for d, r in zip(data, rows)])
    prompt_index = None if batch.prompt_index is None else torch.stack(batch.prompt_index)
    logits = completion_logits(population, ids, mask, start, prompt_index, eager_attention)
    logps, entropies = [], []
    for k, d in enumerate(data):
        predicted = logits[k, :, : d.completion_len]
        logps.append(logprobs_from_logits(predicted, ids[k, :, start : start + d.completion_len], temperature))
        if with_entropy:
            entropies.append(entropy_of(predicted, temperature))
    return logps, entropies if with_entropy else None


def completion_logits(
    population: Population,
    ids: torch.Tensor,
    mask: torch.Tensor,
    prompt_len: int,
    prompt_index: torch.Tensor | None,
    eager_attention: bool,
) -> torch.Tensor:
    """The logits that predict columns `prompt_len`.. of every row, [K, rows, width - prompt_len, vocab].

    With `prompt_index` ([K, rows]) each member's distinct prompts run once, as `logprobs.shared_prefix_run` runs them
    for one model: the prompt but its last token fills a KV cache that is copied to the rows of that prompt, then
    [last prompt token, completion[:-1]] runs on every row (the same function with fewer FLOPs; gradients flow
    through the shared copies)."""
    import torch

    width = ids.shape[-1]
    positions = position_ids_for(mask.view(-1, width)).view_as(mask)
    if prompt_index is None or prompt_len < 2:
        return population.forward(ids, mask, positions, eager_attention=eager_attention)[:, :, prompt_len - 1 : -1]
    prefix = prompt_len - 1
    representatives, row_to_distinct = distinct_prompt_rows(prompt_index)
    members = torch.arange(ids.shape[0], device=ids.device)[:, None]
    cache = PopulationCache()
    shared = (members, representatives, slice(None, prefix))
    population.forward(ids[shared], mask[shared], positions[shared], cache, eager_attention)
    cache.select_rows(row_to_distinct)
    tail = (slice(None), slice(None), slice(prefix, -1))
    return population.forward(ids[tail], mask[:, :, :-1], positions[tail], cache, eager_attention)


def distinct_prompt_rows(prompt_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each member ([K, rows] prompt ids): a row standing for each of its distinct prompts, [K, D] (members with
    fewer repeat their first), and the distinct prompt of every row, [K, rows]."""
    import torch

    representatives, inverses = [], []
    for member in prompt_index:
        distinct, inverse = torch.unique(member, return_inverse=True)
        rows = torch.arange(member.shape[0], device=member.device)
        representatives.append(torch.empty_like(distinct).scatter_(0, inverse, rows))
        inverses.append(inverse)
    most = max(r.shape[0] for r in representatives)
    padded = [torch.cat([r, r[:1].expand(most - r.shape[0])]) for r in representatives]
    return torch.stack(padded), torch.stack(inverses)


def pad_right(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    import torch

    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


def member_optimizer_state(optimizer: torch.optim.Optimizer, population: Population, member: int, model) -> dict:
    """Member `member`'s part of the population's AdamW state, as the state dict of an AdamW over `model`'s trainable
    parameters (the optimiser a standalone run builds), so a member's checkpoint is an ordinary one: a run resumed
    from it alone goes on exactly as the population would have taken it."""
    stacked_index = {id(weight): name for name, weight in population.weights.items()}
    by_name = {
        stacked_index[id(p)]: optimizer.state.get(p, {}) for group in optimizer.param_groups for p in group["params"]
    }
    names = {id(p): name for name, p in model.named_parameters()}
    own = [p for p in model.parameters() if p.requires_grad]
    state = {}
    for index, parameter in enumerate(own):
        stacked = by_name[names[id(parameter)]]
        if stacked:
            state[index] = {
                key: value.clone() if key == "step" else value[member].clone() for key, value in stacked.items()
            }
    (group,) = optimizer.param_groups
    return {
        "state": state,
        "param_groups": [{**{k: v for k, v in group.items() if k != "params"}, "params": list(range(len(own)))}],
    }
