"""Incremental decoding of left-padded batches: positions, and a KV cache across transformers versions.

The bottom layer of sampling (`sspo_cli.models.generation`) and of the shared-prompt log-probs
(`sspo_cli.models.logprobs`); it imports neither.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generation assigns them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def new_cache(model: PreTrainedModel, reserve: int = 0):
    """A DynamicCache; with `reserve` > 0 (inference only) each full-attention layer keeps room for that many more
    positions after its first extension, so that decoding writes into place instead of concatenating the whole
    cache at every token (same keys and values, same masks)."""
    from transformers import DynamicCache

    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # transformers < 4.56 takes no config
        return DynamicCache()
    reserved = reserved_layer_class() if reserve > 0 else None
    if reserved is not None and getattr(cache, "layers", None):
        plain = reserved.__mro__[1]  # DynamicLayer; sliding-window and other layers are kept as they are
        cache.layers = [reserved(reserve) if type(layer) is plain else layer for layer in cache.layers]
    return cache


@functools.cache
def reserved_layer_class():
    """transformers' DynamicLayer writing into a buffer with spare room; None where this transformers has none."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover - transformers < 4.56
        return None

    class ReservedLayer(DynamicLayer):
        """`keys`/`values` are views of buffers with room for `reserve` more positions. In-place writes: only
        for caches no autograd graph reads (the sampler runs under inference mode)."""

        def __init__(self, reserve: int) -> None:
            super().__init__()
            self.reserve = reserve
            self.key_buffer: torch.Tensor | None = None
            self.value_buffer: torch.Tensor | None = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            old = self.get_seq_length()
            if old == 0:  # the prompt: kept as it is (rows are usually selected from it next)
                self.keys, self.values = key_states, value_states
                return self.keys, self.values
            new = old + key_states.shape[-2]
            if not self._in_buffer(new):
                shape = (*self.keys.shape[:-2], new + self.reserve, self.keys.shape[-1])
                self.key_buffer = self.keys.new_empty(shape)
                self.value_buffer = self.values.new_empty(shape)
                self.key_buffer[..., :old, :] = self.keys
                self.value_buffer[..., :old, :] = self.values
            self.key_buffer[..., old:new, :] = key_states
            self.value_buffer[..., old:new, :] = value_states
            self.keys, self.values = self.key_buffer[..., :new, :], self.value_buffer[..., :new, :]
            return self.keys, self.values

        def _in_buffer(self, new: int) -> bool:
            """Whether `keys` is still the start of the buffer (not replaced, e.g. by a row selection) and it has room."""
            buffer = self.key_buffer
            return (
                buffer is not None
                and buffer.shape[-2] >= new
                and self.keys.data_ptr() == buffer.data_ptr()
                and self.keys.shape[:-2] == buffer.shape[:-2]
            )

    return ReservedLayer


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
