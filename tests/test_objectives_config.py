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
}
COMMON_DEFAULTS = {"beta": 0.0, "log_ratio_clamp": 20.0, "saturation_threshold": 0.1}


def test_names_and_registry_agree() -> None:
    assert objective_names() == ("grpo", "gspo", "gmpo", "sapo", "sspo")
    assert set(OBJECTIVES) == set(objective_names())
    assert set(SSPO_LOG_GATES) == set(typing.get_args(SspoConfig.model_fields["gate"].annotation))


@pytest.mark.parametrize("name", sorted(SPEC_DEFAULTS))
def test_defaults_are_the_spec_defaults(name: str) -> None:
    config = parse_objective_config({"name": name})
    assert config.model_dump() == {"name": name, **COMMON_DEFAULTS, **SPEC_DEFAULTS[name]}


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
