"""A KV-cache sampling loop that also returns what the update needs from the sampling pass.

Compared with `model.generate` it
- runs each distinct prompt once and copies its keys/values to every completion of its group,
- returns the sampled tokens' log-probabilities and the entropy at the sampling temperature,
  computed from the very logits the tokens were drawn from (so no second forward is needed),
- stops as soon as every row has produced an end token (<eos>) or, if asked, a stop string.

Tokens are drawn with `torch.multinomial(softmax(logits / T))`: exactly the model's
distribution at temperature T, no top-k / top-p. `temperature=None` is greedy.
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
) -> Sample:
    """Sample one completion per entry of `prompt_index` (rows of the distinct, left-padded prompts).

    A row ends at any of `end_ids` (<eos>) or where `stopped` (tokens so far [N, t] -> bool [N]) says its text
    holds a stop string; after that it gets `pad_id`. `reserve_cache`: the KV cache keeps room for the new tokens
    (written in place, not concatenated at every token)."""
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
        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        # On an accelerator `finished.all()` waits for the device; ask only now and then there.
        check_every = 1 if device.type == "cpu" else 4
        tokens, logprobs, entropies = [], [], []
        for step in range(max_new_tokens):
            token, logp, entropy = draw(logits, temperature, with_logprobs)
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            ended = torch.isin(token, ends)
            tokens.append(token)
            if stopped is not None:
                ended = ended | (stopped(torch.stack(tokens, dim=1)) & ~finished)
            finished = finished | ended
            if with_logprobs:
                logprobs.append(logp)
                entropies.append(entropy)
            if step == max_new_tokens - 1 or (stop_early and (step + 1) % check_every == 0 and bool(finished.all())):
                break
            out = model(
                input_ids=token[:, None],
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


def draw(
    logits: torch.Tensor, temperature: float | None, with_logprobs: bool
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """One token per row from softmax(logits / T) (argmax if T is None), and its log-prob and the entropy."""
    import torch

    scaled = logits.float()
    if temperature is not None and temperature != 1.0:
        scaled = scaled / temperature
    if temperature is None and not with_logprobs:
        return scaled.argmax(dim=-1), None, None
    logp_all = torch.log_softmax(scaled, dim=-1)
    probs = logp_all.exp()
    token = scaled.argmax(dim=-1) if temperature is None else torch.multinomial(probs, 1).squeeze(-1)
    if not with_logprobs:
        return token, None, None
    logp = logp_all.gather(-1, token[:, None]).squeeze(-1)
    entropy = -(probs * logp_all).sum(-1)
    return token, logp, entropy
