"""The policy objectives of the spec, one small pure function each, and their registry.

Each objective maps a batch to its policy weight ``w``, from which

    J_b = mean_t(w[b,t]) * A_b            (token-level: grpo, sapo)
    J_b = w_b * A_b                       (sequence-level: gspo, gmpo, sspo, luspo)
    u[b,t] = sg(w[b,t]) * A_b * logp[b,t] (REINFORCE form, ``surrogate``: cispo, dppo_*, vespo)

and the loss aggregates them (see ``core.py`` for aggregation, the sampler correction and the KL
term). Writing every objective as "weight times advantage" lets one code path compute the loss,
the gradient weights and the diagnostics for all of them.

Adding an objective: a config model registered in ``config.py``, one function here registered
with ``@policy_weight`` (a test checks that every config has one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sspo_cli.objectives.batch import TokenBatch
from sspo_cli.objectives.config import (
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
)


@dataclass(frozen=True)
class PolicyWeight:
    """``w`` such that J_b = mean_t(w) * A_b (``per_token``, [B, T]) or w_b * A_b ([B]).

    ``surrogate``: the REINFORCE form u[b,t] = sg(w) * A_b * logp[b,t] (per token); only its gradient
    sg(w) * A_b * grad logp has meaning. ``truncated`` [B, T] marks the tokens whose ratio weight a bound
    cut without zeroing their gradient. ``includes_correction``: ``w`` already holds the sampler
    correction (vespo), which the loss must not multiply in again.
    """

    value: Tensor
    per_token: bool
    surrogate: bool = False
    truncated: Tensor | None = None
    includes_correction: bool = False


ObjectiveFunction = Callable[[Any, TokenBatch], PolicyWeight]

OBJECTIVES: dict[str, ObjectiveFunction] = {}
"""Each objective's policy weight, by objective name."""


def policy_weight(config: type[BaseObjectiveConfig]) -> Callable[[ObjectiveFunction], ObjectiveFunction]:
    """Decorator: the function is the policy weight of the objective whose config model is `config`."""

    def register(function: ObjectiveFunction) -> ObjectiveFunction:
        OBJECTIVES[config.model_fields["name"].default] = function
        return function

    return register


def log_sigmoid(x: Tensor) -> Tensor:
    """log(sigma(x)) = -softplus(-x), stable for any x.

    Same values and gradient as ``F.logsigmoid``, whose CPU kernel is tens of times slower on
    the small tensors of a CPU run. Above the threshold softplus(y) is taken as y, off by at
    most log1p(exp(-50)) ~ 2e-22.
    """
    return -F.softplus(-x, threshold=50.0)


def pessimistic_clip(ratio: Tensor, eps_low: float, eps_high: float, advantages: Tensor) -> Tensor:
    """min(x*A, clip(x, 1-eps_low, 1+eps_high)*A) / A: the PPO clip written as a weight.

    Dividing by A flips min to max for negative advantages, so ``weight * A`` reproduces the
    PPO term exactly, gradient included. ``advantages`` must broadcast against ``ratio``.
    """
    clipped = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    return torch.where(advantages >= 0, torch.minimum(ratio, clipped), torch.maximum(ratio, clipped))


@policy_weight(GrpoConfig)
def grpo(config: GrpoConfig, batch: TokenBatch) -> PolicyWeight:
    """u[b,t] = min(r*A_b, clip(r, 1-eps_low, 1+eps_high)*A_b); token weight u/A_b."""
    advantages = batch.advantages[:, None]
    weight = pessimistic_clip(batch.ratio, config.eps_low, config.eps_high, advantages)
    return PolicyWeight(weight, per_token=True)


@policy_weight(GspoConfig)
def gspo(config: GspoConfig, batch: TokenBatch) -> PolicyWeight:
    """s_b = exp(mean_t(d)); J_b = min(s_b*A_b, clip(s_b, 1-eps_low, 1+eps_high)*A_b)."""
    sequence_ratio = torch.exp(batch.sequence_log_ratio())
    weight = pessimistic_clip(sequence_ratio, config.eps_low, config.eps_high, batch.advantages)
    return PolicyWeight(weight, per_token=False)


