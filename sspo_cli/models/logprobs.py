"""Per-token log-probabilities of completions, without a full-vocabulary log-softmax in memory.

`completion_logprobs` is the entry point. For decoders whose logits are exactly
`lm_head(last hidden state)` (Qwen2/3, Llama, Mistral) it runs the LM head chunk by chunk on the
completion positions only, so neither the batch's logits nor their float32 log-softmax ever
exist whole; with autograd on, each chunk is recomputed in the backward pass instead of kept.
Other models fall back to their own logits, turned into log-probs chunk by chunk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sspo_cli.models.kv_cache import cache_kwarg, new_cache, position_ids_for, select_cache_rows

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# model_type values whose causal-LM forward is `lm_head(base_model(...).last_hidden_state)`,
# with no logit scaling or soft-capping: the LM head may then be applied by us, in chunks.
SEPARABLE_HEAD_MODEL_TYPES = frozenset({"qwen2", "qwen3", "llama", "mistral"})


def completion_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    temperature: float,
    prompt_index: torch.Tensor | None = None,
    chunk_mb: float = 64.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(logits / T)[token] of the last `completion_len` tokens, float32 [B, Tc]; and the entropy if asked.

    Rows with equal `prompt_index` hold the same prompt, which then runs once (`shared_prefix_run`).
    `chunk_mb` bounds the float32 logits held at once.
    """
    import torch

    tokens = input_ids[:, -completion_len:]
    if has_separable_head(model):
        hidden = completion_outputs(
            model.base_model, input_ids, attention_mask, completion_len, prompt_index, hidden=True
        )
        head = model.get_output_embeddings()
        rows = chunk_rows_for(chunk_mb, completion_len, head.out_features)
        recompute = torch.is_grad_enabled() and hidden.requires_grad and rows < hidden.shape[0]
        logp_chunks, entropy_chunks = [], []
        for hidden_chunk, token_chunk in zip(hidden.split(rows), tokens.split(rows)):
            if recompute:  # keep only the hidden chunk for backward; its logits are rebuilt there
                from torch.utils.checkpoint import checkpoint

                logp_chunks.append(
                    checkpoint(head_logprobs, head, hidden_chunk, token_chunk, temperature, use_reentrant=False)
                )
                logits = head(hidden_chunk.detach()) if with_entropy else None
            else:
                logits = head(hidden_chunk)
                logp_chunks.append(logprobs_from_logits(logits, token_chunk, temperature))
            if with_entropy:
                with torch.no_grad():
                    entropy_chunks.append(entropy_of(logits, temperature))
        logp = torch.cat(logp_chunks)
        return logp, torch.cat(entropy_chunks) if with_entropy else None

    logits = completion_logits(model, input_ids, attention_mask, completion_len, prompt_index)
    rows = chunk_rows_for(chunk_mb, completion_len, logits.shape[-1])
    logp = gather_logprobs(logits, tokens, temperature, rows)
    return logp, token_entropy(logits, temperature, rows) if with_entropy else None


def has_separable_head(model: PreTrainedModel) -> bool:
    import torch

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (
        getattr(model.config, "model_type", None) in SEPARABLE_HEAD_MODEL_TYPES
        and isinstance(head, torch.nn.Linear)
        and getattr(model, "base_model", model) is not model
    )


