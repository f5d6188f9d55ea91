"""Objective configs: one Pydantic model per objective, discriminated by ``name``, and the one
list of objectives.

These models are the single source of truth for parameter names, defaults, valid ranges
and user docs (each ``Field(description=...)``). Recipes embed them as they are.
This module must not import torch: ``sspo validate`` imports it and answers in milliseconds.

``@register_objective`` puts a config model on ``OBJECTIVE_CONFIGS``, the list every other
list derives from: the recipe's ``objective`` union, ``sspo compare``'s default methods, the
tests' parametrisations. An objective's policy weight is registered beside its formula
(``formulas.policy_weight``). Adding an objective: a config model here, a function there.

Range choices beyond the spec's "> 0" (documented in docs/objectives.md):
- ratio-space epsilons (grpo, gspo): ``0 < eps_low < 1`` so the lower clip bound
  ``1 - eps_low`` stays a positive ratio; ``0 < eps_high <= 10``.
- log-space epsilons (gmpo): ``0 < eps <= 10`` (a ratio band of at most e^-10..e^10).
- temperatures: ``0 < tau <= 100`` (at 100 a soft gate is already a near-hard clip).
- ``log_ratio_clamp``: ``0 < C <= 40`` so that ``exp(C)**2`` (inside the ratio std) stays
  finite in float32.
- ``saturation_threshold``: ``0 < threshold <= 1``; the on-policy gradient weight is 1.

The 2026 objectives (cispo, dppo_tv, dppo_kl, vespo, luspo) and the sampler correction keys take the
spec's ranges as they are ("2026 baselines and off-policy corrections", API additions).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

_RATIO_EPS_LOW = dict(gt=0.0, lt=1.0)
_RATIO_EPS_HIGH = dict(gt=0.0, le=10.0)
_LOG_EPS = dict(gt=0.0, le=10.0)
_TEMPERATURE = dict(gt=0.0, le=100.0)

Correction = Literal["none", "token_truncate", "sequence_truncate", "token_mask", "sequence_mask"]

CORRECTION_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "none": (None, None),
    "token_truncate": (None, 2.0),
    "sequence_truncate": (None, 2.0),
    "token_mask": (0.5, 5.0),
    "sequence_mask": (0.5, 2.0),
}
"""Each correction mode's default [correction_min, correction_max] (verl's named presets); None is no bound."""

REINFORCE_AGGREGATION = Literal["token_mean", "seq_mean_token_mean"]
_REINFORCE_AGG_DOC = (
    "Loss aggregation: 'token_mean' (default) averages over all counted tokens of the batch; "
    "'seq_mean_token_mean' averages tokens within a completion, then completions."
)

_TAU_POS_DOC = (
    "Gate temperature for completions with a positive advantage (A > 0). Larger is sharper; must be in (0, 100]."
)
_TAU_NEG_DOC = (
    "Gate temperature for completions with a non-positive advantage (A <= 0). "
    "Slightly above tau_pos by default, damping negative updates; must be in (0, 100]."
)


class BaseObjectiveConfig(BaseModel):
    """Fields every objective shares."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    beta: float = Field(
        default=0.0,
        ge=0.0,
        description=(
            "Weight of the k3 KL penalty against the frozen reference policy (needs ref_logp). 0 turns it off."
        ),
    )
    log_ratio_clamp: float = Field(
        default=20.0,
        gt=0.0,
        le=40.0,
        description=(
            "Each token's log-ratio log(pi/pi_old) is clamped to +-this value before "
            "anything is exponentiated; must be in (0, 40]."
        ),
    )
    saturation_threshold: float = Field(
        default=0.1,
        gt=0.0,
        le=1.0,
        description=(
            "A token counts as saturated (clipped) in grad_weight/saturated_frac when its "
            "gradient weight omega is below this value; must be in (0, 1]."
        ),
    )
    correction: Correction = Field(
        default="none",
        description=(
            "Sampler correction c from rho = pi_prox/mu (needs behav_logp): 'none', 'token_truncate' / "
            "'sequence_truncate' (TIS: clamp the token or sequence ratio), 'token_mask' / 'sequence_mask' "
            "(MIS, IcePop: zero the weight outside the bounds)."
        ),
    )
    correction_min: float | None = Field(
        default=None,
        gt=0.0,
        description=(
            "Lower bound of the sampler ratio (inclusive; null: none). Left out, it takes the mode's default: "
            "none for *_truncate, 0.5 for *_mask."
        ),
    )
    correction_max: float | None = Field(
        default=None,
        gt=0.0,
        description=(
            "Upper bound of the sampler ratio (inclusive; null: none). Left out, it takes the mode's default: "
            "2.0, or 5.0 for token_mask."
        ),
    )
    m2_threshold: float | None = Field(
        default=None,
        gt=0.0,
        description=(
            "M2PO: drop the tokens with the largest squared sampler log-ratio until the mean of the rest is "
            "below this value (needs behav_logp; AReaL's example uses 0.04). null: off."
        ),
    )

    default_aggregation: ClassVar[str] = "seq_mean_token_mean"
    """The aggregation of an objective without an ``agg`` key."""

    @model_validator(mode="before")
    @classmethod
    def _correction_bound_defaults(cls, data: Any) -> Any:
        """A bound left out takes the mode's default; a bound given as null stays absent."""
        if isinstance(data, dict) and data.get("correction") in CORRECTION_BOUNDS:
            low, high = CORRECTION_BOUNDS[data["correction"]]
            data = {"correction_min": low, "correction_max": high, **data}
        return data

    @model_validator(mode="after")
    def _correction_bounds(self) -> BaseObjectiveConfig:
        low, high = self.correction_min, self.correction_max
        if low is not None and high is not None and low >= high:
            raise ValueError(f"correction_min ({low}) must be below correction_max ({high})")
        if self.correction != "none" and low is None and high is None:
            raise ValueError(f"correction {self.correction!r} needs correction_min or correction_max (both are null)")
        return self

    @property
    def aggregation(self) -> str:
        """The loss aggregation: the ``agg`` key where the objective has one, else its fixed one."""
        return getattr(self, "agg", self.default_aggregation)


