"""A population's rollouts are, member by member, the rollouts each member's own run samples."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from sspo_cli.models import build_char_tokenizer, build_tiny_model  # noqa: E402
from sspo_cli.models.population import Population  # noqa: E402
from sspo_cli.recipe import PerformanceConfig, TinyModelConfig  # noqa: E402
from sspo_cli.rollout.collect import generate  # noqa: E402
from sspo_cli.rollout.population import generate_population  # noqa: E402

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)
GROUP = 4


def test_each_members_rollout_is_its_standalone_rollout():
    tokenizer = build_char_tokenizer("0123456789+-=* ")
    models = [build_tiny_model(TINY, tokenizer, seed=seed) for seed in range(3)]
    with torch.no_grad():  # far from uniform, so that rows end at different lengths
        for model in models:
            model.model.embed_tokens.weight.mul_(5.0)
    population = Population.stack(models)
    distinct = [["12+34=", "5+6=", "99+1="], ["7+8=", "7+8=", "10+20="], ["44+55=", "1+1=", "2+9="]]  # one repeat
    prompts = [[p for p in member for _ in range(GROUP)] for member in distinct]
    seeds = [21, 22, 23]
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    together = generate_population(population, models[0], tokenizer, prompts, 10, 1.0, generators)
    for member, (model, seed) in enumerate(zip(models, seeds)):
        torch.manual_seed(seed)
        alone = generate(model, tokenizer, prompts[member], 10, 1.0, PerformanceConfig(), with_logprobs=True)
        mine = together[member]
        assert mine.completions == alone.completions and mine.truncated == alone.truncated
        assert torch.equal(mine.prompt_index, alone.prompt_index)
        assert torch.equal(mine.completion_mask, alone.completion_mask)
        assert torch.equal(mine.completion_ids, alone.completion_ids)
        torch.testing.assert_close(mine.logprobs, alone.logprobs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mine.entropy, alone.entropy, rtol=1e-5, atol=1e-5)
        # Prompts may carry more left padding (every member's padded to one width); the real tokens are the same.
        prompt_len = alone.input_ids.shape[1] - alone.completion_len
        extra = mine.input_ids.shape[1] - alone.input_ids.shape[1]
        assert torch.equal(
            mine.input_ids[:, extra : extra + prompt_len][alone.attention_mask[:, :prompt_len].bool()],
            alone.input_ids[:, :prompt_len][alone.attention_mask[:, :prompt_len].bool()],
        )
    assert len({len(c) for r in together for c in r.completions}) > 2
