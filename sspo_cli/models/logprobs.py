"""Per-token log-probabilities of completions, without a full-vocabulary log-softmax in memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel


def position_ids_for(attention_mask: "torch.Tensor") -> "torch.Tensor":
    """Positions that skip left padding, as generation assigns them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_logits(model: "PreTrainedModel", input_ids: "torch.Tensor", attention_mask: "torch.Tensor", completion_len: int) -> "torch.Tensor":
    """Logits that predict the last `completion_len` tokens: [B, Tc, V]. The LM head runs on those rows only."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_for(attention_mask),
        logits_to_keep=completion_len + 1,
        use_cache=False,
    )
    return out.logits[:, :-1, :]


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
