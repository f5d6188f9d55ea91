"""The diagnostic metric keys (spec: "Diagnostics", "Diagnostics added"). No torch here."""

from __future__ import annotations

METRIC_KEYS: tuple[str, ...] = (
    "ratio/token_mean",
    "ratio/token_std",
    "ratio/token_min",
    "ratio/token_max",
    "ratio/log_abs_mean",
    "ratio/seq_mean",
    "ratio/seq_std",
    "ratio/seq_min",
    "ratio/seq_max",
    "weight/seq_mean",
    "weight/seq_var",
    "grad_weight/mean",
    "grad_weight/pos_mean",
    "grad_weight/neg_mean",
    "grad_weight/saturated_frac",
    "kl/k3",
    "grad_weight/truncated_frac",
)
"""Every objective reports these, on every call."""

CORRECTION_METRIC_KEYS: tuple[str, ...] = (
    "correction/weight_mean",
    "correction/weight_min",
    "correction/weight_max",
    "correction/ess",
    "correction/low_frac",
    "correction/high_frac",
    "correction/masked_frac",
    "correction/truncated_frac",
    "correction/chi2_token",
    "correction/chi2_seq",
    "correction/kl_k3",
    "correction/m2_mean",
    "correction/m2_masked_frac",
)
"""Reported whenever ``behav_logp`` is passed (even with ``correction: none``), absent otherwise."""

STALENESS_METRIC_KEYS: tuple[str, ...] = ("rollout/staleness_mean", "rollout/staleness_max")
"""Reported iff ``staleness`` is passed."""