Config = TypeVar("Config", bound=type[BaseObjectiveConfig])

OBJECTIVE_CONFIGS: dict[str, type[BaseObjectiveConfig]] = {}
"""Every objective: its name -> its config model, in the order they were registered."""

_in_use = False  # set once a union of the configs exists: a recipe model built on it would miss later ones


def register_objective(config: Config) -> Config:
    """Class decorator: add an objective's config model; its ``name`` field's default is the objective's name.

    Register before anything builds the union (importing ``sspo_cli.recipe`` does): the recipe
    model is built once, from the objectives registered at that moment.
    """
    name = config.model_fields["name"].default
    if name in OBJECTIVE_CONFIGS:
        raise ValueError(f"objective {name!r} is registered twice")
    if _in_use:
        raise RuntimeError(
            f"objective {name!r} registered after the objective union was built (import it before sspo_cli.recipe)"
        )
    OBJECTIVE_CONFIGS[name] = config
    return config


@register_objective
class GrpoConfig(BaseObjectiveConfig):
    """GRPO: token-level PPO hard clip (Shao et al. 2024; DAPO's asymmetric bounds allowed)."""

    name: Literal["grpo"] = Field(default="grpo", description="Objective name.")
    eps_low: float = Field(
        default=0.2,
        **_RATIO_EPS_LOW,
        description="Lower clip range: ratios below 1 - eps_low are clipped; must be in (0, 1).",
    )
    eps_high: float = Field(
        default=0.2,
        **_RATIO_EPS_HIGH,
        description=("Upper clip range: ratios above 1 + eps_high are clipped (DAPO uses 0.28); must be in (0, 10]."),
    )
    agg: Literal["seq_mean_token_mean", "token_mean"] = Field(
        default="seq_mean_token_mean",
        description=(
            "Loss aggregation: 'seq_mean_token_mean' averages tokens within a completion, "
            "then completions; 'token_mean' averages over all tokens of the batch (DAPO)."
        ),
    )