@policy_weight(GmpoConfig)
def gmpo(config: GmpoConfig, batch: TokenBatch) -> PolicyWeight:
    """k = sign(A_b); l = k*min(k*d, k*clamp(d, -eps_low, eps_high)); w_b = exp(mean_t(l))."""
    d = batch.log_ratio
    k = torch.sign(batch.advantages)[:, None]
    clipped_log_ratio = k * torch.minimum(k * d, k * d.clamp(-config.eps_low, config.eps_high))
    return PolicyWeight(torch.exp(batch.mean_t(clipped_log_ratio)), per_token=False)


@policy_weight(SapoConfig)
def sapo(config: SapoConfig, batch: TokenBatch) -> PolicyWeight:
    """f(r) = (4/tau_b) * sigma(tau_b*(r-1)); J_b = mean_t(f(r)) * A_b."""
    tau = batch.temperature(config.tau_pos, config.tau_neg)
    ratio_minus_one = torch.expm1(batch.log_ratio)  # r - 1, accurate near on-policy
    # sigma = exp(logsigmoid): same value, but its gradient sigma(x)*sigma(-x) does not
    # round to exactly 0 for large x as torch.sigmoid's sigma*(1 - sigma) does.
    gate = torch.exp(log_sigmoid(tau * ratio_minus_one))
    return PolicyWeight(4.0 / tau * gate, per_token=True)


# SSPO's token gates, as log g(d, tau) with d the clamped log-ratio and tau = tau_b [B, 1].
LogGate = Callable[[Tensor, Tensor], Tensor]


def sigmoid_log_gate(d: Tensor, tau: Tensor) -> Tensor:
    """log g = log(4/tau) + logsigmoid(tau*(r-1)), r = exp(d) (the SAPO gate); w on-policy 2/tau."""
    return torch.log(4.0 / tau) + log_sigmoid(tau * torch.expm1(d))


def arctan_log_gate(d: Tensor, tau: Tensor) -> Tensor:
    """log g = arctan(tau*d) / tau (a gate on the log-ratio); w on-policy 1."""
    return torch.atan(tau * d) / tau


def erf_log_gate(d: Tensor, tau: Tensor) -> Tensor:
    """log g = sqrt(pi)/(2*tau) * erf(tau*d); w on-policy 1."""
    return math.sqrt(math.pi) / (2.0 * tau) * torch.erf(tau * d)


def softsign_log_gate(d: Tensor, tau: Tensor) -> Tensor:
    """log g = d / (1 + tau*abs(d)); w on-policy 1."""
    return d / (1.0 + tau * d.abs())


SSPO_LOG_GATES: dict[str, LogGate] = {
    "sigmoid": sigmoid_log_gate,
    "arctan": arctan_log_gate,
    "erf": erf_log_gate,
    "softsign": softsign_log_gate,
}


@policy_weight(SspoConfig)
def sspo(config: SspoConfig, batch: TokenBatch) -> PolicyWeight:
    """w_b = exp(mean_t(log g[b,t])), the geometric mean of the token gates; J_b = w_b * A_b."""
    tau = batch.temperature(config.tau_pos, config.tau_neg)
    log_gate = SSPO_LOG_GATES[config.gate](batch.log_ratio, tau)
    return PolicyWeight(torch.exp(batch.mean_t(log_gate)), per_token=False)


# --------------------------------------------------------------------------- 2026 baselines


@policy_weight(CispoConfig)
def cispo(config: CispoConfig, batch: TokenBatch) -> PolicyWeight:
    """u = sg(clamp(r, 1-eps_low, 1+eps_high)) * A_b * logp; a lower bound at or below 0 is no bound."""
    ratio = batch.ratio.detach()
    low = 1.0 - config.eps_low
    high = 1.0 + config.eps_high
    weight = ratio.clamp(min=low if low > 0 else None, max=high)
    truncated = (ratio > high) | (ratio < low)
    return PolicyWeight(weight, per_token=True, surrogate=True, truncated=truncated)


def dppo_weight(batch: TokenBatch, ratio_cap: float, valid: Tensor) -> PolicyWeight:
    """u = sg(min(r, ratio_cap)) * valid * A_b * logp."""
    ratio = batch.ratio.detach()
    weight = ratio.clamp(max=ratio_cap) * valid.to(ratio.dtype)
    return PolicyWeight(weight, per_token=True, surrogate=True, truncated=ratio > ratio_cap)


