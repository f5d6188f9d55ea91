"""SSPO, GMPO, VESPO and LUSPO as verl 0.9 policy losses, computed by ``build_objective``. No verl import here.

verl's actor calls a registered policy loss once per micro-batch, with keywords:

    loss, metrics = fn(old_log_prob=[B,T], log_prob=[B,T], advantages=[B,T], response_mask=[B,T],
                       loss_agg_mode=str, config=ActorConfig, rollout_is_weights=[B,T] | None)

and adds its own entropy and KL terms to ``loss``. The function made here maps that call onto the spec:

- one advantage per completion: each row's value, which must be constant over its counted tokens
  (outcome advantages such as GRPO's); anything else is refused rather than averaged;
- verl's ``loss_agg_mode`` is the spec's ``agg`` where the two mean the same, and refused otherwise;
- verl's global-batch normalisation (``config.global_batch_info``), so that the micro-batches and data-parallel
  ranks of a mini-batch add up to the loss of the whole mini-batch;
- rollout importance weights as one factor per completion, the geometric mean of its token weights;
- the spec's diagnostics as the metrics, under the spec's keys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache, lru_cache
from typing import Any, get_args

import torch
from pydantic import ValidationError
from torch import Tensor

from sspo_cli.objectives import OBJECTIVE_CONFIGS, Objective, build_objective

VERL_LOSS_MODES: tuple[str, ...] = ("sspo", "gmpo", "vespo", "luspo")
"""Our objectives registered as verl ``loss_mode``s: those verl lacks. verl's own grpo-like ``vanilla``, ``gspo``,
``sapo``, ``cispo``, ``dppo_tv`` and ``dppo_kl`` match ours (docs/engines.md); its ``geo_mean`` is GMPO normalised
per micro-batch, hence our ``gmpo``."""

FOLDED_ROLLOUT_WEIGHT = frozenset({"vespo"})
"""Objectives whose spec folds a sampler weight into their own weight (not onto the advantage, as here)."""

ACTOR = "actor_rollout_ref.actor"

ACTOR_KEYS: dict[str, str] = {
    "tau_pos": "tau_pos",
    "tau_neg": "tau_neg",
    "eps_low": "clip_ratio_low",
    "eps_high": "clip_ratio_high",
}
"""Our objective key -> the verl actor key it is read from (an objective reads those its config has)."""

POLICY_LOSS_KEYS: tuple[str, ...] = (
    "gate",
    "log_ratio_clamp",
    "saturation_threshold",
    "k_pos",
    "lambda_pos",
    "k_neg",
    "lambda_neg",
)
"""Our keys that verl's strict ActorConfig lacks: fields of ``verl_plugin.SspoPolicyLossConfig`` under
``actor_rollout_ref.actor.policy_loss``; unset (None) means the objective's default."""

AGGREGATIONS: dict[str, str] = {
    "seq-mean-token-mean": "seq_mean_token_mean",
    "token-mean": "token_mean",
    "seq-mean-token-sum": "seq_mean_token_sum",
}
"""verl loss_agg_mode -> the spec's aggregation of the same meaning (seq-mean-token-sum is luspo's). verl's
token-sum and seq-mean-token-sum-norm weigh completions by a constant: no objective of the spec aggregates so."""

GLOBAL_NORMALISERS: dict[str, str] = {
    "seq_mean_token_mean": "global_batch_size",
    "token_mean": "batch_num_tokens",
    "seq_mean_token_sum": "global_batch_size",
}
"""The spec's aggregation -> the ``global_batch_info`` entry that counts its normaliser over the mini-batch."""

ADVANTAGE_RTOL, ADVANTAGE_ATOL = 1e-5, 1e-6
"""How far a row's token advantages may differ from its first counted token's and still be one advantage."""

PolicyLoss = Callable[..., tuple[Tensor, dict[str, float]]]


class VerlSettingError(ValueError):
    """A verl setting or input that SSPO's loss refuses; the message names the verl key."""


