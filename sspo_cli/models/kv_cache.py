"""Incremental decoding of left-padded batches: positions, and a KV cache across transformers versions.

The bottom layer of sampling (`sspo_cli.sampling`) and of the shared-prompt log-probs
(`sspo_cli.models.logprobs`); it imports neither.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generation assigns them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def new_cache(model: PreTrainedModel):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 takes no config
        return DynamicCache()


def cache_kwarg(model: PreTrainedModel) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; accept either."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def select_cache_rows(cache, rows: torch.Tensor) -> None:
    """Row i of the cache becomes old row rows[i] (autograd follows the copy)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(rows)
    else:  # pragma: no cover - older transformers
        for layer in range(len(cache)):
            cache.key_cache[layer] = cache.key_cache[layer][rows]
            cache.value_cache[layer] = cache.value_cache[layer][rows]
