"""A population's rollout: every member's prompts sampled at once (`models/population.py`), one ordinary `Rollout` per
member, each equal to what `collect.generate` gives that member alone with torch's generator seeded as the member's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sspo_cli.models.generation import Sample
from sspo_cli.models.population import Population, sample_population
from sspo_cli.rollout.collect import PromptRows, Rollout, assemble_rollout, distinct_prompts
from sspo_cli.rollout.prompts import TextFormat

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def generate_population(
    population: Population,
    like: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[str]],
    max_new_tokens: int,
    temperature: float | None,
    generators: list[torch.Generator],
    text: TextFormat | None = None,
) -> list[Rollout]:
    """Member k's completions of `prompts[k]` (every member the same number of prompts), drawn with
    `generators[k]`; `like` is a model of the members' architecture (for its end tokens). Each rollout holds its
    member's log-probs and entropies from the sampling pass; completions end at an end token or a stop string."""
    import torch

    fmt = text or TextFormat()
    end_ids = fmt.end_ids(tokenizer, like)
    grouped = [distinct_prompts(member_prompts) for member_prompts in prompts]
    width = max(len(distinct) for distinct, _ in grouped)
    padded = [distinct + [distinct[0]] * (width - len(distinct)) for distinct, _ in grouped]  # unused fillers
    enc = fmt.encode(tokenizer, [p for member in padded for p in member], return_tensors="pt", padding=True)
    members = len(prompts)
    ids, mask = enc["input_ids"].view(members, width, -1), enc["attention_mask"].view(members, width, -1)
    index = torch.stack([member_index for _, member_index in grouped])
    sample = sample_population(
        population, ids, mask, index, max_new_tokens, temperature, end_ids, tokenizer.pad_token_id, generators
    )
    rollouts = []
    for k in range(members):
        rows = PromptRows(ids[k][index[k]], mask[k][index[k]], index[k])
        own = Sample(sample.completion_ids[k], sample.logprobs[k], sample.entropy[k])
        rollouts.append(assemble_rollout(own, rows, tokenizer, fmt, end_ids, trim_padding=True))
    return rollouts
