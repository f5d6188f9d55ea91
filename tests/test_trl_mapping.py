"""The recipe -> TRL GRPOConfig mapping: batch layout, refusals naming the key, the docs table."""

import re

import pytest
from conftest import REPO

from sspo_cli.engines.trl.mapping import TrlEngineError, batch_layout, plan_trl_run, trl_loss_settings
from sspo_cli.engines.trl.options import TrlOptions
from sspo_cli.objectives import objective_names
from sspo_cli.recipe import Recipe, recipe_from_dict
from sspo_cli.run.tracking import flatten


def recipe(*overrides: str) -> Recipe:
    return recipe_from_dict({"engine": "trl"}, list(overrides))


def test_default_rollout_is_one_generation_with_four_updates() -> None:
    layout = batch_layout(recipe().rollout)  # 16 prompts x 8 completions, 4 updates
    assert (layout.rollout_size, layout.minibatch_size) == (128, 32)
    assert (layout.per_device_train_batch_size, layout.steps_per_generation, layout.num_iterations) == (32, 4, 1)


@pytest.mark.parametrize(
    ("overrides", "world", "accumulation", "expected"),
    [
        # (per-device batch, steps_per_generation, num_iterations)
        (["rollout.updates_per_rollout=1"], 1, 1, (128, 1, 1)),
        (
            ["rollout.minibatch_size=64", "rollout.updates_per_rollout=4"],
            1,
            1,
            (64, 2, 2),
        ),  # two passes over the rollout
        ([], 4, 1, (8, 4, 1)),  # 4 processes share each mini-batch of 32
        ([], 2, 4, (4, 16, 1)),  # and with micro-batches of 4 accumulated 4 times
    ],
)
def test_layout_gives_updates_per_rollout_optimiser_steps(overrides, world, accumulation, expected) -> None:
    layout = batch_layout(recipe(*overrides).rollout, world, accumulation)
    assert (layout.per_device_train_batch_size, layout.steps_per_generation, layout.num_iterations) == expected
    optimiser_steps = layout.steps_per_generation * layout.num_iterations // accumulation
    assert optimiser_steps == layout.updates_per_rollout
    assert layout.per_device_train_batch_size * world * accumulation == layout.minibatch_size


@pytest.mark.parametrize(
    ("overrides", "world", "key"),
    [
        (["rollout.updates_per_rollout=3"], 1, "rollout.updates_per_rollout"),
        (["rollout.minibatch_size=48"], 1, "rollout.minibatch_size"),
        (["rollout.minibatch_size=64", "rollout.updates_per_rollout=3"], 1, "rollout.updates_per_rollout"),
        ([], 3, "rollout.updates_per_rollout"),
        (["model.dtype=float16"], 1, "model.dtype"),
        (["model.device=cuda:1"], 1, "model.device"),
    ],
)
def test_what_trl_cannot_honour_is_an_error_naming_the_key(overrides, world, key) -> None:
    with pytest.raises(TrlEngineError) as info:
        plan_trl_run(recipe(*overrides), world_size=world)
    assert info.value.key == key
    assert isinstance(info.value, ValueError) and str(info.value).startswith(f"{key}: ")


@pytest.mark.parametrize(("overrides", "cuda"), [(["model.path=/models/qwen"], False), ([], True)])
def test_vllm_needs_a_gpu_and_a_model_folder(overrides, cuda) -> None:
    vllm_recipe = recipe(*overrides).model_copy(update={"trl": TrlOptions(use_vllm=True)})
    with pytest.raises(TrlEngineError) as info:
        plan_trl_run(vllm_recipe, cuda_available=cuda)
    assert info.value.key == "trl.use_vllm"
    assert plan_trl_run(
        recipe("model.path=/models/qwen").model_copy(update={"trl": TrlOptions(use_vllm=True)}), cuda_available=True
    ).config["use_vllm"]


def test_config_values() -> None:
    r = recipe(
        "train.grad_clip=null",
        "rollout.advantage_scale=none",
        "train.steps=10",
        "model.dtype=bfloat16",
        "objective.name=sapo",
        "objective.tau_pos=2",
    )
    config = plan_trl_run(r).config
    assert config["max_grad_norm"] == 0.0  # transformers: no clipping, grad norm still logged
    assert config["scale_rewards"] == "none" and config["max_steps"] == 40 and config["bf16"] is True
    assert (config["loss_type"], config["sapo_temperature_pos"]) == ("sapo", 2.0)
    assert config["report_to"] == [] and config["use_vllm"] is False and config["gradient_checkpointing"] is False
    assert config["top_k"] == 0 and config["top_p"] == 1.0  # the model's own distribution


