"""Gradient behaviour the spec requires of every objective: on-policy equals the vanilla policy
gradient (under the objective's aggregation), omega in the metrics equals omega from autograd,
hard clips zero gradients outside their band (GMPO only on the advantage's side), soft gates
never do."""

from __future__ import annotations

import math

import pytest
import torch

from sspo_cli.objectives import build_objective, objective_names

# Every objective with its defaults, then variants of their options.
ALL_CONFIGS = (
    [{"name": name} for name in objective_names()]
    + [
        {"name": "grpo", "agg": "token_mean"},
        {"name": "grpo", "eps_low": 0.1, "eps_high": 0.28},
        {"name": "sapo", "tau_pos": 3.0, "tau_neg": 0.3},
        {"name": "cispo", "agg": "seq_mean_token_mean"},
        {"name": "cispo", "eps_low": 0.2, "eps_high": 0.2},
        {"name": "dppo_tv", "agg": "seq_mean_token_mean", "delta_low": 0.05, "delta_high": 0.02},
        {"name": "dppo_kl", "ratio_cap": 1.2},
        {"name": "vespo", "agg": "seq_mean_token_mean", "k_pos": 0.5, "lambda_pos": 0.7},
        {"name": "luspo", "eps_low": 0.05, "eps_high": 0.1},
    ]
    + [
        {"name": "sspo", "gate": gate, **taus}
        for gate in ("sigmoid", "arctan", "erf", "softsign")
        for taus in ({}, {"tau_pos": 2.5, "tau_neg": 0.4})
    ]
)
SOFT_CONFIGS = [c for c in ALL_CONFIGS if c["name"] in ("sapo", "sspo")]


def config_id(config: dict) -> str:
    return "-".join(str(v) for v in config.values())


def random_batch(seed: int, batch: int = 7, width: int = 6, dtype=torch.float64):
    """Random lengths (one completion empty), advantages of both signs and one zero."""
    generator = torch.Generator().manual_seed(seed)
    old_logp = -torch.rand(batch, width, generator=generator, dtype=torch.float64) * 4
    lengths = torch.randint(1, width + 1, (batch,), generator=generator)
    lengths[2] = 0
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(torch.float32)
    advantages = torch.randn(batch, generator=generator, dtype=torch.float64)
    advantages[4] = 0.0
    return old_logp.to(dtype), advantages.to(dtype), mask, generator


