"""Group-based policy objectives (SSPO, GRPO, GSPO, GMPO, SAPO; CISPO, DPPO, VESPO, LUSPO), the sampler
correction and M2PO mask every objective takes, and their diagnostics.

The normative contract is the objectives spec (see docs/objectives.md). Importing this
package does not import torch; ``build_objective``, ``Objective``, ``ObjectiveOutput`` and
``compute_advantages`` are loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sspo_cli.objectives.config import (
    OBJECTIVE_CONFIGS,
    BaseObjectiveConfig,
    CispoConfig,
    DppoKlConfig,
    DppoTvConfig,
    GmpoConfig,
    GrpoConfig,
    GspoConfig,
    LuspoConfig,
    SapoConfig,
    SspoConfig,
    VespoConfig,
    objective_config_union,
    objective_names,
    parse_objective_config,
    register_objective,
)
from sspo_cli.objectives.metric_keys import CORRECTION_METRIC_KEYS, METRIC_KEYS, STALENESS_METRIC_KEYS

if TYPE_CHECKING:
    from sspo_cli.objectives.advantages import compute_advantages
    from sspo_cli.objectives.core import Objective, ObjectiveOutput, build_objective

_LAZY_ATTRIBUTES = {
    "build_objective": "sspo_cli.objectives.core",
    "Objective": "sspo_cli.objectives.core",
    "ObjectiveOutput": "sspo_cli.objectives.core",
    "compute_advantages": "sspo_cli.objectives.advantages",
}

__all__ = [
    "CORRECTION_METRIC_KEYS",
    "METRIC_KEYS",
    "OBJECTIVE_CONFIGS",
    "STALENESS_METRIC_KEYS",
    "BaseObjectiveConfig",
    "CispoConfig",
    "DppoKlConfig",
    "DppoTvConfig",
    "GmpoConfig",
    "GrpoConfig",
    "GspoConfig",
    "LuspoConfig",
    "Objective",
    "ObjectiveOutput",
    "SapoConfig",
    "SspoConfig",
    "VespoConfig",
    "build_objective",
    "compute_advantages",
    "objective_config_union",
    "objective_names",
    "parse_objective_config",
    "register_objective",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY_ATTRIBUTES.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