@pytest.mark.parametrize(
    ("setting", "bf16_available", "expected"),
    [("true", False, True), ("false", True, False), ("auto", True, True), ("auto", False, False)],
)
def test_autocast_bf16_of_the_recipe_is_trls_bf16(setting: str, bf16_available: bool, expected: bool) -> None:
    plan = plan_trl_run(
        recipe(f"performance.autocast_bf16={setting}"), bf16_available=bf16_available
    )  # float32 weights
    assert plan.config["bf16"] is expected


def test_loss_settings_follow_the_objective() -> None:
    assert trl_loss_settings(recipe("objective.name=grpo", "objective.agg=token_mean").objective)["loss_type"] == "bnpo"
    gspo = trl_loss_settings(recipe("objective.name=gspo").objective)
    assert gspo["importance_sampling_level"] == "sequence" and gspo["epsilon"] == 3e-4 and gspo["epsilon_high"] == 4e-4


def test_trl_accepts_the_config_and_derives_the_same_batch() -> None:
    pytest.importorskip("trl")
    from sspo_cli.engines.trl.engine import grpo_config

    r = recipe("rollout.minibatch_size=64", "rollout.updates_per_rollout=4", "model.device=cpu")
    plan = plan_trl_run(r)
    args = grpo_config(plan, "unused-output-dir")
    assert args.generation_batch_size == r.rollout.rollout_size
    assert (args.per_device_train_batch_size, args.steps_per_generation, args.num_iterations) == (64, 2, 2)
    assert args.num_generations == 8 and args.max_completion_length == r.rollout.max_new_tokens
    assert args.bf16 is False and args.gradient_checkpointing is False and args.report_to == []


def documented_keys() -> set[str]:
    """Backticked keys in the first column of the mapping table of docs/engines.md."""
    text = (REPO / "docs" / "engines.md").read_text()
    table = text.split("<!-- mapping-table -->")[1]
    keys: set[str] = set()
    for line in table.splitlines():
        if not line.startswith("|"):
            if keys:
                break
            continue
        first_cell = line.split("|")[1]
        keys.update(re.findall(r"`([a-z_.*]+)`", first_cell))
    return keys


def test_every_recipe_key_is_in_the_mapping_table() -> None:
    keys = set(flatten(Recipe().resolved())) | {f"trl.{name}" for name in TrlOptions.model_fields}
    for objective in objective_names():
        keys |= {f"objective.{k}" for k in recipe(f"objective.name={objective}").objective.model_fields}
    documented = documented_keys()
    wildcards = [k[:-1] for k in documented if k.endswith("*")]
    missing = sorted(k for k in keys if k not in documented and not any(k.startswith(prefix) for prefix in wildcards))
    assert not missing, f"docs/engines.md mapping table lacks {missing}"


@pytest.mark.parametrize("name", ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_shipped_accelerate_configs_load(name: str) -> None:
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO / "examples" / "accelerate" / f"{name}.yaml"))
    assert config.mixed_precision == "no"  # precision comes from the recipe
    if name == "deepspeed_zero3":
        assert (
            config.deepspeed_config["zero3_init_flag"] is False
            and config.deepspeed_config["zero3_save_16bit_model"] is True
        )
    if name == "fsdp":
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_truncation_masking_maps_to_trl_and_stop_strings_are_refused() -> None:
    assert plan_trl_run(recipe()).config["mask_truncated_completions"] is False
    assert plan_trl_run(recipe("rollout.mask_truncated_completions=true")).config["mask_truncated_completions"] is True
    with pytest.raises(TrlEngineError) as info:
        plan_trl_run(recipe("rollout.stop=['\\n\\n']"))
    assert info.value.key == "rollout.stop"


@pytest.mark.parametrize(
    "override",
    [
        "rollout.policy_lag=2",
        "rollout.sync_interval=4",
        "rollout.sampler_dtype=bfloat16",
        "rollout.sampler_dtype=bfloat16 rollout.behaviour_logprobs=sampler",
    ],
)
def test_the_native_engines_off_policy_options_are_refused_not_ignored(override: str) -> None:
    overrides = override.split()
    with pytest.raises(TrlEngineError) as info:
        plan_trl_run(recipe(*overrides))
    assert info.value.key == overrides[0].split("=")[0]
    assert "native" in str(info.value)


