"""The spec's diagnostic metrics, one code path for every objective.

Everything is reduced on the device and read back with a single ``tolist()`` (one host
sync), because this runs once per optimisation step. A statistic over an empty selection
(for example ``grad_weight/pos_mean`` when no advantage is positive) is NaN, never a
made-up zero. Standard deviations and variances are population ones (divide by n).
"""

from __future__ import annotations

import torch
from torch import Tensor

from sspo_cli.objectives.batch import TokenBatch
from sspo_cli.objectives.formulas import k3
from sspo_cli.objectives.metric_keys import METRIC_KEYS


def masked_mean(x: Tensor, selected: Tensor) -> Tensor:
    """Mean of x where selected (NaN if nothing is selected)."""
    return torch.where(selected, x, 0.0).sum() / selected.sum().to(x.dtype)


def masked_variance(x: Tensor, selected: Tensor) -> Tensor:
    """Population variance of x where selected (NaN if nothing is selected)."""
    centred = x - masked_mean(x, selected)
    return masked_mean(centred * centred, selected)


def masked_min_max(x: Tensor, selected: Tensor) -> tuple[Tensor, Tensor]:
    """Min and max of x where selected (NaN if nothing is selected)."""
    nan = x.new_full((), float("nan"))  # a fill on the device; torch.tensor(...) would sync
    if x.numel() == 0:  # a shape check, not a device sync
        return nan, nan
    low = torch.where(selected, x, float("inf")).amin()
    high = torch.where(selected, x, float("-inf")).amax()
    anything = selected.any()
    return torch.where(anything, low, nan), torch.where(anything, high, nan)


def summarize(
    batch: TokenBatch,
    *,
    sequence_weight: Tensor,
    omega: Tensor,
    saturation_threshold: float,
    truncated: Tensor | None = None,
    extra: dict[str, Tensor] | None = None,
) -> dict[str, float]:
    """Compute every key of METRIC_KEYS, then those of ``extra`` (0-dim tensors), in one host sync.

    ``sequence_weight`` [B] is the objective's weight divided by its on-policy value;
    ``omega`` [B, T] is each token's gradient relative to the vanilla policy gradient
    (read only on counted tokens with A != 0); ``truncated`` [B, T] marks the tokens whose
    ratio weight a bound cut without zeroing their gradient (None: no such bound).
    """
    tokens = batch.mask
    sequences = batch.non_empty
    advantages = batch.advantages
    d = batch.log_ratio
    ratio = batch.ratio
    sequence_ratio = torch.exp(batch.sequence_log_ratio())

    informative_sequences = sequences & (advantages != 0)
    informative_tokens = tokens & (advantages != 0)[:, None]
    positive_tokens = tokens & (advantages > 0)[:, None]
    negative_tokens = tokens & (advantages < 0)[:, None]
    saturated = (omega < saturation_threshold).to(omega.dtype)
    truncated = torch.zeros_like(saturated) if truncated is None else truncated.to(omega.dtype)

    token_ratio_min, token_ratio_max = masked_min_max(ratio, tokens)
    sequence_ratio_min, sequence_ratio_max = masked_min_max(sequence_ratio, sequences)
    values = {
        "ratio/token_mean": masked_mean(ratio, tokens),
        "ratio/token_std": masked_variance(ratio, tokens).sqrt(),
        "ratio/token_min": token_ratio_min,
        "ratio/token_max": token_ratio_max,
        "ratio/log_abs_mean": masked_mean(d.abs(), tokens),
        "ratio/seq_mean": masked_mean(sequence_ratio, sequences),
        "ratio/seq_std": masked_variance(sequence_ratio, sequences).sqrt(),
        "ratio/seq_min": sequence_ratio_min,
        "ratio/seq_max": sequence_ratio_max,
        "weight/seq_mean": masked_mean(sequence_weight, informative_sequences),
        "weight/seq_var": masked_variance(sequence_weight, informative_sequences),
        "grad_weight/mean": masked_mean(omega, informative_tokens),
        "grad_weight/pos_mean": masked_mean(omega, positive_tokens),
        "grad_weight/neg_mean": masked_mean(omega, negative_tokens),
        "grad_weight/saturated_frac": masked_mean(saturated, informative_tokens),
        "kl/k3": masked_mean(k3(d), tokens),
        "grad_weight/truncated_frac": masked_mean(truncated, informative_tokens),
    }
    assert tuple(values) == METRIC_KEYS
    values |= extra or {}
    stacked = torch.stack([v.to(ratio.dtype) for v in values.values()])
    return dict(zip(values, stacked.tolist()))
