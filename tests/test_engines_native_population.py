"""One optimiser step over a population's stacked weights equals each member's own clipped AdamW step."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from sspo_cli.engines.native.population import clip_member_grad_norms_  # noqa: E402
from sspo_cli.models import build_char_tokenizer, build_tiny_model  # noqa: E402
from sspo_cli.models.population import Population  # noqa: E402
from sspo_cli.recipe import TinyModelConfig  # noqa: E402

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)


def gradients(model, member: int, step: int) -> dict[str, torch.Tensor]:
    """Made-up gradients of a size that clipping at 1.0 cuts for some members and not others."""
    generator = torch.Generator().manual_seed(100 * step + member)
    scale = 0.002 * (1 + member * 3)
    return {name: scale * torch.randn(p.shape, generator=generator) for name, p in model.named_parameters()}


@pytest.mark.parametrize("max_norm", [1.0, math.inf])
def test_a_stacked_step_is_each_members_own_step(max_norm):
    tokenizer = build_char_tokenizer("0123456789+-=* ")
    models = [build_tiny_model(TINY, tokenizer, seed=seed) for seed in range(3)]
    population = Population.stack(models)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01, fused=True) for m in models]
    stacked = torch.optim.AdamW(population.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    clipped = set()
    for step in range(3):
        for member, (model, optimizer) in enumerate(zip(models, optimizers)):
            for name, p in model.named_parameters():
                p.grad = gradients(model, member, step)[name]
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            optimizer.step()
            clipped |= {member} if norm > max_norm else set()
            for name, weight in population.weights.items():
                if weight.grad is None:
                    weight.grad = torch.zeros_like(weight)
                weight.grad[member] = gradients(model, member, step)[name]
        norms = clip_member_grad_norms_(population.parameters(), max_norm)
        stacked.step()
        for member, model in enumerate(models):
            own = sum(float(g.pow(2).sum()) for g in gradients(model, member, step).values()) ** 0.5
            assert float(norms[member]) == pytest.approx(own, rel=1e-5)
    assert max_norm == math.inf or 0 < len(clipped) < 3  # clipping cut some members and not others
    for member, model in enumerate(models):
        for name, p in model.named_parameters():
            torch.testing.assert_close(population.weights[name][member], p.detach(), rtol=1e-6, atol=1e-7)
