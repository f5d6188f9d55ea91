"""How a recipe maps onto TRL 1.16's `GRPOConfig`: pure Python, no torch, no TRL.

Every mapping lives here and in the one table of docs/engines.md. A recipe value that TRL cannot
honour raises `TrlEngineError` naming the recipe key, before any run folder or MLflow run exists.
`plan_trl_run` is cheap enough for `sspo validate` to call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sspo_cli.engines.trl.options import TrlOptions
from sspo_cli.errors import InputError
from sspo_cli.objectives.config import BaseObjectiveConfig
from sspo_cli.recipe import Recipe, RolloutConfig

TRL_INSTALL_HINT = "install the trl extra: pip install -e '.[trl]'"


class TrlEngineError(InputError):
    """A recipe the TRL engine cannot run as written, or TRL missing; `.key` names the recipe key."""


def trl_options(recipe: Recipe) -> TrlOptions:
    """The recipe's `trl:` section, or the defaults while the recipe schema has none."""
    options = getattr(recipe, "trl", None)
    return options if isinstance(options, TrlOptions) else TrlOptions.model_validate(options or {})


# --------------------------------------------------------------------------- batch layout


@dataclass(frozen=True)
class BatchLayout:
    """One RL step of the recipe as TRL counts it.

    TRL generates `generation_batch_size` completions, splits them into `steps_per_generation`
    micro-batches per process and walks that split `num_iterations` times; an optimiser update
    every `gradient_accumulation_steps` micro-batches. The numbers below make one generation equal
    one recipe rollout and give it exactly `updates_per_rollout` optimiser updates.
    """

    rollout_size: int  # completions per rollout, all processes: prompts_per_step * group_size
    minibatch_size: int  # completions per optimiser update, all processes
    updates_per_rollout: int
    world_size: int
    gradient_accumulation_steps: int
    per_device_train_batch_size: int
    steps_per_generation: int
    num_iterations: int


def batch_layout(rollout: RolloutConfig, world_size: int = 1, gradient_accumulation_steps: int = 1) -> BatchLayout:
    size, updates = rollout.rollout_size, rollout.updates_per_rollout
    if rollout.minibatch_size is None:
        key = "rollout.updates_per_rollout"
        if size % updates:
            raise TrlEngineError(
                key,
                f"TRL splits a rollout into equal mini-batches: {updates} updates do not divide the rollout of "
                f"{size} completions (prompts_per_step x group_size); pick a divisor or set rollout.minibatch_size",
            )
        minibatch = size // updates
    else:
        key = "rollout.minibatch_size"
        minibatch = rollout.minibatch_size
        if size % minibatch:
            raise TrlEngineError(
                key,
                f"TRL splits a rollout into equal mini-batches: {minibatch} does not divide the rollout of {size} completions",
            )
        if (updates * minibatch) % size:
            raise TrlEngineError(
                "rollout.updates_per_rollout",
                f"TRL reuses a rollout in whole passes: updates_per_rollout x minibatch_size = {updates * minibatch} "
                f"must be a multiple of the rollout size {size}",
            )
    micro_batches = world_size * gradient_accumulation_steps
    if minibatch % micro_batches:
        raise TrlEngineError(
            key,
            f"a mini-batch of {minibatch} completions does not split evenly over {world_size} process(es) x "
            f"{gradient_accumulation_steps} accumulation step(s) (trl.gradient_accumulation_steps)",
        )
    per_device = minibatch // micro_batches
    return BatchLayout(
        rollout_size=size,
        minibatch_size=minibatch,
        updates_per_rollout=updates,
        world_size=world_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        per_device_train_batch_size=per_device,
        steps_per_generation=size // (per_device * world_size),
        num_iterations=updates * minibatch // size,
    )


# --------------------------------------------------------------------------- objective


