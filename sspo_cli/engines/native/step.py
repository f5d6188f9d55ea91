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
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sspo_cli.engines.native.lag import LagSchedule
from sspo_cli.models.logprobs import completion_logprobs, logp_difference_sums, sampler_mismatch_metrics
from sspo_cli.recipe import PerformanceConfig, Recipe, RolloutConfig, stable_hash
from sspo_cli.rollout.collect import generate, grade_all, loss_mask, truncated_fraction
from sspo_cli.rollout.prompts import text_format
from sspo_cli.run.metrics import merge_rows

if TYPE_CHECKING:
    import torch

    from sspo_cli.engines.native.learner import Learner
    from sspo_cli.rollout.collect import Rollout
    from sspo_cli.run.state import TrainState
    from sspo_cli.tasks import Example, Task


def rl_step(recipe: Recipe, learner: Learner, task: Task, objective, state: TrainState) -> dict[str, float]:
    """One rollout and its `updates_per_rollout` optimiser updates."""
    import torch

    from sspo_cli.objectives import compute_advantages  # its lazy attribute imports torch

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
    rewards = torch.tensor([g.reward for g in grades], dtype=torch.float32)
    advantages = compute_advantages(rewards, cfg.group_size, cfg.advantage_scale)
    device = rollout.input_ids.device
    advantages, mask = advantages.to(device), loss_mask(rollout, cfg.mask_truncated_completions)

    # 3. The reference's log-probs, for a KL penalty.
    old_logp, token_entropy = behaviour.old_logp, behaviour.entropy
    sampled_mask = rollout.completion_mask  # every sampled token, masked-out truncated completions included
    entropy = (token_entropy * sampled_mask).sum() / sampled_mask.sum().clamp(min=1)
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
        rollout.input_ids, rollout.attention_mask, rollout.completion_len, old_logp, advantages, mask, ref_logp
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
    tokens = float(sampled_mask.sum())
    return {
        "train/reward": float(rewards.mean()),
        "train/accuracy": sum(g.correct for g in grades) / max(len(grades), 1),
        "train/response_length": tokens / sampled_mask.shape[0],
        "rollout/truncated_frac": truncated_fraction(rollout),
        "rollout/policy_lag": float(schedule.lag(state.step)),
        **behaviour.mismatch(sampled_mask),
        "train/entropy": float(entropy),
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

    With `sampler_dtype: same` the sampler is the learner's computation: its log-probs are the sampling
    pass's where it recorded them (the same numbers up to float rounding), else one more no-grad forward.
    Otherwise both are taken, the sampler's in its dtype and the learner's as the updates run it
    (`performance.autocast_bf16`), and `rollout.behaviour_logprobs` picks the objective's. The learner's
    forwards use the updates' attention kernel `attention`; the sampler's, the loaded one.
    """
    if cfg.sampler_dtype == "same":
        if rollout.logprobs is not None and rollout.entropy is not None:
            return Behaviour(rollout.logprobs, rollout.entropy)
        return Behaviour(*forward_logprobs(model, rollout, cfg.temperature, shared_prompts, perf, None, attention))
    device = rollout.input_ids.device
    learner_logp, entropy = forward_logprobs(
        model, rollout, cfg.temperature, shared_prompts, perf, autocast(device, perf.autocast_bf16), attention
    )
    sampler_logp = rollout.logprobs
    if sampler_logp is None:
        precision = sampler_precision(device, cfg.sampler_dtype)
        sampler_logp, _ = forward_logprobs(model, rollout, cfg.temperature, shared_prompts, perf, precision)
    old_logp = learner_logp if cfg.behaviour_logprobs == "learner" else sampler_logp
    return Behaviour(old_logp, entropy, sampler_logp, learner_logp)


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


def sampler_precision(device: torch.device, dtype: str):
    """The sampler's dtype (`rollout.sampler_dtype`): 'same' changes nothing, 'bfloat16' autocasts the model to
    bf16 (as a bf16 vLLM runs it), 'float32' keeps it in float32; the log-softmax stays float32 in all."""
    import torch

    if dtype == "same":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def autocast(device: torch.device, setting: bool | str):
    """bfloat16 autocast of the model in the updates; the log-probs and the loss stay float32.

    'auto' turns it on where bfloat16 matrix products run natively (`bf16_autocast_pays`).
    """
    import torch

    enabled = native_bf16(device) if setting == "auto" else bool(setting)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def native_bf16(device: torch.device) -> bool:
    """`bf16_autocast_pays` for this machine's `device`."""
    import torch

    if device.type == "cuda":
        return bf16_autocast_pays("cuda", cuda_bf16=torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    probes = {name: getattr(torch.cpu, f"_is_{name}_supported", lambda: False) for name in ("avx512_bf16", "amx_tile")}
    return bf16_autocast_pays(  # private probes
        "cpu",
        avx512_bf16=probes["avx512_bf16"](),
        amx=probes["amx_tile"](),
        kernels=torch.backends.cpu.get_cpu_capability(),
    )


# The environment that caps torch's CPU kernels (ATen, MKL, oneDNN) at an instruction set. On an AVX-512 CPU the AVX2
# caps reproduce an AVX2-only CPU's rounding exactly (docs/results.md, the quickstart grid), and `kernels` below.
KERNEL_CAPS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
}


def kernel_environment(kernels: str, environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` for a process whose CPU kernels run as `kernels` (a key of KERNEL_CAPS) says; any cap `environ`
    held is dropped first, so 'native' is the machine's whole instruction set."""
    capped = {name for caps in KERNEL_CAPS.values() for name in caps}
    return {k: v for k, v in environ.items() if k not in capped} | KERNEL_CAPS[kernels]


def bf16_autocast_pays(
    device_type: str,
    *,
    cuda_bf16: bool = False,
    avx512_bf16: bool = False,
    amx: bool = False,
    kernels: str = "AVX512",
) -> bool:
    """The rule of `autocast_bf16: auto`, from what the device has.

    - CUDA with bf16: on.
    - CPU with AVX-512-BF16 (AMD Zen 4, Intel Cooper Lake and later): on. Measured on a 2-core AMD EPYC (Zen 4,
      no AMX): the standard workload's step 1.2-1.4x faster (docs/performance.md).
    - CPU with AMX (Intel Sapphire Rapids and later, which also have AVX-512-BF16): on. On a 2-core such Xeon the
      standard workload's step was 0.300 s with it and 0.307 s without (issue 16): no gain at its tiny matrices,
      no loss either, and AMX's bf16 tiles are its fastest path for larger ones.
    - Off where torch's CPU kernels run below AVX-512 (`kernels`, the ATen capability: `ATEN_CPU_CAPABILITY=avx2`
      caps it), even on a CPU that has the instructions: the kernels would not use them.
    - Elsewhere off: bf16 would be emulated, slower than float32.
    """
    if device_type == "cuda":
        return cuda_bf16
    return device_type == "cpu" and (avx512_bf16 or amx) and kernels.upper().startswith("AVX512")


def prepared_model(model, perf: PerformanceConfig):
    """The policy itself, set up in place on first use: its decoder compiled (weights stay shared)
    with `perf.compile`, gradient checkpointing on (it acts in train mode only) with `perf.gradient_checkpointing`."""
    decoder = getattr(model, "base_model", model)
    if perf.compile and getattr(decoder, "_compiled_call_impl", None) is None:
        decoder.compile(dynamic=True)
    if perf.gradient_checkpointing and not model.is_activation_checkpointing:
        # transformers' gradient checkpointing, under its v5 name (`gradient_checkpointing_enable` is deprecated)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


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

    def objective_inputs(self, rows: torch.Tensor, width: int | None = None) -> dict[str, torch.Tensor | None]:
        """The objective's arguments after `logp` for these rows (their first `width` completion columns)."""
        cols = slice(None, width)
        return {
            "old_logp": self.old_logp[rows, cols],
            "advantages": self.advantages[rows],
            "mask": self.mask[rows, cols],
            "ref_logp": None if self.ref_logp is None else self.ref_logp[rows, cols],
        }

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
    if len(parts) == 1:
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
    metrics = objective.metrics(torch.cat(logps), **data.objective_inputs(torch.cat(parts)))
    return AccumulatedUpdate(loss, metrics, seconds + time.perf_counter() - t0)


# Per-micro-batch cost of an update (Python and operator dispatch of one forward and backward), per decoder
# layer, and the CPU's float32 throughput on the update's matrix products: their ratio prices one more
# micro-batch in tokens (`bucket_count`). Rough figures of the 2-core AMD EPYC (Zen 4) of docs/performance.md.
MICRO_BATCH_OVERHEAD_S_PER_LAYER = 1e-3
CPU_UPDATE_FLOPS = 1e11


def bucket_count(perf: PerformanceConfig, device: torch.device) -> int | None:
    """`performance.length_buckets` resolved: a number of buckets, or None where 'auto' chooses by cost
    (`length_bucket_parts`). 'auto' does not split on accelerators (not measured there)."""
    if perf.length_buckets != "auto":
        return int(perf.length_buckets)
    return None if device.type == "cpu" else 1


def micro_batch_price(model) -> float:
    """One more micro-batch's fixed cost, in tokens of forward + backward (6 FLOPs per parameter per token)."""
    layers = getattr(model.config, "num_hidden_layers", 1)
    params = sum(p.numel() for p in model.parameters())
    return layers * MICRO_BATCH_OVERHEAD_S_PER_LAYER * CPU_UPDATE_FLOPS / (6 * max(params, 1))


MAX_LENGTH_BUCKETS = 8


def length_bucket_parts(
    rows: torch.Tensor, data: UpdateData, prompt_index: torch.Tensor | None, count: int | None, price: float = 0.0
) -> list[torch.Tensor]:
    """`rows` sorted by completion length (rows of one prompt together among equals) in `count` slices of equal
    size; `count` None: the number (1 to MAX_LENGTH_BUCKETS) that costs fewest tokens of forward + backward,
    one more micro-batch priced at `price` tokens. Each slice is later trimmed to its own longest completion."""
    import torch

    if count == 1 or rows.shape[0] < 2:
        return [rows]
    lengths = (data.mask[rows] != 0).sum(1)
    key = lengths * (int(prompt_index.max()) + 1) + prompt_index[rows] if prompt_index is not None else lengths
    order = torch.argsort(key, stable=True)
    by_length, lengths = rows[order], lengths[order]
    if count is not None:
        return list(torch.tensor_split(by_length, min(count, rows.shape[0])))
    prefix = data.input_ids.shape[1] - data.completion_len - 1  # the prompt but its last token
    widths = [max(n, 1) + 1 for n in lengths.tolist()]  # + the last prompt token
    prompts = by_length.tolist() if prompt_index is None else prompt_index[by_length].tolist()
    best, best_cost = 1, math.inf
    for k in range(1, min(MAX_LENGTH_BUCKETS, len(widths)) + 1):
        cost = k * price
        for start, end in slice_bounds(len(widths), k):
            cost += (end - start) * widths[end - 1] + len(set(prompts[start:end])) * prefix
        if cost < best_cost:
            best, best_cost = k, cost
    return [rows] if best == 1 else list(torch.tensor_split(by_length, best))  # one bucket: the rows' own order


# Eager attention keeps every layer's rows x heads x L x L attention weights for the backward pass; above this
# size per layer (float32) 'auto' leaves long sequences to SDPA, whose kernels never build them.
EAGER_UPDATE_ATTENTION_MAX_MB = 64.0


def learner_attention(recipe: Recipe, model, shape: tuple[int, int], device: torch.device) -> str:
    """The attention kernel of an RL step's learner forwards: the behaviour log-probs where a forward takes them,
    the reference's and every update's. One choice per step, so that the first update is exactly on-policy and
    the KL starts at 0; made for the largest micro-batch of a rollout of `shape` (rows, tokens) at full length."""
    rows, length = shape
    largest = min(minibatch_rows(rows, recipe.rollout), recipe.performance.micro_batch_size or rows)
    return update_attention_for(recipe.performance, device, model, largest, length)


def update_attention_for(perf: PerformanceConfig, device: torch.device, model, rows: int, length: int) -> str:
    """`performance.update_attention` resolved for a micro-batch of `rows` sequences of `length` tokens.

    'auto': eager on CPU while one layer's attention weights fit in EAGER_UPDATE_ATTENTION_MAX_MB (ATen's CPU
    flash kernel is slower at these lengths: 1.1-1.2x on both benchmark workloads, docs/performance.md), the
    loaded kernel elsewhere."""
    if perf.update_attention != "auto":
        return perf.update_attention
    heads = getattr(getattr(model, "config", None), "num_attention_heads", 1) or 1
    weights_mb = rows * heads * length * length * 4 / 2**20
    return "eager" if device.type == "cpu" and weights_mb <= EAGER_UPDATE_ATTENTION_MAX_MB else "same"


@contextlib.contextmanager
def attention_kernel(model, name: str):
    """The model's attention kernel set to `name` ('sdpa', 'eager'; 'same': as loaded) inside the block.

    transformers' attention layers and mask builders read `config._attn_implementation` at every call."""
    config = getattr(model, "config", None)
    loaded = getattr(config, "_attn_implementation", None)
    if name == "same" or loaded is None or loaded == name or loaded not in ("sdpa", "eager"):
        yield
        return
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = loaded


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


def slice_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """The (start, end) of `torch.tensor_split`'s k slices of n items: the first n % k are one longer."""
    size, longer = divmod(n, k)
    bounds, start = [], 0
    for i in range(k):
        end = start + size + (i < longer)
        bounds.append((start, end))
        start = end
    return bounds


def apply_update(loss: float, model, optimizer, scheduler, recipe: Recipe, state: TrainState) -> dict[str, float]:
    """Clip and step on the accumulated gradients; a non-finite loss or gradient leaves weights and optimiser untouched."""
    import torch

    if math.isfinite(loss):
        max_norm = recipe.train.grad_clip if recipe.train.grad_clip is not None else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
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
