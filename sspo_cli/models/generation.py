"""A KV-cache sampling loop that also returns what the update needs from the sampling pass.

Compared with `model.generate` it
- runs each distinct prompt once and copies its keys/values to every completion of its group,
- returns the sampled tokens' log-probabilities and the entropy at the sampling temperature,
  computed from the very logits the tokens were drawn from (so no second forward is needed),
- stops as soon as every row has produced an end token (<eos>) or, if asked, a stop string,
- if asked, drops ended rows from the batch (their keys and values too) once a quarter of it has
  ended, so the tokens after that are computed only for the rows still going.

Tokens are drawn as `torch.multinomial(softmax(logits / T), 1)` draws them (its one-sample path:
the argmax of p / q with q ~ Exp(1) per vocabulary entry), written out so that every row's noise is
drawn at every step whether the row is still in the batch or not: a row's tokens do not depend on
which other rows have been dropped. Exactly the model's distribution at temperature T, no top-k /
top-p. `temperature=None` is greedy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sspo_cli.models.kv_cache import cache_kwarg, new_cache, position_ids_for, select_cache_rows

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


@dataclass
class Sample:
    completion_ids: torch.Tensor  # [N, T]: pad after the first end token or stop string
    logprobs: torch.Tensor | None  # [N, T] float32: log softmax(logits / T)[token]
    entropy: torch.Tensor | None  # [N, T] float32: entropy of softmax(logits / T)


def sample_completions(
    model: PreTrainedModel,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_index: torch.Tensor,
    max_new_tokens: int,
    temperature: float | None,
    end_ids: int | Sequence[int],
    pad_id: int,
    with_logprobs: bool = True,
    stop_early: bool = True,
    stopped: Callable[[torch.Tensor], torch.Tensor] | None = None,
    reserve_cache: bool = True,
    compact: bool = True,
) -> Sample:
    """Sample one completion per entry of `prompt_index` (rows of the distinct, left-padded prompts).

    A row ends at any of `end_ids` (<eos>) or where `stopped` (tokens so far [N, t] -> bool [N]) says its text
    holds a stop string; after that it gets `pad_id` (and log-prob and entropy 0). `reserve_cache`: the KV cache
    keeps room for the new tokens (written in place, not concatenated at every token). `compact`: ended rows leave
    the decode batch (`rows_to_keep`)."""
    import torch

    rows = prompt_index.shape[0]
    device = prompt_ids.device
    ends = torch.tensor([end_ids] if isinstance(end_ids, int) else list(end_ids), device=device)
    cache = new_cache(model, max_new_tokens if reserve_cache else 0)
    cache_name = cache_kwarg(model)
    with torch.inference_mode():
        out = model(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=position_ids_for(prompt_mask),
            use_cache=True,
            logits_to_keep=1,
            **{cache_name: cache},
        )
        select_cache_rows(cache, prompt_index)
        logits = out.logits[:, -1, :][prompt_index]

        prompt_len = prompt_ids.shape[1]
        mask = torch.cat([prompt_mask[prompt_index], prompt_mask.new_ones(rows, max_new_tokens)], dim=1)
        next_position = position_ids_for(prompt_mask)[prompt_index, -1:] + 1
        live = torch.arange(rows, device=device)  # the rows in the decode batch, in order
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        # On an accelerator `finished.all()` waits for the device; ask only now and then there.
        check_every = 1 if device.type == "cpu" else 4
        tokens, logprobs, entropies = [], [], []
        for step in range(max_new_tokens):
            noise = None if temperature is None else exponential_noise(rows, logits.shape[-1], device)
            if noise is not None and live.shape[0] < rows:
                noise = noise[live]  # every row's noise is drawn; the rows still in the batch take theirs
            drawn, logp, entropy = draw(logits, temperature, with_logprobs, noise)
            token = scatter_rows(drawn, live, rows, pad_id)
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            ended = torch.isin(token, ends)
            tokens.append(token)
            if stopped is not None:
                ended = ended | (stopped(torch.stack(tokens, dim=1)) & ~finished)
            if with_logprobs:  # rows that had ended before this token get 0
                logprobs.append(scatter_rows(logp, live, rows, 0.0).masked_fill(finished, 0.0))
                entropies.append(scatter_rows(entropy, live, rows, 0.0).masked_fill(finished, 0.0))
            finished = finished | ended
            checking = (step + 1) % check_every == 0
            if step == max_new_tokens - 1 or (stop_early and checking and bool(finished.all())):
                break
            keep = rows_to_keep(finished[live]) if compact and checking else None
            if keep is not None:
                select_cache_rows(cache, keep)
                live, mask, next_position = live[keep], mask[keep], next_position[keep]
            out = model(
                input_ids=token[live][:, None],
                attention_mask=mask[:, : prompt_len + step + 1],
                position_ids=next_position + step,
                use_cache=True,
                **{cache_name: cache},
            )
            logits = out.logits[:, -1, :]
    completion_ids = torch.stack(tokens, dim=1)
    return Sample(
        completion_ids=completion_ids,
        logprobs=torch.stack(logprobs, dim=1) if with_logprobs else None,
        entropy=torch.stack(entropies, dim=1) if with_logprobs else None,
    )


def rows_to_keep(ended: torch.Tensor) -> torch.Tensor | None:
    """Which rows of the decode batch stay (indices into it), once at least a quarter of it has ended; None: keep
    the batch as it is. Dropping rows copies the keys and values of those kept, so it waits for enough to drop."""
    dropped = int(ended.sum())
    if dropped == 0 or dropped * 4 < ended.shape[0]:
        return None
    return (~ended).nonzero().squeeze(1)


def scatter_rows(values: torch.Tensor | None, live: torch.Tensor, rows: int, fill: float) -> torch.Tensor | None:
    """The decode batch's per-row `values` placed at their rows `live` of all `rows`; `fill` elsewhere."""
    if values is None or live.shape[0] == rows:
        return values
    return values.new_full((rows,), fill).index_copy_(0, live, values)


def draw(
    logits: torch.Tensor, temperature: float | None, with_logprobs: bool, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One token per row from softmax(logits / T) (argmax if T is None), and its log-prob and the entropy.

    `logits` [..., vocab]; `noise`: the Exp(1) draws to sample with, shaped as `logits` (default: drawn here from
    torch's generator, `exponential_noise`)."""
    import torch

    scaled = logits.float()
    if temperature is not None and temperature != 1.0:
        scaled = scaled / temperature
    if temperature is None and not with_logprobs:
        return scaled.argmax(dim=-1), None, None
    logp_all = torch.log_softmax(scaled, dim=-1)
    probs = logp_all.exp()
    if temperature is None:
        token = scaled.argmax(dim=-1)
    else:
        token = exponential_race(probs, noise if noise is not None else exponential_noise(*probs.shape, probs.device))
    if not with_logprobs:
        return token, None, None
    logp = logp_all.gather(-1, token.unsqueeze(-1)).squeeze(-1)
    entropy = -(probs * logp_all).sum(-1)
    return token, logp, entropy


def exponential_noise(rows: int, vocab: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exp(1) draws [rows, vocab] from `generator` (default: torch's), taken as `torch.multinomial` takes them."""
    import torch

    return torch.empty((rows, vocab), dtype=torch.float32, device=device).exponential_(1, generator=generator)


def exponential_race(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """argmax(p / q) with q ~ Exp(1) (`exponential_noise`): a draw from each row of `probs`, and with the same
    random numbers exactly `torch.multinomial(probs, 1)`'s (its one-sample rule, written out)."""
    return (probs / noise).argmax(dim=-1)
