"""The sampler side of decoupled PPO (spec: "2026 baselines and off-policy corrections"): the M2PO
mask and the correction weight ``c`` from the sampler ratio ``rho = pi_prox/mu``, and their metrics.

Everything here is computed without grad from ``old_logp`` (the proximal policy) and ``behav_logp``
(the sampler), over the counted tokens of the mask as sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sspo_cli.objectives.batch import clamped_log_ratio
from sspo_cli.objectives.config import BaseObjectiveConfig
from sspo_cli.objectives.diagnostics import masked_mean, masked_min_max
from sspo_cli.objectives.metric_keys import CORRECTION_METRIC_KEYS, STALENESS_METRIC_KEYS


@dataclass(frozen=True)
class SamplerRatios:
    """The sampler log-ratio of a batch as sampled (``mask`` is the original mask)."""

    log_ratio: Tensor
    """ds[b,t] = clamp(old_logp - behav_logp, -C, C); 0 on tokens that do not count. [B, T]"""
    mask: Tensor
    """The counted tokens as sampled (before M2PO). [B, T], bool"""
    clamp: float

    @classmethod
    def from_log_probs(cls, old_logp: Tensor, behav_logp: Tensor, mask: Tensor, clamp: float) -> SamplerRatios:
        return cls(clamped_log_ratio(old_logp, behav_logp, mask, clamp), mask, clamp)

    @property
    def token(self) -> Tensor:
        """rho = exp(ds). [B, T]"""
        return torch.exp(self.log_ratio)

    @property
    def sequence(self) -> Tensor:
        """rho_seq_b = exp(clamp(sum_t mask*ds, -C, C)), a product over tokens. [B]"""
        return torch.exp(self.log_ratio.sum(-1).clamp(-self.clamp, self.clamp))

    def at_level(self, correction: str) -> Tensor:
        """The ratio the mode bounds: rho per token, or rho_seq_b broadcast to its tokens. [B, T]"""
        if correction.startswith("sequence"):
            return self.sequence[:, None].expand_as(self.log_ratio)
        return self.token


def correction_weight(config: BaseObjectiveConfig, ratios: SamplerRatios) -> Tensor:
    """c[b,t]: 1 for 'none'; clamp(x, min, max) for *_truncate; x inside [min, max] and 0 outside for
    *_mask, where x is rho or rho_seq_b. A bound that is None is absent; bounds are inclusive."""
    if config.correction == "none":
        return torch.ones_like(ratios.log_ratio)
    x = ratios.at_level(config.correction)
    low, high = config.correction_min, config.correction_max
    if config.correction.endswith("truncate"):
        return x.clamp(min=low, max=high)
    return torch.where(_below(x, low) | _above(x, high), 0.0, x)


def _below(x: Tensor, bound: float | None) -> Tensor:
    return x < bound if bound is not None else torch.zeros_like(x, dtype=torch.bool)


def _above(x: Tensor, bound: float | None) -> Tensor:
    return x > bound if bound is not None else torch.zeros_like(x, dtype=torch.bool)


def m2po_keep(ratios: SamplerRatios, threshold: float) -> Tensor:
    """M2PO's kept tokens: drop the fewest largest ds^2 so that the mean of the rest is < threshold.

    Over all counted tokens of the batch in row-major order: sort m2 = ds^2 descending (ties: earlier
    position first), take the smallest k such that the mean of the n - k smallest is < threshold
    (k = n - 1 if none), and drop the k largest. Computed in float64. [B, T], bool
    """
    flat_mask = ratios.mask.flatten()
    m2 = ratios.log_ratio.flatten().to(torch.float64).square()[flat_mask]
    n = m2.numel()
    keep = torch.zeros_like(flat_mask)
    if n == 0:
        return keep.view_as(ratios.mask)
    order = torch.sort(m2, descending=True, stable=True).indices
    ordered = m2[order]
    # mean of ordered[k:] for k = 0 .. n-1: suffix sums over the counts left
    suffix_sums = ordered.flip(0).cumsum(0).flip(0)
    remaining = torch.arange(n, 0, -1, dtype=torch.float64, device=m2.device)
    below = suffix_sums / remaining < threshold
    dropped = int(below.to(torch.int64).argmax()) if bool(below.any()) else n - 1
    kept_positions = flat_mask.nonzero().squeeze(-1)[order[dropped:]]
    keep[kept_positions] = True
    return keep.view_as(ratios.mask)


def correction_metrics(
    config: BaseObjectiveConfig, ratios: SamplerRatios, weight: Tensor, keep: Tensor | None
) -> dict[str, Tensor]:
    """The spec's ``correction/*`` keys (0-dim tensors), over the counted tokens as sampled."""
    tokens = ratios.mask
    x = ratios.at_level(config.correction)
    if config.correction == "none":
        low = high = torch.zeros_like(tokens)
    else:
        low, high = _below(x, config.correction_min), _above(x, config.correction_max)
    outside = (low | high).to(weight.dtype)
    zero = torch.zeros_like(outside)
    weight_min, weight_max = masked_min_max(weight, tokens)
    counted = tokens.sum().to(weight.dtype)
    weight_sum = torch.where(tokens, weight, 0.0).sum()
    square_sum = torch.where(tokens, weight.square(), 0.0).sum()
    ess = torch.where(square_sum > 0, weight_sum.square() / (counted * square_sum), 0.0)
    rho = ratios.token
    ds = ratios.log_ratio
    dropped = zero if keep is None else (tokens & ~keep).to(weight.dtype)
    values = {
        "correction/weight_mean": masked_mean(weight, tokens),
        "correction/weight_min": weight_min,
        "correction/weight_max": weight_max,
        "correction/ess": torch.where(counted > 0, ess, torch.nan),
        "correction/low_frac": masked_mean(low.to(weight.dtype), tokens),
        "correction/high_frac": masked_mean(high.to(weight.dtype), tokens),
        "correction/masked_frac": masked_mean(outside if config.correction.endswith("mask") else zero, tokens),
        "correction/truncated_frac": masked_mean(outside if config.correction.endswith("truncate") else zero, tokens),
        "correction/chi2_token": masked_mean(rho.square(), tokens) - 1.0,
        "correction/chi2_seq": masked_mean(ratios.sequence.square(), tokens.any(-1)) - 1.0,
        "correction/kl_k3": masked_mean(rho - ds - 1.0, tokens),
        "correction/m2_mean": masked_mean(ds.square(), tokens),
        "correction/m2_masked_frac": masked_mean(dropped, tokens),
    }
    assert tuple(values) == CORRECTION_METRIC_KEYS
    return values


def staleness_metrics(staleness: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """``rollout/staleness_mean`` and ``_max`` over the counted tokens as sampled; staleness is [B, T]."""
    staleness = staleness.to(torch.float64)
    _, largest = masked_min_max(staleness, mask)
    values = {"rollout/staleness_mean": masked_mean(staleness, mask), "rollout/staleness_max": largest}
    assert tuple(values) == STALENESS_METRIC_KEYS
    return values
