"""Sampling completions from the policy and scoring them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    completion_mask: torch.Tensor  # [N, Tc], 1 for completion tokens up to and including <eos>
    completions: list[str]  # decoded text before <eos>
    # Rows with equal prompt_index share their prompt (the group of a group-relative advantage). [N]
    prompt_index: torch.Tensor | None = None
    # From the sampling pass, at the sampling temperature; only where asked for. [N, Tc] float32
    logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    # Completions that ended without <eos> (cut off at max_new_tokens); their rewards see it. [N]
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


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int,
    temperature: float | None,
    performance: PerformanceConfig | None = None,
    with_logprobs: bool = False,
) -> Rollout:
    """Sample at `temperature` from exactly the model's distribution (no top-k/top-p); None = greedy.

    `performance` picks the sampler and its shortcuts (defaults: `PerformanceConfig()`);
    `with_logprobs` asks the project's sampler for the tokens' log-probs and entropies.
    """
    import torch

    from sspo_cli.recipe import PerformanceConfig

    perf = performance or PerformanceConfig()
    device = next(model.parameters()).device
    distinct, prompt_index = distinct_prompts(prompts)
    prompt_index = prompt_index.to(device)
    logprobs = entropy = None
    if perf.sampler == "hf_generate":
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True).to(device)
        prompt_ids, prompt_mask = enc["input_ids"], enc["attention_mask"]
        completion = hf_generate(model, tokenizer, prompt_ids, prompt_mask, max_new_tokens, temperature)
    else:
        from sspo_cli.sampling import sample_completions

        shared = distinct if perf.share_prompt_prefix else list(prompts)
        enc = tokenizer(shared, return_tensors="pt", padding=True).to(device)
        rows = prompt_index if perf.share_prompt_prefix else torch.arange(len(prompts), device=device)
        sample = sample_completions(
            model,
            enc["input_ids"],
            enc["attention_mask"],
            rows,
            max_new_tokens,
            temperature,
            tokenizer.eos_token_id,
            tokenizer.pad_token_id,
            with_logprobs=with_logprobs,
            stop_early=perf.trim_padding,
        )
        prompt_ids, prompt_mask = enc["input_ids"][rows], enc["attention_mask"][rows]
        completion, logprobs, entropy = sample.completion_ids, sample.logprobs, sample.entropy
    completion_mask = mask_through_first_eos(completion, tokenizer.eos_token_id)
    truncated = (~(completion == tokenizer.eos_token_id).any(dim=1)).tolist()
    if perf.trim_padding:
        keep = longest_completion(completion_mask)
        completion, completion_mask = completion[:, :keep], completion_mask[:, :keep]
        logprobs = None if logprobs is None else logprobs[:, :keep]
        entropy = None if entropy is None else entropy[:, :keep]
    attention_mask = torch.cat([prompt_mask, completion_mask.to(prompt_mask.dtype)], dim=1)
    texts = decode_completions(tokenizer, completion, completion_mask, tokenizer.eos_token_id)
    return Rollout(
        torch.cat([prompt_ids, completion], dim=1),
        attention_mask,
        completion_mask.float(),
        texts,
        prompt_index,
        logprobs,
        entropy,
        truncated,
    )


def hf_generate(
    model,
    tokenizer,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float | None,
) -> torch.Tensor:
    """transformers' `model.generate`; returns the completion columns only. [N, <= max_new_tokens]"""
    import torch
    from transformers import GenerationConfig

    config = GenerationConfig(
        do_sample=temperature is not None,
        temperature=temperature if temperature is not None else 1.0,
        top_k=None,
        top_p=None,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
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


def mask_through_first_eos(completion: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 for every token up to and including the first <eos> of each row (all of them if none)."""
    is_eos = (completion == eos_id).long()
    eos_before = is_eos.cumsum(dim=1) - is_eos  # how many <eos> strictly before this position
    return (eos_before == 0).long()


def decode_completions(
    tokenizer: PreTrainedTokenizerBase, completion: torch.Tensor, mask: torch.Tensor, eos_id: int
) -> list[str]:
    texts = []
    for row, row_mask in zip(completion.tolist(), mask.tolist()):
        tokens = [t for t, m in zip(row, row_mask) if m and t != eos_id]
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


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # share of completions graded correct (reward 1, or every answer reward 1)
    mean_reward: float
    mean_length: float  # completion tokens, <eos> included
    size: int

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}/accuracy": self.accuracy,
            f"{prefix}/mean_reward": self.mean_reward,
            f"{prefix}/mean_length": self.mean_length,
        }


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example],
    max_new_tokens: int,
    batch_size: int,
    temperature: float | None = None,
    performance: PerformanceConfig | None = None,
) -> EvalResult:
    """Greedy (default) or sampled decoding of every example, scored by the task."""
    grades: list[Grade] = []
    lengths: list[float] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(examples), batch_size):
        batch = examples[start : start + batch_size]
        rollout = generate(model, tokenizer, [e.prompt for e in batch], max_new_tokens, temperature, performance)
        grades += grade_all(task, batch, rollout.completions, rollout.truncated)
        lengths += rollout.completion_mask.sum(1).tolist()
    model.train(was_training)
    n = max(len(grades), 1)
    return EvalResult(
        accuracy=sum(g.correct for g in grades) / n,
        mean_reward=sum(g.reward for g in grades) / n,
        mean_length=sum(lengths) / n,
        size=len(grades),
    )
