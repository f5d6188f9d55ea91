"""Property-based tests (hypothesis) over random shapes, masks, magnitudes and configs."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sspo_cli.objectives import METRIC_KEYS, build_objective

CONFIGS = [
    {"name": "grpo"},
    {"name": "grpo", "agg": "token_mean", "eps_low": 0.1, "eps_high": 0.3},
    {"name": "gspo"},
    {"name": "gspo", "eps_low": 0.1, "eps_high": 0.1},
    {"name": "gmpo"},
    {"name": "sapo"},
    {"name": "sapo", "tau_pos": 5.0, "tau_neg": 0.2},
    {"name": "sspo", "gate": "sigmoid"},
    {"name": "sspo", "gate": "sigmoid", "tau_pos": 8.0, "tau_neg": 0.1},
    {"name": "sspo", "gate": "arctan"},
    {"name": "sspo", "gate": "erf", "tau_pos": 3.0},
    {"name": "sspo", "gate": "softsign", "tau_neg": 0.3},
    {"name": "cispo"},
    {"name": "cispo", "eps_low": 0.2, "eps_high": 0.28, "agg": "seq_mean_token_mean"},
    {"name": "dppo_tv"},
    {"name": "dppo_kl", "agg": "seq_mean_token_mean"},
    {"name": "vespo"},
    {"name": "luspo"},
    {"name": "luspo", "eps_low": 0.1, "eps_high": 0.1},
]
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw, max_magnitude: float = 80.0):
    """(logp, old_logp, advantages, mask, ref_logp) with random shape, lengths and scale."""
    rows = draw(st.integers(1, 6))
    width = draw(st.integers(1, 7))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2**31 - 1))
    magnitude = draw(st.sampled_from([1e-6, 0.05, 0.5, 3.0, max_magnitude]))
    generator = torch.Generator().manual_seed(seed)
    old_logp = -torch.rand(rows, width, generator=generator, dtype=torch.float64) * 10
    logp = old_logp + magnitude * torch.randn(rows, width, generator=generator, dtype=torch.float64)
    ref_logp = old_logp + magnitude * torch.randn(rows, width, generator=generator, dtype=torch.float64)
    lengths = torch.tensor(draw(st.lists(st.integers(0, width), min_size=rows, max_size=rows)))
    mask = torch.arange(width)[None, :] < lengths[:, None]
    advantage_values = st.one_of(st.just(0.0), st.floats(-5.0, 5.0, allow_nan=False, allow_subnormal=False))
    advantages = torch.tensor(draw(st.lists(advantage_values, min_size=rows, max_size=rows)), dtype=torch.float64)
    return logp.to(dtype), old_logp.to(dtype), advantages.to(dtype), mask, ref_logp.to(dtype)


@PROPERTY_SETTINGS
@given(config=st.sampled_from(CONFIGS), batch=batches(), beta=st.sampled_from([0.0, 0.1]))
def test_loss_and_gradient_are_finite_and_only_on_counted_tokens(config, batch, beta) -> None:
    logp, old_logp, advantages, mask, ref_logp = batch
    logp = logp.requires_grad_(True)
    out = build_objective({**config, "beta": beta})(logp, old_logp, advantages, mask, ref_logp=ref_logp)
    out.loss.backward()
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.loss.dtype == logp.dtype
    assert torch.all(torch.isfinite(logp.grad))
    assert torch.all(logp.grad[~mask] == 0)
    if beta == 0:
        assert torch.all(logp.grad[advantages == 0] == 0)
    assert tuple(out.metrics) == METRIC_KEYS
    assert all(isinstance(v, float) and not math.isinf(v) for v in out.metrics.values())
    saturated = out.metrics["grad_weight/saturated_frac"]
    assert math.isnan(saturated) or 0.0 <= saturated <= 1.0
    if mask.any():  # a float32 mean of ratios near e^20 may round past either end by a few ulps
        assert (
            out.metrics["ratio/token_min"] * (1 - 1e-6)
            <= out.metrics["ratio/token_mean"]
            <= out.metrics["ratio/token_max"] * (1 + 1e-6)
        )
        assert out.metrics["kl/k3"] >= -1e-6


@PROPERTY_SETTINGS
@given(config=st.sampled_from(CONFIGS), batch=batches())
def test_on_policy_gradient_is_vanilla_for_any_batch(config, batch) -> None:
    _, old_logp, advantages, mask, _ = batch
    logp = old_logp.clone().requires_grad_(True)
    build_objective(config)(logp, old_logp, advantages, mask).loss.backward()
    maskf = mask.to(torch.float64)
    lengths = maskf.sum(-1)
    aggregation = build_objective(config).aggregation
    if aggregation == "token_mean":
        scale = 1.0 / maskf.sum().clamp(min=1)
    elif aggregation == "seq_mean_token_sum":
        scale = 1.0 / (lengths > 0).sum().clamp(min=1).to(torch.float64)
    else:
        scale = 1.0 / ((lengths > 0).sum().clamp(min=1) * lengths.clamp(min=1))[:, None]
    expected = -advantages.to(torch.float64)[:, None] * scale * maskf
    tolerance = 1e-10 if logp.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(logp.grad.to(torch.float64), expected, rtol=tolerance, atol=tolerance)


@PROPERTY_SETTINGS
@given(config=st.sampled_from(CONFIGS), batch=batches(max_magnitude=3.0), data=st.data())
def test_completion_order_does_not_matter(config, batch, data) -> None:
    logp, old_logp, advantages, mask, _ = batch
    order = torch.tensor(data.draw(st.permutations(range(logp.shape[0]))))
    objective = build_objective(config)
    out = objective(logp, old_logp, advantages, mask)
    permuted = objective(logp[order], old_logp[order], advantages[order], mask[order])
    tolerance = 1e-9 if logp.dtype == torch.float64 else 1e-4
    assert math.isclose(out.loss.item(), permuted.loss.item(), rel_tol=tolerance, abs_tol=tolerance)
    for key in METRIC_KEYS:
        a, b = out.metrics[key], permuted.metrics[key]
        assert (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance), key


@PROPERTY_SETTINGS
@given(config=st.sampled_from(CONFIGS), batch=batches(max_magnitude=3.0), scale=st.floats(0.1, 10.0))
def test_loss_is_linear_in_the_advantages(config, batch, scale) -> None:
    # J_b = w_b * A_b with w_b independent of |A_b|: scaling A scales the loss (beta = 0).
    logp, old_logp, advantages, mask, _ = batch
    objective = build_objective(config)
    loss = objective(logp, old_logp, advantages, mask).loss.item()
    scaled = objective(logp, old_logp, advantages * scale, mask).loss.item()
    tolerance = 1e-9 if logp.dtype == torch.float64 else 1e-4
    assert math.isclose(scaled, scale * loss, rel_tol=tolerance, abs_tol=tolerance)


@PROPERTY_SETTINGS
@given(batch=batches(), beta=st.floats(0.01, 1.0))
def test_kl_penalty_is_nonnegative_and_zero_at_the_reference(batch, beta) -> None:
    logp, old_logp, advantages, mask, ref_logp = batch
    plain = build_objective({"name": "gmpo"})(logp, old_logp, advantages, mask).loss
    penalised = build_objective({"name": "gmpo", "beta": beta})
    assert penalised(logp, old_logp, advantages, mask, ref_logp=ref_logp).loss >= plain - 1e-6
    at_reference = penalised(logp, old_logp, advantages, mask, ref_logp=logp).loss
    assert at_reference.item() == plain.item()
