"""A population's optimiser step: each member's gradients clipped by that member's own norm, then one AdamW step over
the stacked weights (`models/population.py`). AdamW is elementwise with scalar hyper-parameters, so a step over the
stacked tensors is each member's own step; only the clipping reads a whole member, and it is taken member by member
here, as `torch.nn.utils.clip_grad_norm_` takes it for one model."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# torch.nn.utils.clip_grad_norm_'s guard against dividing by a zero norm
CLIP_EPS = 1e-6


def clip_member_grad_norms_(weights: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale each member's gradients (row k of every stacked weight's `.grad`) so that their joint 2-norm is at most
    `max_norm` (inf: leave them); returns each member's norm before clipping, [K]."""
    import torch

    grads = [w.grad for w in weights if w.grad is not None]
    per_weight = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads], dim=1)
    norms = torch.linalg.vector_norm(per_weight, 2, dim=1)
    if math.isinf(max_norm):
        return norms
    scale = (max_norm / (norms + CLIP_EPS)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))
    return norms
