"""Sampling completions from the policy and scoring them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sspo_cli.models.generation import Sample, sample_completions
from sspo_cli.rollout.prompts import TextFormat, cut_at_stop, stop_window, tails_contain_stop

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sspo_cli.recipe import PerformanceConfig
    from sspo_cli.rewards import Grade
    from sspo_cli.tasks import Example, Task


@dataclass
class Rollout:
    """Prompts (left-padded) followed by completions (right-padded), one row per completion."""

    input_ids: torch.Tensor  # [N, P + Tc]
    attention_mask: torch.Tensor  # [N, P + Tc]
    completion_mask: torch.Tensor  # [N, Tc], 1 for completion tokens up to and including <eos> or a stop string's last
    completions: list[str]  # decoded text before <eos> or the first stop string
    # Rows with equal prompt_index share their prompt (the group of a group-relative advantage). [N]
    prompt_index: torch.Tensor | None = None
    # From the sampling pass, at the sampling temperature; only where asked for. [N, Tc] float32
    logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    # Completions that ended without <eos> or a stop string (cut off at max_new_tokens); their rewards see it. [N]
    truncated: list[bool] | None = None

    @property
    def completion_len(self) -> int:
        return self.completion_mask.shape[1]

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, -self.completion_len :]

    def select(self, rows: torch.Tensor) -> Rollout:
        index = rows.tolist()

        def pick(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[rows]

        return Rollout(
            self.input_ids[rows],
            self.attention_mask[rows],
            self.completion_mask[rows],
            [self.completions[i] for i in index],
            pick(self.prompt_index),
            pick(self.logprobs),
            pick(self.entropy),
            None if self.truncated is None else [self.truncated[i] for i in index],
        )


def loss_mask(rollout: Rollout, mask_truncated: bool) -> torch.Tensor:
    """The tokens the loss counts: the completion mask, with truncated completions' rows zeroed if asked
    (`rollout.mask_truncated_completions`; such a row then has L_b = 0 and contributes nothing). [N, Tc]"""
    if not mask_truncated or rollout.truncated is None:
        return rollout.completion_mask
    import torch

    keep = torch.tensor([not cut for cut in rollout.truncated], dtype=rollout.completion_mask.dtype)
    return rollout.completion_mask * keep.to(rollout.completion_mask.device)[:, None]


def truncated_fraction(rollout: Rollout) -> float:
    """Share of completions cut off at max_new_tokens (the spec's `rollout/truncated_frac`)."""
    cut = rollout.truncated or []
    return sum(cut) / len(cut) if cut else 0.0


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float | None,
    performance: PerformanceConfig | None = None,
    with_logprobs: bool = False,
    text: TextFormat | None = None,
) -> Rollout:
    """Sample at `temperature` from exactly the model's distribution (no top-k/top-p); None = greedy.

    `performance` picks the sampler and its shortcuts (defaults: `PerformanceConfig()`);
    `with_logprobs` asks the project's sampler for the tokens' log-probs and entropies;
    `text` renders the prompts and ends the completions (default: the prompt as it is, <eos> only).
    Whichever sampler ran, a completion ends at its first end token or stop string (`completion_ends`).
    """
    import torch

    from sspo_cli.recipe import PerformanceConfig

    perf = performance or PerformanceConfig()
    fmt = text or TextFormat()
    end_ids = fmt.end_ids(tokenizer, model)
    device = next(model.parameters()).device
    distinct, prompt_index = distinct_prompts(prompts)
    prompt_index = prompt_index.to(device)
    if perf.sampler == "hf_generate":
        enc = fmt.encode(tokenizer, list(prompts), return_tensors="pt", padding=True).to(device)
        rows = PromptRows(enc["input_ids"], enc["attention_mask"], prompt_index)
        completion = hf_generate(model, tokenizer, rows.ids, rows.mask, max_new_tokens, temperature, end_ids)
        return assemble_rollout(Sample(completion, None, None), rows, tokenizer, fmt, end_ids, perf.trim_padding)
    shared = distinct if perf.share_prompt_prefix else list(prompts)
    enc = fmt.encode(tokenizer, shared, return_tensors="pt", padding=True).to(device)
    index = prompt_index if perf.share_prompt_prefix else torch.arange(len(prompts), device=device)
    sample = sample_completions(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        index,
        max_new_tokens,
        temperature,
        end_ids,
        tokenizer.pad_token_id,
        with_logprobs=with_logprobs,
        stop_early=perf.trim_padding,
        stopped=stop_test(tokenizer, fmt.stop),
        reserve_cache=perf.reserve_kv_cache,
        compact=perf.compact_finished_rows,
    )
    rows = PromptRows(enc["input_ids"][index], enc["attention_mask"][index], prompt_index)
    return assemble_rollout(sample, rows, tokenizer, fmt, end_ids, perf.trim_padding)


@dataclass(frozen=True)
class PromptRows:
    """The prompt of each completion row, left-padded: tokens and mask [N, P], and its index among the distinct
    prompts [N] (rows of one index form a group)."""

    ids: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor


def assemble_rollout(
    sample: Sample,
    prompts: PromptRows,
    tokenizer: PreTrainedTokenizerBase,
    fmt: TextFormat,
    end_ids: Sequence[int],
    trim_padding: bool,
) -> Rollout:
    """The rollout of sampled completions, whichever sampler drew them: each completion ends at its first end
    token or stop string (`completion_ends`), its text decoded; with `trim_padding`, columns that are padding in
    every row are dropped."""
    import torch

    completion, logprobs, entropy = sample.completion_ids, sample.logprobs, sample.entropy
    ends, by_stop = completion_ends(tokenizer, completion, end_ids, fmt.stop)
    completion_mask = mask_through(ends, completion.shape[1]).to(completion.device)
    truncated = [end is None for end in ends]
    if trim_padding:
        keep = longest_completion(completion_mask)
        completion, completion_mask = completion[:, :keep], completion_mask[:, :keep]
        logprobs = None if logprobs is None else logprobs[:, :keep]
        entropy = None if entropy is None else entropy[:, :keep]
    attention_mask = torch.cat([prompts.mask, completion_mask.to(prompts.mask.dtype)], dim=1)
    texts = decode_completions(tokenizer, completion, completion_mask, end_ids)
    texts = [cut_at_stop(t, fmt.stop) if stopped else t for t, stopped in zip(texts, by_stop)]
    return Rollout(
        torch.cat([prompts.ids, completion], dim=1),
        attention_mask,
        completion_mask.float(),
        texts,
        prompts.index,
        logprobs,
        entropy,
        truncated,
    )


def stop_test(tokenizer: PreTrainedTokenizerBase, stop: Sequence[str]) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """For the sampler: which rows' completion so far ([N, t] tokens) now holds a stop string. None: no stop strings."""
    if not stop:
        return None
    import torch

    width = stop_window(stop)

    def stopped(tokens: torch.Tensor) -> torch.Tensor:
        hits = tails_contain_stop(tokenizer, tokens[:, -width:].tolist(), stop)
        return torch.tensor(hits, dtype=torch.bool, device=tokens.device)

    return stopped


def completion_ends(
    tokenizer: PreTrainedTokenizerBase, completion: torch.Tensor, end_ids: Sequence[int], stop: Sequence[str]
) -> tuple[list[int | None], list[bool]]:
    """Each row's last completion token: its first end token (<eos>), or the token whose text completes a stop
    string, whichever comes first; None if neither (cut off at max_new_tokens). And whether a stop string ended it."""
    rows = completion.tolist()
    ends: list[int | None] = [next((t for t, token in enumerate(row) if token in end_ids), None) for row in rows]
    by_stop = [False] * len(rows)
    if not stop:
        return ends, by_stop
    width = stop_window(stop)
    searching = list(range(len(rows)))
    for t in range(completion.shape[1]):
        searching = [i for i in searching if ends[i] is None or t < ends[i]]
        if not searching:
            break
        hits = tails_contain_stop(tokenizer, [rows[i][max(0, t + 1 - width) : t + 1] for i in searching], stop)
        for i, hit in zip(searching, hits):
            if hit:
                ends[i], by_stop[i] = t, True
        searching = [i for i, hit in zip(searching, hits) if not hit]
    return ends, by_stop


def mask_through(ends: Sequence[int | None], width: int) -> torch.Tensor:
    """1 for every token up to and including each row's end (all of them where it has none). [N, width] long"""
    import torch

    last = torch.tensor([width - 1 if end is None else end for end in ends], dtype=torch.long)
    return (torch.arange(width)[None, :] <= last[:, None]).long()


def hf_generate(
    model,
    tokenizer,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float | None,
    end_ids: Sequence[int] | None = None,
) -> torch.Tensor:
    """transformers' `model.generate`; returns the completion columns only. [N, <= max_new_tokens]

    It stops a row at any of `end_ids` (default: <eos>); stop strings are found afterwards (`completion_ends`)."""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=temperature is not None,
        temperature=temperature if temperature is not None else 1.0,
        top_k=None,
        top_p=None,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=list(end_ids) if end_ids is not None else tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    with torch.inference_mode():
        sequences = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, generation_config=config)
    return sequences[:, prompt_ids.shape[1] :].clone()


def distinct_prompts(prompts: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """The distinct prompts in first-seen order, and for each input prompt its index among them."""
    import torch

    first_seen: dict[str, int] = {}
    index = [first_seen.setdefault(p, len(first_seen)) for p in prompts]
    return list(first_seen), torch.tensor(index, dtype=torch.long)


def longest_completion(completion_mask: torch.Tensor) -> int:
    """Columns up to the longest completion (its <eos> included); at least one."""
    return max(int(completion_mask.sum(1).max()), 1) if completion_mask.numel() else 1


def decode_completions(
    tokenizer: PreTrainedTokenizerBase, completion: torch.Tensor, mask: torch.Tensor, end_ids: Sequence[int]
) -> list[str]:
    texts = []
    for row, row_mask in zip(completion.tolist(), mask.tolist()):
        tokens = [t for t, m in zip(row, row_mask) if m and t not in end_ids]
        texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return texts


def score(
    task: Task, examples: Sequence[Example], completions: Sequence[str], truncated: Sequence[bool] | None = None
) -> list[float]:
    return [grade.reward for grade in grade_all(task, examples, completions, truncated)]


def grade_all(
    task: Task, examples: Sequence[Example], completions: Sequence[str], truncated: Sequence[bool] | None = None
) -> list[Grade]:
    """Each completion's reward and correctness; `truncated` (default: none) marks those cut off."""
    cut = truncated if truncated is not None else [False] * len(completions)
    return [task.grade(text, example, was_cut) for text, example, was_cut in zip(completions, examples, cut)]