def _hard_clip(loss_type: str, level: str, objective: Any) -> dict[str, Any]:
    """TRL's PPO clip of the token or sequence ratio, with the objective's epsilons."""
    return {
        "loss_type": loss_type,
        "importance_sampling_level": level,
        "epsilon": objective.eps_low,
        "epsilon_high": objective.eps_high,
    }


def _grpo_loss(objective: Any) -> dict[str, Any]:
    return _hard_clip("grpo" if objective.agg == "seq_mean_token_mean" else "bnpo", "token", objective)


def _gspo_loss(objective: Any) -> dict[str, Any]:
    return _hard_clip("grpo", "sequence", objective)


def _sapo_loss(objective: Any) -> dict[str, Any]:
    return {
        "loss_type": "sapo",
        "importance_sampling_level": "token",
        "sapo_temperature_pos": objective.tau_pos,
        "sapo_temperature_neg": objective.tau_neg,
    }


# Our objectives that TRL has a built-in counterpart of; any other objective gets NO_TRL_COUNTERPART.
TRL_COUNTERPARTS = {"grpo": _grpo_loss, "gspo": _gspo_loss, "sapo": _sapo_loss}
NO_TRL_COUNTERPART = {"loss_type": "grpo", "importance_sampling_level": "token"}


def trl_loss_settings(objective: Any) -> dict[str, Any]:
    """TRL's own loss settings closest to our objective.

    For grpo, gspo and sapo these settings make TRL's built-in loss equal ours (cross-checked in
    tests/test_trl_crosscheck.py, conditions in docs/engines.md). gmpo and sspo (and any objective
    added later) have no TRL counterpart. The engine always optimises our objective; these only
    keep TRL's bookkeeping honest.
    """
    counterpart = TRL_COUNTERPARTS.get(objective.name)
    return counterpart(objective) if counterpart is not None else dict(NO_TRL_COUNTERPART)


# --------------------------------------------------------------------------- placement and precision


def uses_cpu(recipe: Recipe, cuda_available: bool) -> bool:
    """accelerate places the model (one device per process); the recipe may only ask for CPU or 'any'.

    True also where no GPU exists: accelerate must be told, or processes launched on CPUs would
    not find each other.
    """
    device = recipe.model.device
    if device not in ("auto", "cuda", "cpu"):
        raise TrlEngineError(
            "model.device",
            f"{device!r}: the TRL engine lets accelerate give each process its device; "
            "use 'auto', 'cuda' or 'cpu' (choose GPUs with CUDA_VISIBLE_DEVICES)",
        )
    if device == "cuda" and not cuda_available:
        raise TrlEngineError("model.device", "'cuda' asked for, but no CUDA device is available")
    return device == "cpu" or not cuda_available


def bf16_mixed_precision(recipe: Recipe, bf16_available: bool) -> bool:
    """TRL's `bf16` flag (autocast of forward and backward) from the weights dtype and `performance.autocast_bf16`."""
    if recipe.model.dtype == "float16":
        raise TrlEngineError(
            "model.dtype",
            "float16 weights cannot be trained by TRL (transformers refuses to unscale float16 gradients); use bfloat16 or float32",
        )
    setting = recipe.performance.autocast_bf16  # True, False or "auto"
    return recipe.model.dtype == "bfloat16" or setting is True or (setting == "auto" and bf16_available)


# --------------------------------------------------------------------------- the whole plan


@dataclass(frozen=True)
class TrlPlan:
    layout: BatchLayout
    options: TrlOptions
    config: dict[str, Any]  # GRPOConfig keyword arguments, output_dir excluded
    max_steps: int  # optimiser updates in the run


NATIVE_OFF_POLICY_OPTIONS = ("policy_lag", "sync_interval", "sampler_dtype")


def check_native_off_policy_options(rollout: RolloutConfig) -> None:
    """The lag and sampler-dtype options are the native engine's (docs/off_policy.md): refuse them rather than ignore them."""
    defaults = type(rollout)()
    for name in NATIVE_OFF_POLICY_OPTIONS:
        if getattr(rollout, name) != getattr(defaults, name):
            raise TrlEngineError(
                f"rollout.{name}",
                f"{getattr(rollout, name)!r} is an option of the native engine (docs/off_policy.md); TRL does not "
                "read it yet: leave it at its default with engine: trl, or use engine: native",
            )


