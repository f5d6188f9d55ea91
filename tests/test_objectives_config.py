"""Objective configs: spec defaults and names, validation errors naming the key, the registry,
and a torch-free import of the config module."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
from pydantic import BaseModel

from sspo_cli.objectives import (
    OBJECTIVE_CONFIGS,
    GmpoConfig,
    GrpoConfig,
    SapoConfig,
    SspoConfig,
    build_objective,
    objective_names,
    parse_objective_config,
)
from sspo_cli.objectives.formulas import OBJECTIVES, SSPO_LOG_GATES

SPEC_DEFAULTS = {
    "grpo": {"eps_low": 0.2, "eps_high": 0.2, "agg": "seq_mean_token_mean"},
    "gspo": {"eps_low": 3e-4, "eps_high": 4e-4},
    "gmpo": {"eps_low": 0.4, "eps_high": 0.4},
    "sapo": {"tau_pos": 1.0, "tau_neg": 1.05},
    "sspo": {"gate": "sigmoid", "tau_pos": 1.0, "tau_neg": 1.05},
    "cispo": {"eps_low": 1.0, "eps_high": 4.0, "agg": "token_mean"},
    "dppo_tv": {"delta_low": 0.15, "delta_high": 0.15, "ratio_cap": 20.0, "agg": "token_mean"},
    "dppo_kl": {"delta_low": 0.05, "delta_high": 0.05, "ratio_cap": 20.0, "agg": "token_mean"},
    "vespo": {"k_pos": 2.0, "lambda_pos": 3.0, "k_neg": 3.0, "lambda_neg": 2.0, "agg": "token_mean"},
    "luspo": {"eps_low": 2e-3, "eps_high": 2.5e-3},
}
COMMON_DEFAULTS = {
    "beta": 0.0,
    "log_ratio_clamp": 20.0,
    "saturation_threshold": 0.1,
    "correction": "none",
    "correction_min": None,
    "correction_max": None,
    "m2_threshold": None,
}
AGGREGATIONS = {
    "luspo": "seq_mean_token_sum",
    "cispo": "token_mean",
    "vespo": "token_mean",
    "gspo": "seq_mean_token_mean",
}


def test_names_and_registry_agree() -> None:
    assert objective_names() == (
        "grpo",
        "gspo",
        "gmpo",
        "sapo",
        "sspo",
        "cispo",
        "dppo_tv",
        "dppo_kl",
        "vespo",
        "luspo",
    )
    assert set(OBJECTIVES) == set(objective_names())
    assert set(SSPO_LOG_GATES) == set(typing.get_args(SspoConfig.model_fields["gate"].annotation))


@pytest.mark.parametrize("name", sorted(SPEC_DEFAULTS))
def test_defaults_are_the_spec_defaults(name: str) -> None:
    config = parse_objective_config({"name": name})
    assert config.model_dump() == {"name": name, **COMMON_DEFAULTS, **SPEC_DEFAULTS[name]}


@pytest.mark.parametrize("name", sorted(AGGREGATIONS))
def test_aggregation_is_the_agg_key_or_the_objectives_own(name: str) -> None:
    assert build_objective({"name": name}).aggregation == AGGREGATIONS[name]


@pytest.mark.parametrize(
    ("correction", "bounds"),
    [
        ("token_truncate", (None, 2.0)),
        ("sequence_truncate", (None, 2.0)),
        ("token_mask", (0.5, 5.0)),
        ("sequence_mask", (0.5, 2.0)),
    ],
)
def test_a_correction_bound_left_out_takes_the_modes_default(correction: str, bounds: tuple) -> None:
    config = parse_objective_config({"name": "sspo", "correction": correction})
    assert (config.correction_min, config.correction_max) == bounds
    # a bound given as null is absent, and stays absent through a dump and back
    one_sided = parse_objective_config({"name": "grpo", "correction": "token_mask", "correction_min": None})
    assert (one_sided.correction_min, one_sided.correction_max) == (None, 5.0)
    assert parse_objective_config(one_sided) == one_sided
    given = parse_objective_config({"name": "gmpo", "correction": correction, "correction_max": 3.0})
    assert given.correction_max == 3.0 and given.correction_min == bounds[0]


@pytest.mark.parametrize("model", list(OBJECTIVE_CONFIGS.values()))
def test_every_field_is_documented(model: type[BaseModel]) -> None:
    for field_name, field in model.model_fields.items():
        assert field.description and len(field.description) > 10, field_name


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"name": "ppo"}, "name"),
        ({}, "name"),
        ({"name": "sspo", "temperature": 1.0}, "temperature"),
        ({"name": "grpo", "tau_pos": 1.0}, "tau_pos"),  # a valid key of another objective
        ({"name": "sspo", "tau_pos": 0.0}, "tau_pos"),
        ({"name": "sapo", "tau_neg": -1.0}, "tau_neg"),
        ({"name": "sspo", "tau_pos": 1000.0}, "tau_pos"),
        ({"name": "sspo", "gate": "tanh"}, "gate"),
        ({"name": "grpo", "eps_low": 0.0}, "eps_low"),
        ({"name": "grpo", "eps_low": 1.0}, "eps_low"),
        ({"name": "grpo", "eps_high": -0.1}, "eps_high"),
        ({"name": "grpo", "agg": "sum"}, "agg"),
        ({"name": "gspo", "eps_high": 0.0}, "eps_high"),
        ({"name": "gmpo", "eps_low": -0.4}, "eps_low"),
        ({"name": "gmpo", "eps_high": 11.0}, "eps_high"),
        ({"name": "gmpo", "beta": -0.1}, "beta"),
        ({"name": "sspo", "beta": float("nan")}, "beta"),
        ({"name": "sspo", "log_ratio_clamp": 0.0}, "log_ratio_clamp"),
        ({"name": "sspo", "log_ratio_clamp": float("inf")}, "log_ratio_clamp"),
        ({"name": "sspo", "saturation_threshold": 0.0}, "saturation_threshold"),
        ({"name": "sspo", "tau_pos": "warm"}, "tau_pos"),
        # the 2026 baselines and corrections (spec: "API additions")
        ({"name": "cispo", "eps_low": 0.0}, "eps_low"),
        ({"name": "cispo", "eps_low": 1.5}, "eps_low"),
        ({"name": "cispo", "eps_high": 0.0}, "eps_high"),
        ({"name": "cispo", "agg": "seq_mean_token_sum"}, "agg"),
        ({"name": "dppo_tv", "delta_low": 0.0}, "delta_low"),
        ({"name": "dppo_kl", "delta_high": -0.1}, "delta_high"),
        ({"name": "dppo_tv", "ratio_cap": 0.0}, "ratio_cap"),
        ({"name": "vespo", "k_pos": -1.0}, "k_pos"),
        ({"name": "vespo", "k_neg": -0.5}, "k_neg"),
        ({"name": "vespo", "lambda_pos": 0.0}, "lambda_pos"),
        ({"name": "vespo", "lambda_neg": -2.0}, "lambda_neg"),
        ({"name": "luspo", "agg": "token_mean"}, "agg"),
        ({"name": "luspo", "eps_low": 1.0}, "eps_low"),
        ({"name": "grpo", "m2_threshold": 0.0}, "m2_threshold"),
        ({"name": "sspo", "m2_threshold": -0.04}, "m2_threshold"),
        ({"name": "sspo", "correction": "token_clip"}, "correction"),
        ({"name": "sspo", "correction": "token_truncate", "correction_max": 0.0}, "correction_max"),
        ({"name": "grpo", "correction": "token_mask", "correction_min": -0.5}, "correction_min"),
        ({"name": "grpo", "correction": "token_mask", "correction_min": 2.0, "correction_max": 2.0}, "correction_min"),
        ({"name": "gspo", "correction": "sequence_mask", "correction_min": 3.0}, "correction_min"),  # 3 >= default 2
        (
            {"name": "cispo", "correction": "token_mask", "correction_min": None, "correction_max": None},
            "correction",
        ),
        ({"name": "vespo", "correction": "sequence_truncate"}, "correction"),
        ({"name": "vespo", "correction": "sequence_mask"}, "correction"),
        ({"name": "dppo_kl", "eps_low": 0.2}, "eps_low"),  # a key of another objective
    ],
)
def test_bad_configs_raise_value_error_naming_the_key(config: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        parse_objective_config(config)
    with pytest.raises(ValueError, match=key):
        build_objective(config)


def test_build_objective_accepts_a_dict_or_the_model() -> None:
    from_dict = build_objective({"name": "sspo", "gate": "erf", "tau_neg": 2.0})
    from_model = build_objective(SspoConfig(gate="erf", tau_neg=2.0))
    assert from_dict.config == from_model.config
    assert from_model.name == "sspo"
    assert isinstance(from_dict.config, SspoConfig)


def test_a_model_changed_without_validation_is_validated_again() -> None:
    config = GrpoConfig().model_copy(update={"eps_low": 5.0})  # model_copy skips validation
    with pytest.raises(ValueError, match="eps_low"):
        build_objective(config)


def test_assignment_is_validated() -> None:
    config = SapoConfig()
    with pytest.raises(ValueError, match="tau_pos"):
        config.tau_pos = -1.0


def test_another_pydantic_model_is_read_through_its_fields() -> None:
    class Foreign(BaseModel):
        name: str = "gmpo"
        eps_low: float = 0.3

    assert parse_objective_config(Foreign()) == GmpoConfig(eps_low=0.3)


def test_config_module_does_not_import_torch() -> None:
    code = (
        "import sys, sspo_cli.objectives, sspo_cli.objectives.config as c;"
        "c.parse_objective_config({'name': 'sspo'});"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=".")