def verl_key(key: str) -> str:
    """Where one of our objective keys is set in a verl launch."""
    if key in ACTOR_KEYS:
        return f"{ACTOR}.{ACTOR_KEYS[key]}"
    if key in POLICY_LOSS_KEYS:
        return f"{ACTOR}.policy_loss.{key}"
    return f"{ACTOR}.loss_agg_mode" if key == "agg" else key


@cache
def aggregations_of(loss_mode: str) -> tuple[str, ...]:
    """The spec's aggregations an objective takes: its ``agg`` choices, else its one fixed aggregation."""
    config = OBJECTIVE_CONFIGS[loss_mode]
    field = config.model_fields.get("agg")
    return get_args(field.annotation) if field is not None else (config(name=loss_mode).aggregation,)


def spec_aggregation(loss_mode: str, loss_agg_mode: str) -> str:
    """The spec's aggregation for verl's loss_agg_mode, or VerlSettingError where they differ in meaning."""
    allowed = aggregations_of(loss_mode)
    aggregation = AGGREGATIONS.get(loss_agg_mode)
    if aggregation not in allowed:
        choices = " or ".join(mode for mode, spec in AGGREGATIONS.items() if spec in allowed)
        raise VerlSettingError(
            f"{ACTOR}.loss_agg_mode={loss_agg_mode!r} conflicts with loss_mode={loss_mode}, whose loss is the "
            f"spec's {' or '.join(allowed)}; set {ACTOR}.loss_agg_mode={choices}"
        )
    return aggregation


def objective_settings(loss_mode: str, config: Mapping[str, Any], aggregation: str) -> dict[str, Any]:
    """The ``build_objective`` dict a verl actor config means for one of our objectives."""
    fields = OBJECTIVE_CONFIGS[loss_mode].model_fields
    settings: dict[str, Any] = {"name": loss_mode}
    for key, actor_key in ACTOR_KEYS.items():
        if key in fields:
            value = config.get(actor_key)
            # verl's own losses fall back on clip_ratio for an unset bound; so do we.
            settings[key] = config.get("clip_ratio") if value is None and actor_key.startswith("clip_ratio") else value
    policy_loss = config.get("policy_loss") or {}
    settings |= {key: policy_loss.get(key) for key in POLICY_LOSS_KEYS if policy_loss.get(key) is not None}
    if "agg" in fields:
        settings["agg"] = aggregation
    return settings


@lru_cache(maxsize=64)
def _objective(settings: tuple[tuple[str, Any], ...]) -> Objective:
    try:
        return build_objective(dict(settings))
    except ValidationError as error:
        problems = "; ".join(f"{verl_key(str(e['loc'][-1]))}: {e['msg']}" for e in error.errors())
        raise VerlSettingError(f"loss_mode={dict(settings)['name']}: {problems}") from None


def objective_for(loss_mode: str, config: Mapping[str, Any], aggregation: str) -> Objective:
    """Our objective for a verl actor config; a bad value raises VerlSettingError naming the verl key."""
    return _objective(tuple(sorted(objective_settings(loss_mode, config, aggregation).items())))


def check_policy_loss_keys(loss_mode: str, values: Mapping[str, Any]) -> None:
    """Validate our policy_loss keys where verl builds its config (at launch, not at the first update)."""
    if loss_mode not in VERL_LOSS_MODES:
        raise VerlSettingError(
            f"{ACTOR}.policy_loss: SspoPolicyLossConfig serves loss_mode {' or '.join(VERL_LOSS_MODES)}, not "
            f"{loss_mode!r}: set {ACTOR}.policy_loss.loss_mode"
        )
    set_values = {key: value for key, value in values.items() if value is not None}
    _objective(tuple(sorted({"name": loss_mode, **set_values}.items())))


