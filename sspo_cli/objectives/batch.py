"""A batch of completions seen through the spec's notation: d, r, L_b, A_b and the means."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor


def clamped_log_ratio(numerator: Tensor, denominator: Tensor, mask: Tensor, clamp: float) -> Tensor:
    """clamp(numerator - denominator, -C, C) on counted tokens, exactly 0 elsewhere.

    Padding may hold -inf or NaN log-probs; ``where`` keeps them out of values and gradients.
    """
    return torch.where(mask, (numerator - denominator).clamp(-clamp, clamp), 0.0)


@dataclass(frozen=True)
class TokenBatch:
    """B completions of up to T tokens. Every tensor is in the loss's compute dtype."""

    log_ratio: Tensor
    """d[b,t] = clamp(logp - old_logp, -C, C); 0 on tokens that do not count. [B, T]"""
    mask: Tensor
    """True for completion tokens that count. [B, T], bool"""
    advantages: Tensor
    """A_b, one per completion. [B]"""
    logp: Tensor
    """logp[b,t], unclamped (REINFORCE-form surrogates and DPPO's probabilities); 0 on tokens that do not count."""
    old_logp: Tensor
    """old_logp[b,t] (no grad); 0 on tokens that do not count. [B, T]"""
    correction: Tensor | None = None
    """The sampler correction weight c[b,t] (no grad), or None without a correction. [B, T]"""

    @classmethod
    def from_log_probs(
        cls,
        logp: Tensor,
        old_logp: Tensor,
        advantages: Tensor,
        mask: Tensor,
        clamp: float,
        correction: Tensor | None = None,
    ) -> TokenBatch:
        return cls(
            clamped_log_ratio(logp, old_logp, mask, clamp),
            mask,
            advantages,
            logp=torch.where(mask, logp, 0.0),
            old_logp=torch.where(mask, old_logp, 0.0),
            correction=correction,
        )

    def on_policy(self) -> TokenBatch:
        """The same batch with logp == old_logp (d = 0) and no sampler correction: used to normalise weights."""
        return replace(self, log_ratio=torch.zeros_like(self.log_ratio), logp=self.old_logp, correction=None)

    @property
    def ratio(self) -> Tensor:
        """r = exp(d), the token importance ratio (finite: d is clamped). [B, T]"""
        return torch.exp(self.log_ratio)

    @property
    def lengths(self) -> Tensor:
        """L_b = sum_t mask[b,t]. [B]"""
        return self.mask.sum(-1).to(self.log_ratio.dtype)

    @property
    def non_empty(self) -> Tensor:
        """L_b > 0. [B], bool"""
        return self.mask.any(-1)

    def mean_t(self, x: Tensor) -> Tensor:
        """mean_t(x) = sum_t mask*x / L_b, and 0 for an empty completion. [B, T] -> [B]"""
        return torch.where(self.mask, x, 0.0).sum(-1) / self.lengths.clamp(min=1)

    def sequence_mean(self, x: Tensor) -> Tensor:
        """(1/B') * sum_b x_b over the B' non-empty completions (0 when B' = 0). [B] -> []"""
        count = self.non_empty.sum().to(x.dtype)
        return torch.where(self.non_empty, x, 0.0).sum() / count.clamp(min=1)

    def token_mean(self, x: Tensor) -> Tensor:
        """sum_{b,t} mask*x / sum_{b,t} mask (0 when no token counts). [B, T] -> []"""
        count = self.mask.sum().to(x.dtype)
        return torch.where(self.mask, x, 0.0).sum() / count.clamp(min=1)

    def sum_t(self, x: Tensor) -> Tensor:
        """sum_t mask*x. [B, T] -> [B]"""
        return torch.where(self.mask, x, 0.0).sum(-1)

    def sequence_log_ratio(self) -> Tensor:
        """mean_t(d), so that s_b = exp(mean_t(d)) is the sequence ratio. [B]"""
        return self.mean_t(self.log_ratio)

    def temperature(self, tau_pos: float, tau_neg: float) -> Tensor:
        """tau_b = tau_pos if A_b > 0 else tau_neg, shaped [B, 1] to broadcast over tokens."""
        tau = torch.full_like(self.advantages, tau_neg, dtype=self.log_ratio.dtype)
        return tau.masked_fill(self.advantages > 0, tau_pos)[:, None]