def check_decoupled_objective(objective: BaseObjectiveConfig) -> None:
    """The objective's sampler correction and M2PO mask need the sampler's log-probs beside a proximal recompute;
    on TRL, vLLM's own correction is `trl.vllm_importance_sampling_correction` (applied to the token loss)."""
    for key, value, off in (
        ("correction", objective.correction, "none"),
        ("m2_threshold", objective.m2_threshold, None),
    ):
        if value != off:
            raise TrlEngineError(
                f"objective.{key}",
                f"{value!r} runs on the native engine (decoupled mode: sampler and proximal log-probs); with "
                "engine: trl leave it unset and use trl.vllm_importance_sampling_correction with vLLM, "
                "or use engine: native",
            )


IMPORTANCE_WEIGHT_SETTINGS = (
    "vllm_importance_sampling_mode",
    "vllm_importance_sampling_clip_max",
    "vllm_importance_sampling_clip_min",
)


FOLDED_IMPORTANCE_WEIGHT = frozenset({"vespo"})
"""Objectives that fold a sampler weight into their own weight (TRL skips its multiplication for them); the
engine's `weighted_gradient` is not that rule."""


def check_behaviour_logprobs(rollout: RolloutConfig, options: TrlOptions, objective_name: str = "") -> None:
    """Where the objective's old log-probs come from (docs/engines.md, "Behaviour log-probs and vLLM").

    vLLM is TRL's only sampler that is another computation than the trained model, so `sampler` and
    TRL's importance weight need it; the weight corrects a mismatch that `sampler` already hands to
    the objective's ratios, so the two exclude each other.
    """
    if rollout.behaviour_logprobs == "sampler" and not options.use_vllm:
        raise TrlEngineError(
            "rollout.behaviour_logprobs",
            "'sampler' takes vLLM's log-probs as the behaviour policy and needs trl.use_vllm: true; without vLLM "
            "the trained model samples, the same computation as the learner: leave 'learner'",
        )
    key = "trl.vllm_importance_sampling_correction"
    if options.vllm_importance_sampling_correction and not options.use_vllm:
        raise TrlEngineError(key, "TRL's importance weight corrects vLLM's mismatch and needs trl.use_vllm: true")
    if options.vllm_importance_sampling_correction and rollout.behaviour_logprobs == "sampler":
        raise TrlEngineError(
            key,
            "with rollout.behaviour_logprobs: sampler the objective's ratios already carry the vLLM mismatch; "
            "TRL's weight would count it twice: use one of them",
        )
    if options.vllm_importance_sampling_correction and objective_name in FOLDED_IMPORTANCE_WEIGHT:
        raise TrlEngineError(
            key,
            f"objective {objective_name} folds an importance weight into its sequence weight; the engine weighs "
            "each token's gradient instead, which is not that rule: turn the correction off or pick another objective",
        )
    defaults = TrlOptions()
    for name in IMPORTANCE_WEIGHT_SETTINGS:
        if not options.vllm_importance_sampling_correction and getattr(options, name) != getattr(defaults, name):
            raise TrlEngineError(
                f"trl.{name}",
                f"{getattr(options, name)!r} is read only with {key}: true; leave it at its default or turn the "
                "correction on",
            )


