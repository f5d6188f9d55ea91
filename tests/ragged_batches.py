"""The ragged layout the verl cross-checks share: which tokens count, and advantages of both signs and a zero."""

from __future__ import annotations

import torch


def ragged_mask(generator: torch.Generator, rows: int, tokens: int, empty_rows: int = 0) -> torch.Tensor:
    """Right-padded completions of random lengths: the first is full, the last `empty_rows` are empty."""
    lengths = torch.randint(1, tokens + 1, (rows,), generator=generator)
    lengths[0] = tokens
    if empty_rows:
        lengths[-empty_rows:] = 0
    return torch.arange(tokens)[None, :] < lengths[:, None]


def mixed_advantages(generator: torch.Generator, rows: int) -> torch.Tensor:
    """Random float64 advantages with the first positive, the second negative and the third exactly 0."""
    advantages = torch.randn(rows, generator=generator, dtype=torch.float64)
    advantages[0], advantages[1], advantages[2] = advantages[0].abs() + 0.1, -(advantages[1].abs() + 0.1), 0.0
    return advantages
