"""The five policy objectives of the spec, one small pure function each, and their registry.

Each objective maps a batch to its policy weight ``w``, from which

    J_b = mean_t(w[b,t]) * A_b     (token-level: grpo, sapo)
    J_b = w_b * A_b                (sequence-level: gspo, gmpo, sspo)

and the loss is -(1/B') * sum_b J_b (see ``core.py`` for aggregation and the KL term).
Writing every objective as "weight times advantage" lets one code path compute the loss,
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
    GmpoConfig,
    GrpoConfig,
    GspoConfig,
    SapoConfig,
    SspoConfig,
)


@dataclass(frozen=True)
class PolicyWeight:
    """``w`` such that J_b = mean_t(w) * A_b (``per_token``, [B, T]) or w_b * A_b ([B])."""

    value: Tensor
    per_token: bool


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


def k3(log_ratio: Tensor) -> Tensor:
    """k3 = exp(x) - x - 1 for a log-ratio x, written as expm1(x) - x to avoid cancellation."""
    return torch.expm1(log_ratio) - log_ratio
