"""The diagnostic metric keys every objective reports (spec: "Diagnostics"). No torch here."""

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
)