@register_objective
class GspoConfig(BaseObjectiveConfig):
    """GSPO: sequence-level ratio with a hard clip (Zheng et al. 2025)."""

    name: Literal["gspo"] = Field(default="gspo", description="Objective name.")
    eps_low: float = Field(
        default=3e-4,
        **_RATIO_EPS_LOW,
        description=("Lower clip range of the sequence ratio s = exp(mean_t log-ratio); must be in (0, 1)."),
    )
    eps_high: float = Field(
        default=4e-4,
        **_RATIO_EPS_HIGH,
        description="Upper clip range of the sequence ratio; must be in (0, 10].",
    )


@register_objective
class GmpoConfig(BaseObjectiveConfig):
    """GMPO: geometric mean of token ratios with a log-space clip (Zhao et al. 2025)."""

    name: Literal["gmpo"] = Field(default="gmpo", description="Objective name.")
    eps_low: float = Field(
        default=0.4,
        **_LOG_EPS,
        description=(
            "Lower clip of the token log-ratio (log space: the ratio band is "
            "exp(-eps_low)..exp(eps_high)); must be in (0, 10]."
        ),
    )
    eps_high: float = Field(
        default=0.4,
        **_LOG_EPS,
        description="Upper clip of the token log-ratio (log space); must be in (0, 10].",
    )


@register_objective
class SapoConfig(BaseObjectiveConfig):
    """SAPO: token-level sigmoid soft gate, arithmetic mean over tokens (Gao et al. 2025)."""

    name: Literal["sapo"] = Field(default="sapo", description="Objective name.")
    tau_pos: float = Field(default=1.0, **_TEMPERATURE, description=_TAU_POS_DOC)
    tau_neg: float = Field(default=1.05, **_TEMPERATURE, description=_TAU_NEG_DOC)


@register_objective
class SspoConfig(BaseObjectiveConfig):
    """SSPO: soft token gates aggregated by a geometric mean into a sequence weight."""

    name: Literal["sspo"] = Field(default="sspo", description="Objective name.")
    gate: Literal["sigmoid", "arctan", "erf", "softsign"] = Field(
        default="sigmoid",
        description=(
            "Token gate whose log is averaged over the completion: 'sigmoid' (SAPO's gate "
            "on the ratio, default), or 'arctan', 'erf', 'softsign' (gates on the log-ratio)."
        ),
    )
    tau_pos: float = Field(default=1.0, **_TEMPERATURE, description=_TAU_POS_DOC)
    tau_neg: float = Field(default=1.05, **_TEMPERATURE, description=_TAU_NEG_DOC)


# --------------------------------------------------------------------------- 2026 baselines


@register_objective
class CispoConfig(BaseObjectiveConfig):
    """CISPO: REINFORCE with a clipped, stop-gradient token IS weight (MiniMax-M1, arXiv 2506.13585)."""

    name: Literal["cispo"] = Field(default="cispo", description="Objective name.")
    eps_low: float = Field(
        default=1.0,
        gt=0.0,
        le=1.0,
        description="The token weight is clamped at 1 - eps_low from below; 1 (default) is no lower bound. In (0, 1].",
    )
    eps_high: float = Field(
        default=4.0,
        gt=0.0,
        description="The token weight is clamped at 1 + eps_high from above (default 4: a cap of 5, TRL's recipe); > 0.",
    )
    agg: REINFORCE_AGGREGATION = Field(default="token_mean", description=_REINFORCE_AGG_DOC)


class _DppoConfig(BaseObjectiveConfig):
    """Shared fields of the two DPPO masks."""

    ratio_cap: float = Field(
        default=20.0, gt=0.0, description="The token weight is min(r, ratio_cap) (stop-gradient); > 0."
    )
    agg: REINFORCE_AGGREGATION = Field(default="token_mean", description=_REINFORCE_AGG_DOC)


