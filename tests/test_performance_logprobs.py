"""Chunked log-probs equal the naive full log-softmax, in values and in gradients."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from transformers import AutoModelForCausalLM, Qwen2Config  # noqa: E402

import sspo_cli.models.logprobs as logprobs  # noqa: E402
from sspo_cli.models.logprobs import chunk_rows_for, completion_logits, completion_logprobs  # noqa: E402

VOCAB, ROWS, PROMPT, COMPLETION = 3000, 12, 5, 6


@pytest.fixture(scope="module")
def model():
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, VOCAB, (ROWS, PROMPT + COMPLETION), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[:3, :2] = 0  # some left padding
    input_ids[:3, :2] = 0
    return input_ids, attention_mask


def naive(model, input_ids, attention_mask, temperature):
    logits = completion_logits(model, input_ids, attention_mask, COMPLETION)
    logp_all = torch.log_softmax(logits.float() / temperature, dim=-1)
    tokens = input_ids[:, -COMPLETION:]
    return logp_all.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(logp_all.exp() * logp_all).sum(-1)


def grads_of(model, logp):
    model.zero_grad(set_to_none=True)
    (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("separable_head", [True, False], ids=["lm-head-chunks", "logits-chunks"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_logprobs_match_the_full_log_softmax(model, batch, monkeypatch, separable_head, temperature):
    if not separable_head:
        monkeypatch.setattr(logprobs, "has_separable_head", lambda _model: False)
    input_ids, attention_mask = batch
    chunk_mb = 4 * COMPLETION * VOCAB * 5 / 2**20  # 5 rows per chunk: 3 chunks, the last one short
    assert chunk_rows_for(chunk_mb, COMPLETION, VOCAB) == 5

    expected_logp, expected_entropy = naive(model, input_ids, attention_mask, temperature)
    expected_grads = grads_of(model, expected_logp)
    logp, _ = completion_logprobs(model, input_ids, attention_mask, COMPLETION, temperature, chunk_mb=chunk_mb)
    got_grads = grads_of(model, logp)
    torch.testing.assert_close(logp, expected_logp.detach(), rtol=1e-5, atol=1e-5)
    for got, expected in zip(got_grads, expected_grads):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)

    with torch.inference_mode():
        logp, entropy = completion_logprobs(
            model, input_ids, attention_mask, COMPLETION, temperature, chunk_mb=chunk_mb, with_entropy=True
        )
    torch.testing.assert_close(logp, expected_logp.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, expected_entropy.detach(), rtol=1e-5, atol=1e-5)


def test_the_tiny_models_are_separable():
    from sspo_cli.models import build_char_tokenizer, build_tiny_model
    from sspo_cli.recipe import TinyModelConfig

    tokenizer = build_char_tokenizer("0123456789+=")
    for architecture in ("qwen2", "llama"):
        assert logprobs.has_separable_head(
            build_tiny_model(
                TinyModelConfig(
                    architecture=architecture,
                    hidden_size=16,
                    num_layers=1,
                    num_heads=2,
                    num_kv_heads=1,
                    intermediate_size=32,
                ),
                tokenizer,
                0,
            )
        )
