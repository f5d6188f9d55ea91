"""The sampler's reserved KV cache, its dropping of ended rows and the update's attention kernel switch change
nothing but speed."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sspo_cli.engines.native.tuning import attention_kernel  # noqa: E402
from sspo_cli.models import build_char_tokenizer, build_tiny_model  # noqa: E402
from sspo_cli.models.generation import exponential_noise, exponential_race, rows_to_keep  # noqa: E402
from sspo_cli.models.kv_cache import new_cache, reserved_layer_class  # noqa: E402
from sspo_cli.models.logprobs import completion_logprobs  # noqa: E402
from sspo_cli.recipe import PerformanceConfig, TinyModelConfig  # noqa: E402
from sspo_cli.rollout.collect import generate  # noqa: E402

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
PROMPTS = ["12+34=", "5+6=", "12+34=", "99+1=", "5+6=", "12+34="]  # repeats and unequal lengths (left padding)


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer("0123456789+-=* ")


@pytest.fixture(scope="module")
def model(tokenizer):
    model = build_tiny_model(TINY, tokenizer, seed=0).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(5.0)  # far from uniform, so that rows end at different lengths
    return model


@pytest.mark.parametrize("share", [True, False])
def test_reserved_cache_gives_the_same_samples(model, tokenizer, share):
    rollouts = []
    for reserve in (True, False):
        torch.manual_seed(3)
        perf = PerformanceConfig(reserve_kv_cache=reserve, share_prompt_prefix=share)
        rollouts.append(generate(model, tokenizer, PROMPTS * 3, 12, 1.0, perf, with_logprobs=True))
    reserved, plain = rollouts
    assert torch.equal(reserved.input_ids, plain.input_ids)
    assert len(set(reserved.completion_mask.sum(1).tolist())) > 1  # rows ended at different lengths
    torch.testing.assert_close(reserved.logprobs, plain.logprobs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reserved.entropy, plain.entropy, rtol=1e-5, atol=1e-6)


def test_reserved_layers_write_into_their_buffer(model):
    cache = new_cache(model, reserve=5)
    layer_type = reserved_layer_class()
    assert layer_type is not None and all(type(layer) is layer_type for layer in cache.layers)
    layer = cache.layers[0]
    keys = torch.randn(3, 1, 4, 16)
    assert layer.update(keys, keys)[0] is keys  # the prompt: kept as it is
    layer.batch_select_indices(torch.tensor([0, 0, 1, 2]))  # rows copied to the completions, as the sampler does
    for step in range(3):
        new = torch.full((4, 1, 1, 16), float(step))
        out_keys, out_values = layer.update(new, new)
        assert out_keys.shape == (4, 1, 5 + step, 16) and torch.equal(out_keys[:, :, -1:], new)
        assert out_keys.data_ptr() == layer.key_buffer.data_ptr() and layer.key_buffer.shape[-2] == 5 + 5
    torch.testing.assert_close(out_keys[:, :, :4], keys[[0, 0, 1, 2]])
    assert type(new_cache(model).layers[0]) is not layer_type  # no reserve: transformers' own layers


def test_update_attention_kernel_gives_the_same_logprobs_and_restores(model, tokenizer):
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    completion = torch.randint(4, len(tokenizer), (len(PROMPTS), 5), generator=torch.Generator().manual_seed(0))
    ids = torch.cat([enc["input_ids"], completion], 1)
    mask = torch.cat([enc["attention_mask"], torch.ones_like(completion)], 1)
    assert model.config._attn_implementation == "sdpa"
    expected, _ = completion_logprobs(model, ids, mask, 5, 1.0)
    with attention_kernel(model, "eager"):
        assert model.config._attn_implementation == "eager"
        eager, _ = completion_logprobs(model, ids, mask, 5, 1.0)
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(eager, expected, rtol=1e-5, atol=1e-5)
    with attention_kernel(model, "same"):
        assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("temperature", [1.0, 1.5])
def test_dropping_ended_rows_gives_the_same_samples(model, tokenizer, temperature):
    rollouts = []
    for compact in (True, False):
        torch.manual_seed(5)
        perf = PerformanceConfig(compact_finished_rows=compact)
        rollouts.append(generate(model, tokenizer, PROMPTS * 4, 16, temperature, perf, with_logprobs=True))
    compacted, full = rollouts
    lengths = compacted.completion_mask.sum(1)
    assert (lengths < lengths.max()).float().mean() >= 0.25  # enough rows ended early for the batch to shrink
    assert torch.equal(compacted.input_ids, full.input_ids)
    torch.testing.assert_close(compacted.logprobs, full.logprobs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compacted.entropy, full.entropy, rtol=1e-5, atol=1e-6)


def test_sampler_draws_as_torch_multinomial():
    probs = torch.softmax(torch.randn(16, 30, generator=torch.Generator().manual_seed(0)) * 3, dim=-1)
    torch.manual_seed(11)
    expected = torch.multinomial(probs, 1).squeeze(-1)
    after_expected = torch.rand(4)
    torch.manual_seed(11)
    assert torch.equal(exponential_race(probs, exponential_noise(16, 30, probs.device)), expected)
    assert torch.equal(torch.rand(4), after_expected)  # the same random numbers were taken
    torch.manual_seed(11)
    live = torch.tensor([1, 4, 9])  # rows still in the batch: each draws what it drew in the whole batch
    assert torch.equal(exponential_race(probs[live], exponential_noise(16, 30, probs.device)[live]), expected[live])


def test_rows_to_keep_waits_for_a_quarter_of_the_batch():
    assert rows_to_keep(torch.tensor([False, False, False, False])) is None
    assert rows_to_keep(torch.tensor([True] + [False] * 4)) is None  # 1 of 5 ended: not yet worth a copy
    assert rows_to_keep(torch.tensor([True, False, False, True])).tolist() == [1, 2]
