"""The project's sampling loop: the right distribution, the right log-probs, the right shortcuts."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from sspo_cli.models import build_char_tokenizer, build_tiny_model  # noqa: E402
from sspo_cli.models.generation import draw  # noqa: E402
from sspo_cli.models.logprobs import completion_logits, gather_logprobs, token_entropy  # noqa: E402
from sspo_cli.recipe import PerformanceConfig, TinyModelConfig  # noqa: E402
from sspo_cli.rollout.collect import distinct_prompts, generate  # noqa: E402

ALPHABET = "0123456789+-=* "
TINY = TinyModelConfig(
    hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64, max_positions=64
)
PROMPTS = ["12+34=", "5+6=", "12+34=", "99+1=", "5+6=", "12+34="]  # repeats and unequal lengths (left padding)


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer(ALPHABET)


@pytest.fixture(scope="module")
def model(tokenizer):
    """A tiny model whose next-token distributions are far from uniform (random init is nearly flat)."""
    model = build_tiny_model(TINY, tokenizer, seed=0).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(5.0)  # tied: top token ~55%, 16 tokens above 1%
    return model


def fresh_forward_logprobs(model, rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        logits = completion_logits(model, rollout.input_ids, rollout.attention_mask, rollout.completion_len)
        return gather_logprobs(logits, rollout.completion_ids, temperature), token_entropy(logits, temperature)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("share", [True, False])
def test_sampling_logprobs_equal_a_fresh_forward(model, tokenizer, temperature, share):
    torch.manual_seed(1)
    perf = PerformanceConfig(share_prompt_prefix=share)
    rollout = generate(model, tokenizer, PROMPTS * 4, 8, temperature, perf, with_logprobs=True)
    expected_logp, expected_entropy = fresh_forward_logprobs(model, rollout, temperature)
    counted = rollout.completion_mask.bool()
    assert counted.sum() > len(PROMPTS)  # something was sampled beyond the first token
    torch.testing.assert_close(rollout.logprobs[counted], expected_logp[counted], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(rollout.entropy[counted], expected_entropy[counted], rtol=1e-4, atol=1e-4)


def test_shared_prefix_forward_matches_the_plain_forward_in_values_and_gradients(model, tokenizer):
    torch.manual_seed(2)
    rollout = generate(model, tokenizer, PROMPTS * 2, 6, 1.0)
    rows = torch.tensor([5, 0, 2, 7, 8, 11, 3])  # a shuffled mini-batch: prompts repeat within it

    def logp_and_grads(prompt_index):
        model.zero_grad(set_to_none=True)
        logits = completion_logits(
            model, rollout.input_ids[rows], rollout.attention_mask[rows], rollout.completion_len, prompt_index
        )
        logp = gather_logprobs(logits, rollout.completion_ids[rows], 1.0)
        (logp * rollout.completion_mask[rows]).sum().backward()
        return logp.detach(), [p.grad.clone() for p in model.parameters()]

    plain_logp, plain_grads = logp_and_grads(None)
    shared_logp, shared_grads = logp_and_grads(rollout.prompt_index[rows])
    counted = rollout.completion_mask[rows].bool()
    torch.testing.assert_close(shared_logp[counted], plain_logp[counted], rtol=1e-4, atol=1e-5)
    for shared, plain in zip(shared_grads, plain_grads):
        torch.testing.assert_close(shared, plain, rtol=1e-3, atol=1e-5)


def test_greedy_decoding_matches_transformers_generate(model, tokenizer):
    ours = generate(model, tokenizer, PROMPTS, 8, None)
    theirs = generate(model, tokenizer, PROMPTS, 8, None, PerformanceConfig(sampler="hf_generate"))
    assert ours.completions == theirs.completions
    assert torch.equal(ours.completion_mask, theirs.completion_mask)


def test_trim_padding_keeps_only_the_longest_completion(model, tokenizer):
    torch.manual_seed(3)
    trimmed = generate(model, tokenizer, PROMPTS * 4, 12, 1.0)
    torch.manual_seed(3)
    full = generate(model, tokenizer, PROMPTS * 4, 12, 1.0, PerformanceConfig(trim_padding=False))
    assert full.completion_len == 12
    assert trimmed.completion_len == int(full.completion_mask.sum(1).max())
    assert trimmed.completions == full.completions  # same random stream: stopping early draws nothing else


def test_distinct_prompts_keeps_first_seen_order():
    distinct, index = distinct_prompts(["b", "a", "b", "c", "a"])
    assert distinct == ["b", "a", "c"]
    assert index.tolist() == [0, 1, 0, 2, 1]


# --------------------------------------------------------------------------- the distribution


def chi_square(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int]:
    """Pearson's statistic and degrees of freedom, rare categories pooled so each expects >= 5."""
    n = counts.sum().item()
    order = torch.argsort(probs, descending=True)
    observed, expected = [], []
    pooled_obs = pooled_exp = 0.0
    for i in order.tolist():
        if probs[i].item() * n >= min_expected:
            observed.append(counts[i].item())
            expected.append(probs[i].item() * n)
        else:
            pooled_obs += counts[i].item()
            pooled_exp += probs[i].item() * n
    if pooled_exp > 0:
        observed.append(pooled_obs)
        expected.append(pooled_exp)
    stat = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    return stat, len(observed) - 1