def sequence_advantages(advantages: Tensor, mask: Tensor, loss_mode: str) -> Tensor:
    """[B, T] -> [B]: each completion's advantage, which must be the same on all its counted tokens (0 if none)."""
    if advantages.shape != mask.shape:
        raise VerlSettingError(f"advantages {tuple(advantages.shape)} and response_mask {tuple(mask.shape)} differ")
    if mask.shape[-1] == 0:
        return advantages.new_zeros(mask.shape[:1])
    first = advantages.gather(-1, mask.float().argmax(-1, keepdim=True)).squeeze(-1)
    first = torch.where(mask.any(-1), first, 0.0)
    spread = torch.where(mask, (advantages - first[:, None]).abs(), 0.0).amax(-1)
    excess = spread - (ADVANTAGE_ATOL + ADVANTAGE_RTOL * first.abs())
    if bool((excess > 0).any()):
        row = int(excess.argmax())
        raise VerlSettingError(
            f"loss_mode={loss_mode} takes one advantage per completion, but completion {row}'s token advantages "
            f"differ by up to {float(spread[row]):.3g}: set algorithm.adv_estimator to an outcome estimator "
            "(grpo, rloo, ...)"
        )
    return first


def sequence_weights(rollout_is_weights: Tensor, mask: Tensor) -> Tensor:
    """[B, T] -> [B]: exp(mean_t log rho), the geometric mean of a completion's token weights.

    A sequence-level weight (rollout_is=sequence, broadcast over the tokens) comes back as it is; a token weight of
    0 (IcePop's rejection) zeroes its completion, whose weight is one product over all tokens.
    """
    log_weights = torch.log(torch.where(mask, rollout_is_weights.detach(), 1.0))
    return torch.exp(log_weights.sum(-1) / mask.sum(-1).clamp(min=1))


def global_scale(objective: Objective, aggregation: str, mask: Tensor, batch_info: Mapping[str, Any]) -> Tensor | float:
    """normaliser(micro-batch) * dp_size / normaliser(mini-batch): turns the micro-batch loss into its share of the
    mini-batch loss (gradients add over micro-batches; data-parallel ranks average theirs)."""
    dp_size = batch_info.get("dp_size") or 1
    key = GLOBAL_NORMALISERS[aggregation]
    total = batch_info.get(key)
    if total is None:
        if dp_size > 1:
            raise VerlSettingError(f"{objective.name}: dp_size={dp_size} needs global_batch_info[{key!r}]")
        return 1.0
    return objective.normaliser(mask).to(torch.float64) * dp_size / total


def verl_policy_loss(loss_mode: str) -> PolicyLoss:
    """The verl policy-loss function of one of our objectives (``VERL_LOSS_MODES``)."""

    def policy_loss(
        old_log_prob: Tensor,
        log_prob: Tensor,
        advantages: Tensor,
        response_mask: Tensor,
        loss_agg_mode: str = "seq-mean-token-mean",
        config: Mapping[str, Any] | None = None,
        rollout_is_weights: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, float]]:
        if config is None:
            raise VerlSettingError(f"loss_mode={loss_mode} reads its settings from the actor config; none was passed")
        aggregation = spec_aggregation(loss_mode, loss_agg_mode)
        objective = objective_for(loss_mode, config, aggregation)
        mask = response_mask.bool()
        sequence_advantage = sequence_advantages(advantages, mask, loss_mode)
        # J_b(c * A_b) = c * J_b(A_b) for c >= 0 in every objective of the spec: the weight rides on the advantage.
        weighted = sequence_advantage
        if rollout_is_weights is not None and loss_mode in FOLDED_ROLLOUT_WEIGHT:
            raise VerlSettingError(
                f"loss_mode={loss_mode} folds the sampler weight into its own sequence weight, which verl's "
                "rollout_is_weights cannot do here: set algorithm.rollout_correction.rollout_is=null"
            )
        if rollout_is_weights is not None:
            weighted = sequence_advantage * sequence_weights(rollout_is_weights, mask).to(sequence_advantage.dtype)
        loss = objective.loss(log_prob, old_log_prob, weighted, mask)
        scale = global_scale(objective, aggregation, mask, config.get("global_batch_info") or {})
        loss = loss * torch.as_tensor(scale, dtype=loss.dtype, device=loss.device)
        return loss, objective.metrics(log_prob, old_log_prob, sequence_advantage, mask)

    policy_loss.__name__ = policy_loss.__qualname__ = f"{loss_mode}_policy_loss"
    policy_loss.__doc__ = f"verl loss_mode={loss_mode}: sspo_cli's {loss_mode} objective (see sspo_cli.integrations)."
    return policy_loss