@register_objective
class DppoTvConfig(_DppoConfig):
    """DPPO-TV: REINFORCE with a binary total-variation trust-region mask (arXiv 2602.04879)."""

    name: Literal["dppo_tv"] = Field(default="dppo_tv", description="Objective name.")
    delta_low: float = Field(
        default=0.15,
        gt=0.0,
        description="For A <= 0, a token is dropped when p - p_old < -delta_low (its probability fell too far); > 0.",
    )
    delta_high: float = Field(
        default=0.15, gt=0.0, description="For A > 0, a token is dropped when p - p_old > delta_high; > 0."
    )


@register_objective
class DppoKlConfig(_DppoConfig):
    """DPPO-KL: REINFORCE with a binary KL trust-region mask (arXiv 2602.04879)."""

    name: Literal["dppo_kl"] = Field(default="dppo_kl", description="Objective name.")
    delta_low: float = Field(
        default=0.05,
        gt=0.0,
        description="For A <= 0, a token whose probability fell is dropped when its binary KL exceeds this; > 0.",
    )
    delta_high: float = Field(
        default=0.05,
        gt=0.0,
        description="For A > 0, a token whose probability rose is dropped when its binary KL exceeds this; > 0.",
    )


@register_objective
class VespoConfig(BaseObjectiveConfig):
    """VESPO: REINFORCE with a gamma-shaped sequence weight phi(w) = w^k e^(lambda(1-w)) (arXiv 2602.10693)."""

    name: Literal["vespo"] = Field(default="vespo", description="Objective name.")
    k_pos: float = Field(default=2.0, ge=0.0, description="Shape k of phi for A >= 0; >= 0.")
    lambda_pos: float = Field(default=3.0, gt=0.0, description="Rate lambda of phi for A >= 0; > 0.")
    k_neg: float = Field(default=3.0, ge=0.0, description="Shape k of phi for A < 0; >= 0.")
    lambda_neg: float = Field(default=2.0, gt=0.0, description="Rate lambda of phi for A < 0; > 0.")
    agg: REINFORCE_AGGREGATION = Field(default="token_mean", description=_REINFORCE_AGG_DOC)

    @model_validator(mode="after")
    def _token_corrections_only(self) -> VespoConfig:
        if self.correction.startswith("sequence"):
            raise ValueError(
                f"correction {self.correction!r}: vespo folds the correction into its sequence weight and takes "
                "only 'token_truncate' or 'token_mask' (as TRL)"
            )
        return self


@register_objective
class LuspoConfig(BaseObjectiveConfig):
    """LUSPO: GSPO's clipped sequence ratio, summed over tokens (length-unbiased; arXiv 2602.05261)."""

    name: Literal["luspo"] = Field(default="luspo", description="Objective name.")
    eps_low: float = Field(
        default=2e-3,
        **_RATIO_EPS_LOW,
        description="Lower clip range of the sequence ratio s = exp(mean_t log-ratio); must be in (0, 1).",
    )
    eps_high: float = Field(
        default=2.5e-3, **_RATIO_EPS_HIGH, description="Upper clip range of the sequence ratio; must be in (0, 10]."
    )

    default_aggregation: ClassVar[str] = "seq_mean_token_sum"


def objective_names() -> tuple[str, ...]:
    return tuple(OBJECTIVE_CONFIGS)


def objective_config_union() -> Any:
    """Any registered objective's config; Pydantic picks the model from the ``name`` key."""
    global _in_use
    _in_use = True
    return Annotated[Union[tuple(OBJECTIVE_CONFIGS.values())], Field(discriminator="name")]


@lru_cache(maxsize=1)
def _adapter() -> TypeAdapter[Any]:
    return TypeAdapter(objective_config_union())  # no objective can be registered after this


def parse_objective_config(cfg: dict[str, Any] | BaseModel) -> BaseObjectiveConfig:
    """Validate a plain dict (or any Pydantic model) into the objective's config model.

    Raises ``pydantic.ValidationError`` (a ``ValueError``) naming the offending key for an
    unknown ``name``, an unknown key or an out-of-range value.
    """
    if isinstance(cfg, BaseModel):
        cfg = cfg.model_dump()
    return _adapter().validate_python(cfg)
