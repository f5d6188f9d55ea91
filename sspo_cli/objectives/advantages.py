"""Group-relative advantages (spec: "Advantages")."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

AdvantageScale = Literal["group", "batch", "none"]
STD_EPSILON = 1e-6


def compute_advantages(rewards: Tensor, group_size: int, scale: AdvantageScale = "group") -> Tensor:
    """A = (R - mean_group(R)) / (std + 1e-6), with std the group's (``group``), the batch's
    (``batch``) or 1 (``none``, Dr. GRPO).

    ``rewards`` [B] is laid out group by group: completions [g*G:(g+1)*G] answer prompt g.
    Standard deviations are sample ones (Bessel's n-1, as TRL and verl do; n if a group has one
    completion). A group whose rewards are all equal gets exactly A = 0.
    Returns float32 at least, shape [B].
    """
    if not isinstance(rewards, Tensor) or rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor [B], got {getattr(rewards, 'shape', rewards)!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"group_size={group_size} does not divide the {rewards.numel()} rewards")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale must be 'group', 'batch' or 'none', got {scale!r}")

    dtype = torch.promote_types(rewards.dtype, torch.float32) if rewards.is_floating_point() else torch.float32
    groups = rewards.detach().to(dtype).view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (_sample_std(groups, dim=1) + STD_EPSILON)
    elif scale == "batch":
        centred = centred / (_sample_std(groups.flatten(), dim=0) + STD_EPSILON)
    # Rounding in the mean can leave ~1e-17 residues in an all-equal group; make them 0.
    all_equal = (groups == groups[:, :1]).all(dim=1, keepdim=True)
    return torch.where(all_equal, 0.0, centred).flatten()


def _sample_std(x: Tensor, dim: int) -> Tensor:
    correction = 1 if x.shape[dim] > 1 else 0
    return x.std(dim=dim, keepdim=True, correction=correction)