def vanilla_gradient(advantages: torch.Tensor, mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """d loss / d logp of the vanilla policy gradient: -A_b / (B' L_b), -A_b / N, or -A_b / B'."""
    mask = mask.to(torch.float64)
    lengths = mask.sum(-1)
    if aggregation == "token_mean":
        scale = 1.0 / mask.sum()
    elif aggregation == "seq_mean_token_sum":
        scale = 1.0 / (lengths > 0).sum().to(torch.float64)
    else:
        scale = 1.0 / ((lengths > 0).sum() * lengths.clamp(min=1))[:, None]
    return -advantages[:, None].to(torch.float64) * scale * mask


def autograd_omega(config: dict, logp, old_logp, advantages, mask):
    """(out, omega, selected): omega = grad / vanilla on counted tokens with A != 0."""
    logp = logp.detach().clone().requires_grad_(True)
    out = build_objective(config)(logp, old_logp, advantages, mask)
    out.loss.backward()
    vanilla = vanilla_gradient(advantages, mask, build_objective(config).aggregation)
    selected = (mask > 0) & (advantages != 0)[:, None]
    omega = logp.grad.to(torch.float64) / torch.where(selected, vanilla, 1.0)
    return out, omega, selected, logp.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", ALL_CONFIGS, ids=config_id)
def test_on_policy_gradient_is_vanilla_policy_gradient(config: dict, dtype) -> None:
    old_logp, advantages, mask, _ = random_batch(seed=1, dtype=dtype)
    logp = old_logp.clone().requires_grad_(True)
    out = build_objective(config)(logp, old_logp, advantages, mask)
    out.loss.backward()
    expected = vanilla_gradient(advantages, mask, build_objective(config).aggregation)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(logp.grad.to(torch.float64), expected, rtol=tolerance, atol=tolerance)

    metrics = out.metrics
    for key in ("grad_weight/mean", "grad_weight/pos_mean", "grad_weight/neg_mean", "weight/seq_mean"):
        assert metrics[key] == pytest.approx(1.0, abs=10 * tolerance), key
    assert metrics["grad_weight/saturated_frac"] == 0.0
    assert metrics["weight/seq_var"] == pytest.approx(0.0, abs=10 * tolerance)
    assert metrics["kl/k3"] == 0.0
    assert metrics["ratio/token_mean"] == metrics["ratio/seq_max"] == 1.0


@pytest.mark.parametrize("config", ALL_CONFIGS, ids=config_id)
def test_omega_metrics_equal_autograd_omega(config: dict) -> None:
    old_logp, advantages, mask, generator = random_batch(seed=2)
    logp = old_logp + 0.4 * torch.randn(old_logp.shape, generator=generator, dtype=old_logp.dtype)
    out, omega, selected, _ = autograd_omega(config, logp, old_logp, advantages, mask)
    positive = selected & (advantages > 0)[:, None]
    negative = selected & (advantages < 0)[:, None]
    threshold = 0.1
    assert out.metrics["grad_weight/mean"] == pytest.approx(omega[selected].mean().item(), rel=1e-10)
    assert out.metrics["grad_weight/pos_mean"] == pytest.approx(omega[positive].mean().item(), rel=1e-10)
    assert out.metrics["grad_weight/neg_mean"] == pytest.approx(omega[negative].mean().item(), rel=1e-10)
    saturated = (omega[selected] < threshold).double().mean().item()
    assert out.metrics["grad_weight/saturated_frac"] == pytest.approx(saturated, abs=1e-12)


def test_grpo_clips_tokens_outside_the_band_to_zero_gradient() -> None:
    eps_low, eps_high = 0.2, 0.28
    ratios = torch.tensor([[0.5, 0.9, 1.1, 1.5], [0.5, 0.9, 1.1, 1.5]], dtype=torch.float64)
    advantages = torch.tensor([1.0, -1.0], dtype=torch.float64)
    old_logp = torch.full_like(ratios, -1.0)
    mask = torch.ones_like(ratios)
    config = {"name": "grpo", "eps_low": eps_low, "eps_high": eps_high}
    out, omega, _, grad = autograd_omega(config, old_logp + ratios.log(), old_logp, advantages, mask)
    # A > 0: only r > 1 + eps_high is clipped; A < 0: only r < 1 - eps_low.
    clipped = torch.tensor([[False, False, False, True], [True, False, False, False]])
    assert torch.all(grad[clipped] == 0)
    assert torch.all(grad[~clipped] != 0)
    torch.testing.assert_close(omega[~clipped], ratios[~clipped])  # unclipped: omega = r
    assert out.metrics["grad_weight/saturated_frac"] == pytest.approx(2 / 8)


def test_gspo_clips_whole_sequences_outside_the_band() -> None:
    # Sequence log-ratios: 0.1 (s = 1.105), -0.1 (s = 0.905), 0.001 (s ~ 1.001, in the band).
    log_ratios = torch.tensor([[0.1, 0.1], [-0.1, -0.1], [0.1, -0.1], [0.001, 0.001]], dtype=torch.float64)
    advantages = torch.tensor([1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
    old_logp = torch.full_like(log_ratios, -2.0)
    mask = torch.ones_like(log_ratios)
    config = {"name": "gspo", "eps_low": 0.05, "eps_high": 0.05}
    out, _, _, grad = autograd_omega(config, old_logp + log_ratios, old_logp, advantages, mask)
    assert torch.all(grad[0] == 0)  # A > 0 and s above 1 + eps_high
    assert torch.all(grad[1] != 0)  # A > 0 and s below the band: min keeps s, not clipped
    assert torch.all(grad[2] != 0)  # s = 1 inside the band
    assert torch.all(grad[3] != 0)
    assert out.metrics["grad_weight/saturated_frac"] == pytest.approx(2 / 8)


def test_gmpo_clip_is_one_sided_by_advantage_sign() -> None:
    eps_low, eps_high = 0.3, 0.4
    d = torch.tensor([-0.6, -0.1, 0.2, 0.7], dtype=torch.float64)
    log_ratios = torch.stack([d, d])
    advantages = torch.tensor([2.0, -2.0], dtype=torch.float64)
    old_logp = torch.full_like(log_ratios, -1.5)
    config = {"name": "gmpo", "eps_low": eps_low, "eps_high": eps_high}
    _, _, _, grad = autograd_omega(config, old_logp + log_ratios, old_logp, advantages, torch.ones_like(d).expand(2, 4))
    # A > 0: only d > eps_high stops; d < -eps_low keeps its gradient (and vice versa).
    assert torch.equal(grad[0] == 0, torch.tensor([False, False, False, True]))
    assert torch.equal(grad[1] == 0, torch.tensor([True, False, False, False]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("config", SOFT_CONFIGS, ids=config_id)
def test_soft_gates_never_zero_the_gradient(config: dict, dtype) -> None:
    d = torch.linspace(-3.0, 3.0, 61, dtype=torch.float64)
    log_ratios = torch.stack([d, d]).to(dtype)
    advantages = torch.tensor([1.0, -1.0], dtype=dtype)
    old_logp = torch.full_like(log_ratios, -1.0)
    logp = (old_logp + log_ratios).requires_grad_(True)
    build_objective(config)(logp, old_logp, advantages, torch.ones_like(logp)).loss.backward()
    assert torch.all(logp.grad != 0)
    assert torch.all(torch.isfinite(logp.grad))


def weight_bounds(config: dict, tau: float) -> tuple[float, float]:
    """Analytic range of the sequence weight divided by its on-policy value."""
    gate = config.get("gate", "sigmoid")
    if gate == "sigmoid":  # (4/tau) * sigma(tau*(r-1)) with r in (0, inf), over 2/tau
        return 2.0 / (1.0 + math.exp(tau)), 2.0
    log_bound = {"arctan": math.pi / (2 * tau), "erf": math.sqrt(math.pi) / (2 * tau), "softsign": 1.0 / tau}[gate]
    return math.exp(-log_bound), math.exp(log_bound)


@pytest.mark.parametrize("config", SOFT_CONFIGS, ids=config_id)
def test_soft_gate_weight_stays_within_analytic_bounds(config: dict) -> None:
    d = torch.tensor([[-60.0, -20.0, -1.0, 0.0, 1.0, 20.0, 60.0]], dtype=torch.float64)
    objective = build_objective(config)
    for sign in (1.0, -1.0):
        tau = objective.config.tau_pos if sign > 0 else objective.config.tau_neg
        low, high = weight_bounds(config, tau)
        for row in (d, d[:, :1], d[:, -1:], d[:, 2:5]):
            old_logp = torch.full_like(row, -1.0)
            logp = (old_logp + row).requires_grad_(True)
            out = objective(logp, old_logp, torch.tensor([sign], dtype=torch.float64), torch.ones_like(row))
            out.loss.backward()
            weight = out.metrics["weight/seq_mean"]
            assert low <= weight <= high
            assert torch.all(torch.isfinite(logp.grad))