def plan_trl_run(
    recipe: Recipe, world_size: int = 1, cuda_available: bool = False, bf16_available: bool = False
) -> TrlPlan:
    """Check the recipe against TRL and build `GRPOConfig`'s arguments. Raises TrlEngineError."""
    options = trl_options(recipe)
    layout = batch_layout(recipe.rollout, world_size, options.gradient_accumulation_steps)
    use_cpu = uses_cpu(recipe, cuda_available)
    if recipe.rollout.stop:
        raise TrlEngineError(
            "rollout.stop",
            "stop strings are the native engine's (TRL's transformers sampler cannot end a completion at one and "
            "cut its text); leave rollout.stop empty with engine: trl, or use engine: native",
        )
    if options.use_vllm and use_cpu:
        raise TrlEngineError(
            "trl.use_vllm", "vLLM samples on GPUs only: it needs a GPU machine and model.device 'auto' or 'cuda'"
        )
    if recipe.model.lora is not None:
        raise TrlEngineError("model.lora", "LoRA adapters are trained by the native engine only: set engine: native")
    check_native_off_policy_options(recipe.rollout)
    check_decoupled_objective(recipe.objective)
    check_behaviour_logprobs(recipe.rollout, options, recipe.objective.name)
    if options.use_vllm and not recipe.model.path:
        raise TrlEngineError(
            "trl.use_vllm", "vLLM loads the policy from a model folder: set model.path (the tiny model has none)"
        )
    train, rollout = recipe.train, recipe.rollout
    max_steps = train.steps * layout.updates_per_rollout
    config: dict[str, Any] = {
        # rollout
        "num_generations": rollout.group_size,
        "per_device_train_batch_size": layout.per_device_train_batch_size,
        "gradient_accumulation_steps": layout.gradient_accumulation_steps,
        "steps_per_generation": layout.steps_per_generation,
        "num_iterations": layout.num_iterations,
        "max_completion_length": rollout.max_new_tokens,
        "temperature": rollout.temperature,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": None,
        "repetition_penalty": 1.0,
        "scale_rewards": rollout.advantage_scale,
        "mask_truncated_completions": rollout.mask_truncated_completions,
        "shuffle_dataset": True,
        # objective (our loss replaces TRL's; see trl_loss_settings)
        "beta": recipe.objective.beta,
        "use_bias_correction_kl": False,
        "top_entropy_quantile": 1.0,
        "entropy_coef": 0.0,
        "off_policy_mask_threshold": None,
        **trl_loss_settings(recipe.objective),
        # optimisation
        "max_steps": max_steps,
        "learning_rate": train.lr,
        "lr_scheduler_type": "constant",  # replaced by the native engine's schedule (SspoGRPOTrainer.create_scheduler)
        "warmup_steps": 0,
        "weight_decay": train.weight_decay,
        "max_grad_norm": train.grad_clip if train.grad_clip is not None else 0.0,
        "optim": "adamw_torch",
        "gradient_checkpointing": options.gradient_checkpointing,
        "bf16": bf16_mixed_precision(recipe, bf16_available),
        "fp16": False,
        "use_cpu": use_cpu,
        "torch_compile": recipe.performance.compile,
        "seed": recipe.seed,
        "data_seed": recipe.seed,
        # records: ours, not TRL's integrations
        "report_to": [],
        "logging_strategy": "steps",
        "logging_steps": 1,
        "logging_nan_inf_filter": False,
        "log_completions": False,
        "disable_tqdm": True,
        "save_strategy": "steps",
        "save_steps": train.checkpoint_every * layout.updates_per_rollout,
        "save_total_limit": train.keep_checkpoints,
        "eval_strategy": "no",
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        # sampling backend
        "use_vllm": options.use_vllm,
        "vllm_mode": options.vllm_mode,
        "vllm_server_base_url": options.vllm_server_base_url,
        "vllm_gpu_memory_utilization": options.vllm_gpu_memory_utilization,
        "vllm_tensor_parallel_size": options.vllm_tensor_parallel_size,
        # behaviour log-probs (rollout.behaviour_logprobs is read by SspoGRPOTrainer) and TRL's vLLM importance weight
        "vllm_importance_sampling_correction": options.vllm_importance_sampling_correction,
        **{name: getattr(options, name) for name in IMPORTANCE_WEIGHT_SETTINGS},
    }
    return TrlPlan(layout=layout, options=options, config=config, max_steps=max_steps)