def chunk_rows_for(chunk_mb: float, completion_len: int, vocab: int) -> int:
    """Completions per chunk so that one chunk's float32 logits take at most `chunk_mb` MiB."""
    return max(1, int(chunk_mb * 2**20 // (4 * max(completion_len, 1) * vocab)))


def head_logprobs(
    head: torch.nn.Module, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float
) -> torch.Tensor:
    return logprobs_from_logits(head(hidden), tokens, temperature)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T)[token], float32, without building the log-softmax."""
    import torch

    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def entropy_of(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    import torch

    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def completion_outputs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    prompt_index: torch.Tensor | None = None,
    hidden: bool = False,
) -> torch.Tensor:
    """The outputs at the positions that predict the last `completion_len` tokens: [B, Tc, V] logits
    of a causal LM, or [B, Tc, H] last hidden states of a base model (`hidden=True`)."""
    prompt_len = input_ids.shape[1] - completion_len
    if prompt_index is not None and prompt_len >= 2:
        shared = shared_prefix_run(model, input_ids, attention_mask, completion_len, prompt_index, hidden)
        if shared is not None:
            return shared
    kwargs = {} if hidden else {"logits_to_keep": completion_len + 1}
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_for(attention_mask),
        use_cache=False,
        **kwargs,
    )
    result = out.last_hidden_state[:, -(completion_len + 1) :] if hidden else out.logits
    return result[:, :-1, :]


def completion_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    prompt_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits that predict the last `completion_len` tokens: [B, Tc, V]. The LM head runs on those rows only.

    Rows with equal `prompt_index` must hold the same prompt: that prompt then runs once and its
    keys/values are shared by those rows (the same function, with fewer FLOPs; gradients flow
    through the shared copy).
    """
    return completion_outputs(model, input_ids, attention_mask, completion_len, prompt_index)


def shared_prefix_run(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_len: int,
    prompt_index: torch.Tensor,
    hidden: bool = False,
) -> torch.Tensor | None:
    """`completion_outputs` with every distinct prompt run once; None when no two rows share one.

    The prompt minus its last token goes through the model once per distinct prompt and fills a
    KV cache, which is copied to each row; then [last prompt token, completion[:-1]] runs on
    every row, so its Tc outputs are exactly those at the Tc completion tokens' positions.
    """
    import torch

    distinct, row_to_distinct = torch.unique(prompt_index, return_inverse=True)
    rows = input_ids.shape[0]
    if distinct.shape[0] == rows:
        return None
    # Any row of a prompt stands for it: equal prompt_index means equal prompt tokens.
    representative = torch.empty_like(distinct).scatter_(
        0, row_to_distinct, torch.arange(rows, device=input_ids.device)
    )
    prefix_len = input_ids.shape[1] - completion_len - 1
    positions = position_ids_for(attention_mask)
    cache = new_cache(model)
    name = cache_kwarg(model)
    model(
        input_ids=input_ids[representative, :prefix_len],
        attention_mask=attention_mask[representative, :prefix_len],
        position_ids=positions[representative, :prefix_len],
        use_cache=True,
        **({} if hidden else {"logits_to_keep": 1}),
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
    return out.last_hidden_state if hidden else out.logits


def gather_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, chunk_rows: int = 16
) -> torch.Tensor:
    """log softmax(logits / T)[token], in float32, `chunk_rows` sequences at a time.

    Gathering the chosen logit and subtracting a logsumexp avoids materialising the float32
    log-softmax of the whole batch (gigabytes for a 150k vocabulary). `split` (not slicing)
    keeps the backward pass to one logits-sized gradient.
    """
    import torch

    pieces = [
        logprobs_from_logits(rows, chosen, temperature)
        for rows, chosen in zip(logits.split(chunk_rows), tokens.split(chunk_rows))
    ]
    return torch.cat(pieces)


def token_entropy(logits: torch.Tensor, temperature: float, chunk_rows: int = 16) -> torch.Tensor:
    """Entropy of softmax(logits / T) per position, float32, no grad."""
    import torch

    with torch.no_grad():
        return torch.cat([entropy_of(rows, temperature) for rows in logits.split(chunk_rows)])


def logp_difference_sums(learner: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """|sampler - learner| over the tokens `mask` counts, tokens without a sampler figure (NaN) left out:
    [sum, tokens, largest] in one tensor, which batches and processes add up (`sampler_mismatch_metrics`)."""
    import torch

    diff = (sampler.float() - learner.float()).abs()
    counted = mask.bool() & ~torch.isnan(diff)
    diff = torch.where(counted, diff, 0.0)
    largest = diff.amax() if diff.numel() else diff.new_zeros(())
    return torch.stack([diff.sum(), counted.sum().float(), largest])


def sampler_mismatch_metrics(total: float, tokens: float, largest: float) -> dict[str, float]:
    """The spec's `rollout/sampler_logp_diff_mean`/`_max` from the sums of `logp_difference_sums`."""
    return {"rollout/sampler_logp_diff_mean": total / max(tokens, 1.0), "rollout/sampler_logp_diff_max": largest}