def test_trl_logs_get_the_specs_rollout_keys() -> None:
    from sspo_cli.engines.trl.records import native_keys

    plain = native_keys({"loss": 0.5, "completions/clipped_ratio": 0.25})
    assert plain["rollout/truncated_frac"] == 0.25
    assert plain["rollout/policy_lag"] == 0.0  # GRPOTrainer samples with the weights it updates next
    assert "rollout/sampler_logp_diff_mean" not in plain  # SspoGRPOTrainer's to log, once per rollout
    ours = {"rollout/sampler_logp_diff_mean": 0.01, "rollout/sampler_logp_diff_max": 0.3}
    assert native_keys(ours).items() >= ours.items()
    # TRL's own figure (with its importance weight on) is a mean of per-process means: kept apart.
    theirs = native_keys({"sampling/sampling_logp_difference/mean": 0.02})
    assert (
        theirs["trl/sampling/sampling_logp_difference/mean"] == 0.02 and "rollout/sampler_logp_diff_mean" not in theirs
    )


VLLM = ["model.path=/models/qwen", "trl.use_vllm=true"]


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["rollout.behaviour_logprobs=sampler"], "rollout.behaviour_logprobs"),  # no sampler but the trained model
        (["trl.vllm_importance_sampling_correction=true"], "trl.vllm_importance_sampling_correction"),
        (
            [*VLLM, "rollout.behaviour_logprobs=sampler", "trl.vllm_importance_sampling_correction=true"],
            "trl.vllm_importance_sampling_correction",
        ),
        ([*VLLM, "trl.vllm_importance_sampling_mode=token_truncate"], "trl.vllm_importance_sampling_mode"),
        (["trl.vllm_importance_sampling_clip_max=2"], "trl.vllm_importance_sampling_clip_max"),
        (["trl.vllm_importance_sampling_clip_min=0.5"], "trl.vllm_importance_sampling_clip_min"),
        (["objective.correction=token_truncate"], "objective.correction"),  # decoupled mode is the native engine's
        (["objective.m2_threshold=0.04"], "objective.m2_threshold"),
        (  # vespo folds the weight into its sequence weight; the engine weighs token gradients
            [*VLLM, "objective.name=vespo", "trl.vllm_importance_sampling_correction=true"],
            "trl.vllm_importance_sampling_correction",
        ),
    ],
)
def test_behaviour_logprobs_and_trls_importance_weight_refusals(overrides: list[str], key: str) -> None:
    with pytest.raises(TrlEngineError) as info:
        plan_trl_run(recipe(*overrides), cuda_available=True)
    assert info.value.key == key


def test_behaviour_logprobs_and_trls_importance_weight_mapping() -> None:
    default = plan_trl_run(recipe(*VLLM), cuda_available=True).config
    assert default["vllm_importance_sampling_correction"] is False  # our default: the objective alone
    sampler = plan_trl_run(recipe(*VLLM, "rollout.behaviour_logprobs=sampler"), cuda_available=True).config
    assert sampler["use_vllm"] is True and sampler["vllm_importance_sampling_correction"] is False
    kept = plan_trl_run(
        recipe(
            *VLLM,
            "trl.vllm_importance_sampling_correction=true",
            "trl.vllm_importance_sampling_mode=token_truncate",
            "trl.vllm_importance_sampling_clip_max=2",
            "trl.vllm_importance_sampling_clip_min=0.5",
        ),
        cuda_available=True,
    ).config
    assert kept["vllm_importance_sampling_correction"] is True
    assert kept["vllm_importance_sampling_mode"] == "token_truncate"
    assert (kept["vllm_importance_sampling_clip_min"], kept["vllm_importance_sampling_clip_max"]) == (0.5, 2.0)


def test_trls_importance_weight_defaults_are_trls() -> None:
    """With the correction on and nothing else set, the weight is TRL 1.16's own default."""
    pytest.importorskip("trl")
    import dataclasses

    from trl import GRPOConfig

    theirs = {field.name: field.default for field in dataclasses.fields(GRPOConfig)}
    for name in (
        "vllm_importance_sampling_mode",
        "vllm_importance_sampling_clip_max",
        "vllm_importance_sampling_clip_min",
    ):
        assert getattr(TrlOptions(), name) == theirs[name], name


def test_importance_weight_bounds_are_ordered() -> None:
    from sspo_cli.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"trl: .*clip_min 3.0 must be below .*clip_max 2.0"):
        recipe("trl.vllm_importance_sampling_clip_max=2", "trl.vllm_importance_sampling_clip_min=3")