def token_probabilities(batch: TokenBatch) -> tuple[Tensor, Tensor]:
    """p = exp(logp), p_old = exp(old_logp): unclamped, no grad."""
    return torch.exp(batch.logp.detach()), torch.exp(batch.old_logp)


@policy_weight(DppoTvConfig)
def dppo_tv(config: DppoTvConfig, batch: TokenBatch) -> PolicyWeight:
    """valid = [p - p_old <= delta_high] if A_b > 0 else [p - p_old >= -delta_low]."""
    p, p_old = token_probabilities(batch)
    positive = batch.advantages[:, None] > 0
    valid = torch.where(positive, p - p_old <= config.delta_high, p - p_old >= -config.delta_low)
    return dppo_weight(batch, config.ratio_cap, valid)


@policy_weight(DppoKlConfig)
def dppo_kl(config: DppoKlConfig, batch: TokenBatch) -> PolicyWeight:
    """kl_bin = p_old*(old_logp - logp) + (1-p_old)*log((1-p_old+1e-8)/(1-p+1e-8));
    valid = [kl_bin <= delta_high or p <= p_old] if A_b > 0 else [kl_bin <= delta_low or p >= p_old]."""
    p, p_old = token_probabilities(batch)
    logp, old_logp = batch.logp.detach(), batch.old_logp
    kl_bin = p_old * (old_logp - logp) + (1.0 - p_old) * torch.log((1.0 - p_old + 1e-8) / (1.0 - p + 1e-8))
    positive = batch.advantages[:, None] > 0
    valid = torch.where(
        positive, (kl_bin <= config.delta_high) | (p <= p_old), (kl_bin <= config.delta_low) | (p >= p_old)
    )
    return dppo_weight(batch, config.ratio_cap, valid)


VESPO_LOG_FLOOR = math.log(1e-8)


@policy_weight(VespoConfig)
def vespo(config: VespoConfig, batch: TokenBatch) -> PolicyWeight:
    """lw_b = clamp(sum_t d [+ sum_t clamp(log c, ln 1e-8, C)], ln 1e-8, C), w_b = exp(lw_b),
    phi_b = exp(lambda_b + k_b*lw_b - lambda_b*w_b) (0 if not finite); u = sg(phi_b) * A_b * logp."""
    clamp = config.log_ratio_clamp
    log_weight = batch.sum_t(batch.log_ratio.detach())
    if batch.correction is not None:  # a token-level correction, folded in (config refuses sequence modes)
        log_weight = log_weight + batch.sum_t(torch.log(batch.correction).clamp(VESPO_LOG_FLOOR, clamp))
    log_weight = log_weight.clamp(VESPO_LOG_FLOOR, clamp)
    non_negative = batch.advantages >= 0
    k = torch.full_like(log_weight, config.k_neg).masked_fill(non_negative, config.k_pos)
    rate = torch.full_like(log_weight, config.lambda_neg).masked_fill(non_negative, config.lambda_pos)
    phi = torch.exp(rate + k * log_weight - rate * torch.exp(log_weight))
    phi = torch.where(torch.isfinite(phi), phi, 0.0)
    return PolicyWeight(
        phi[:, None].expand_as(batch.log_ratio), per_token=True, surrogate=True, includes_correction=True
    )


@policy_weight(LuspoConfig)
def luspo(config: LuspoConfig, batch: TokenBatch) -> PolicyWeight:
    """GSPO's clipped sequence weight; the seq_mean_token_sum aggregation makes J_b = L_b * w_b * A_b."""
    sequence_ratio = torch.exp(batch.sequence_log_ratio())
    weight = pessimistic_clip(sequence_ratio, config.eps_low, config.eps_high, batch.advantages)
    return PolicyWeight(weight, per_token=False)


def k3(log_ratio: Tensor) -> Tensor:
    """k3 = exp(x) - x - 1 for a log-ratio x, written as expm1(x) - x to avoid cancellation."""
    return torch.expm1(log_ratio) - log_ratio
