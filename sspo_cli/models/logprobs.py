"""Per-token log-probabilities of completions, without a full-vocabulary log-softmax in memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def position_ids_for(attention_mask: "torch.Tensor") -> "torch.Tensor":
    """Positions that skip left padding, as generation assigns them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_logits(
    model: "PreTrainedModel",
    input_ids: "torch.Tensor",
    attention_mask: "torch.Tensor",
    completion_len: int,
    prompt_index: "torch.Tensor | None" = None,
) -> "torch.Tensor":
    """Logits that predict the last `completion_len` tokens: [B, Tc, V]. The LM head runs on those rows only.

    Rows with equal `prompt_index` must hold the same prompt: that prompt then runs once and its
    keys/values are shared by those rows (the same function, with fewer FLOPs; gradients flow
    through the shared copy).
    """
    prompt_len = input_ids.shape[1] - completion_len
    if prompt_index is not None and prompt_len >= 2:
        shared = shared_prefix_logits(model, input_ids, attention_mask, completion_len, prompt_index)
        if shared is not None:
            return shared
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_for(attention_mask),
        logits_to_keep=completion_len + 1,
        use_cache=False,
    )
    return out.logits[:, :-1, :]


def shared_prefix_logits(
    model: "PreTrainedModel",
    input_ids: "torch.Tensor",
    attention_mask: "torch.Tensor",
    completion_len: int,
    prompt_index: "torch.Tensor",
) -> "torch.Tensor | None":
    """`completion_logits` with every distinct prompt run once; None when no two rows share one.

    The prompt minus its last token goes through the model once per distinct prompt and fills a
    KV cache, which is copied to each row; then [last prompt token, completion[:-1]] runs on
    every row, so its Tc outputs are exactly the logits of the Tc completion tokens.
    """
    import torch

    from sspo_cli.sampling import cache_kwarg, new_cache, select_cache_rows

    distinct, row_to_distinct = torch.unique(prompt_index, return_inverse=True)
    rows = input_ids.shape[0]
    if distinct.shape[0] == rows:
        return None
    # Any row of a prompt stands for it: equal prompt_index means equal prompt tokens.
    representative = torch.empty_like(distinct).scatter_(0, row_to_distinct, torch.arange(rows, device=input_ids.device))
    prefix_len = input_ids.shape[1] - completion_len - 1
    positions = position_ids_for(attention_mask)
    cache = new_cache(model)
    name = cache_kwarg(model)
    model(
        input_ids=input_ids[representative, :prefix_len],
        attention_mask=attention_mask[representative, :prefix_len],
        position_ids=positions[representative, :prefix_len],
        use_cache=True,
        logits_to_keep=1,
        **{name: cache},
    )
    select_cache_rows(cache, row_to_distinct)
    out = model(
        input_ids=input_ids[:, prefix_len:-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=positions[:, prefix_len:-1],
        use_cache=True,
        **{name: cache},
    )
    return out.logits


def gather_logprobs(logits: "torch.Tensor", tokens: "torch.Tensor", temperature: float, chunk_rows: int = 16) -> "torch.Tensor":
    """log softmax(logits / T)[token], in float32, `chunk_rows` sequences at a time.

    Gathering the chosen logit and subtracting a logsumexp avoids materialising the float32
    log-softmax of the whole batch (gigabytes for a 150k vocabulary).
    """
    import torch

    pieces = []
    for start in range(0, logits.shape[0], chunk_rows):
        rows = logits[start : start + chunk_rows].float()
        if temperature != 1.0:
            rows = rows / temperature
        chosen = rows.gather(-1, tokens[start : start + chunk_rows].unsqueeze(-1)).squeeze(-1)
        pieces.append(chosen - torch.logsumexp(rows, dim=-1))
    return torch.cat(pieces)


def token_entropy(logits: "torch.Tensor", temperature: float, chunk_rows: int = 16) -> "torch.Tensor":
    """Entropy of softmax(logits / T) per position, float32, no grad."""
    import torch

    pieces = []
    with torch.no_grad():
        for start in range(0, logits.shape[0], chunk_rows):
            rows = logits[start : start + chunk_rows].float() / temperature
            logp = torch.log_softmax(rows, dim=-1)
            pieces.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(pieces)