def chi_square_critical(dof: int, z: float = 3.72) -> float:
    """Upper critical value at about p = 1e-4 (z = 3.72), by the Wilson-Hilferty approximation."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_tokens_are_drawn_from_softmax_of_logits_over_temperature(model, tokenizer, temperature):
    """First and second tokens' frequencies against the model's own softmax(logits / T)."""
    draws = 40_000
    prompt = "37+45="
    torch.manual_seed(4)
    rollout = generate(model, tokenizer, [prompt] * draws, 2, temperature, PerformanceConfig(trim_padding=False))
    completion = rollout.completion_ids
    vocab = len(tokenizer)

    enc = tokenizer([prompt], return_tensors="pt")
    with torch.inference_mode():
        first_logits = model(**enc).logits[0, -1]
    first_probs = torch.softmax(first_logits / temperature, -1)
    assert first_probs.max() < 0.9 and (first_probs > 0.01).sum() >= 3  # a distribution worth testing

    first_counts = torch.bincount(completion[:, 0], minlength=vocab).double()
    stat, dof = chi_square(first_counts, first_probs.double())
    assert stat < chi_square_critical(dof), (stat, dof)
    # The same draws must fail against a slightly different temperature: the test has power.
    wrong = torch.softmax(first_logits / (temperature * 1.15), -1).double()
    assert chi_square(first_counts, wrong)[0] > 3 * chi_square_critical(dof)

    # Second token, given the most frequent first token: exercises the KV-cache decoding step.
    first = int(first_counts.argmax())
    assert first != tokenizer.eos_token_id
    with torch.inference_mode():
        ids = torch.cat([enc["input_ids"], torch.tensor([[first]])], dim=1)
        second_probs = torch.softmax(model(input_ids=ids).logits[0, -1] / temperature, -1).double()
    second_counts = torch.bincount(completion[completion[:, 0] == first, 1], minlength=vocab).double()
    stat, dof = chi_square(second_counts, second_probs)
    assert stat < chi_square_critical(dof), (stat, dof)


def test_draw_is_greedy_without_temperature():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, -1.0, 0.0]])
    token, logp, entropy = draw(logits, None, with_logprobs=True)
    assert token.tolist() == [1, 0]
    torch.testing.assert_close(logp, torch.log_softmax(logits, -1).gather(-1, token[:, None]).squeeze(-1))
    assert entropy.shape == (2,)


@pytest.mark.parametrize("sampler", ["kv_cache", "hf_generate"])
def test_rows_cut_off_at_max_new_tokens_are_marked_truncated(model, tokenizer, sampler):
    """Truncated: every column is the completion's and the last is not <eos> (the rewards then score nothing)."""
    torch.manual_seed(4)
    perf = PerformanceConfig(sampler=sampler, trim_padding=False)
    for max_new_tokens in (1, 12):
        rollout = generate(model, tokenizer, PROMPTS * 4, max_new_tokens, 1.0, perf)
        full = rollout.completion_mask.sum(1) == max_new_tokens
        last_is_eos = rollout.completion_ids[:, -1] == tokenizer.eos_token_id
        assert rollout.truncated == (full & ~last_is_eos).tolist()
        if max_new_tokens == 1:
            assert any(rollout.truncated)
    rows = torch.tensor([3, 0, 7])
    assert rollout.select(rows).truncated == [rollout.truncated[i] for i in rows.tolist()]
