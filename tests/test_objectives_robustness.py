"""Extreme and malformed inputs: finite losses and gradients, clear errors, no side effects."""

from __future__ import annotations

import math

import pytest
import torch

from sspo_cli.objectives import METRIC_KEYS, ObjectiveOutput, build_objective, objective_names

# Every objective with its defaults (sspo's gate: sigmoid), then variants of their options.
CONFIGS = [{"name": name} for name in objective_names()] + [
    {"name": "grpo", "agg": "token_mean"},
    {"name": "sspo", "gate": "arctan"},
    {"name": "sspo", "gate": "erf"},
    {"name": "sspo", "gate": "softsign"},
]


def config_id(config: dict) -> str:
    return "-".join(str(v) for v in config.values())


def run(config, logp, old_logp, advantages, mask, **kwargs) -> tuple[ObjectiveOutput, torch.Tensor]:
    logp = logp.detach().clone().requires_grad_(True)
    out = build_objective(config)(logp, old_logp, advantages, mask, **kwargs)
    out.loss.backward()
    return out, logp.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_log_ratios_of_plus_minus_60_stay_finite(config: dict, dtype) -> None:
    log_ratio = torch.tensor([[60.0, -60.0, 60.0], [-60.0, -60.0, -60.0], [60.0, 0.0, 0.5]], dtype=dtype)
    old_logp = torch.tensor([[-70.0, -1.0, -65.0], [-0.1, -0.2, -0.3], [-61.0, -2.0, -3.0]], dtype=dtype)
    advantages = torch.tensor([1.5, -2.0, -0.7], dtype=dtype)
    ref_logp = old_logp - 60.0
    config = {**config, "beta": 0.1}
    out, grad = run(config, old_logp + log_ratio, old_logp, advantages, torch.ones_like(log_ratio), ref_logp=ref_logp)
    assert torch.isfinite(out.loss)
    assert torch.all(torch.isfinite(grad))
    assert set(out.metrics) == set(METRIC_KEYS)
    assert all(math.isfinite(v) for v in out.metrics.values()), out.metrics


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_empty_completions_count_nowhere(config: dict) -> None:
    generator = torch.Generator().manual_seed(0)
    old_logp = -torch.rand(3, 4, generator=generator, dtype=torch.float64)
    logp = old_logp + 0.3 * torch.randn(3, 4, generator=generator, dtype=torch.float64)
    advantages = torch.tensor([1.0, -0.5, 0.8], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float64)
    base, base_grad = run(config, logp, old_logp, advantages, mask)

    # The same batch with empty completions (and garbage in them) interleaved.
    extra = torch.tensor([[5.0, -9.0, 3.0, 40.0]], dtype=torch.float64)
    order = [0, 3, 1, 4, 2]
    padded_logp = torch.cat([logp, extra, -extra])[order]
    padded_old = torch.cat([old_logp, -extra, extra])[order]
    padded_adv = torch.cat([advantages, torch.tensor([7.0, -7.0], dtype=torch.float64)])[order]
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.float64)])[order]
    out, grad = run(config, padded_logp, padded_old, padded_adv, padded_mask)
    assert out.loss.item() == pytest.approx(base.loss.item(), rel=1e-12)
    torch.testing.assert_close(grad[[0, 2, 4]], base_grad, rtol=1e-12, atol=1e-15)
    assert torch.all(grad[[1, 3]] == 0)
    for key in METRIC_KEYS:
        assert out.metrics[key] == pytest.approx(base.metrics[key], rel=1e-9, abs=1e-12, nan_ok=True), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_a_batch_without_any_counted_token_gives_zero(config: dict, dtype) -> None:
    logp = torch.randn(2, 3, dtype=dtype)
    out, grad = run(config, logp, logp - 1.0, torch.tensor([1.0, -1.0], dtype=dtype), torch.zeros(2, 3))
    assert out.loss.item() == 0.0
    assert torch.all(grad == 0)
    assert set(out.metrics) == set(METRIC_KEYS)  # every statistic is over nothing: NaN
    assert all(math.isnan(v) for v in out.metrics.values())


@pytest.mark.parametrize("shape", [(0, 4), (3, 0), (0, 0)])
def test_degenerate_shapes(shape) -> None:
    logp = torch.zeros(shape)
    out, grad = run({"name": "sspo"}, logp, logp, torch.zeros(shape[0]), torch.ones(shape))
    assert out.loss.item() == 0.0
    assert grad.shape == shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_all_zero_advantages_give_zero_gradient(config: dict, dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    old_logp = -torch.rand(4, 5, generator=generator).to(dtype)
    logp = old_logp + torch.randn(4, 5, generator=generator).to(dtype)
    out, grad = run(config, logp, old_logp, torch.zeros(4, dtype=dtype), torch.ones(4, 5))
    assert out.loss.item() == 0.0
    assert torch.all(grad == 0)
    for key in METRIC_KEYS:  # nothing informative: weight and omega statistics are NaN
        finite = math.isfinite(out.metrics[key])
        assert finite == (not key.startswith(("weight/", "grad_weight/"))), key


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_give_a_float32_loss(dtype) -> None:
    old_logp = -torch.rand(3, 4).to(dtype)
    logp = (old_logp + 0.1).requires_grad_(True)
    out = build_objective({"name": "sspo"})(logp, old_logp, torch.tensor([1.0, -1.0, 0.5]), torch.ones(3, 4))
    assert out.loss.dtype == torch.float32
    out.loss.backward()
    assert logp.grad.dtype == dtype
    assert torch.all(torch.isfinite(logp.grad.float()))


def test_non_finite_padding_is_ignored() -> None:
    old_logp = torch.tensor([[-1.0, float("-inf")], [-2.0, float("nan")]])
    logp = torch.tensor([[-0.9, float("-inf")], [-2.1, float("inf")]])
    mask = torch.tensor([[True, False], [True, False]])
    for config in CONFIGS:
        out, grad = run(config, logp, old_logp, torch.tensor([1.0, -1.0]), mask)
        assert torch.isfinite(out.loss), config
        assert torch.all(grad == torch.where(mask, grad, 0.0)) and torch.all(torch.isfinite(grad)), config
        assert all(math.isfinite(v) for v in out.metrics.values()), config


def test_same_inputs_same_outputs_and_inputs_untouched() -> None:
    generator = torch.Generator().manual_seed(5)
    old_logp = -torch.rand(4, 6, generator=generator)
    logp = (old_logp + 0.2 * torch.randn(4, 6, generator=generator)).requires_grad_(True)
    advantages, mask = torch.tensor([1.0, -1.0, 0.3, 0.0]), torch.ones(4, 6)
    snapshot = [t.detach().clone() for t in (logp, old_logp, advantages, mask)]
    objective = build_objective({"name": "sspo", "beta": 0.05})
    ref_logp = old_logp - 0.1
    first = objective(logp, old_logp, advantages, mask, ref_logp=ref_logp)
    second = objective(logp, old_logp, advantages, mask, ref_logp=ref_logp)
    assert first.loss.item() == second.loss.item()
    assert first.metrics == second.metrics
    assert logp.grad is None  # computing omega must not touch the caller's gradients
    for before, after in zip(snapshot, (logp, old_logp, advantages, mask)):
        assert torch.equal(before, after.detach())


def test_inference_mode_inputs_and_calls() -> None:
    with torch.inference_mode():
        old_logp = -torch.rand(2, 3)
        ref_logp = old_logp - 0.2
        advantages = torch.tensor([1.0, -1.0])
        mask = torch.ones(2, 3)
    objective = build_objective({"name": "gmpo", "beta": 0.1})
    logp = (old_logp.clone() + 0.1).requires_grad_(True)
    out = objective(logp, old_logp, advantages, mask, ref_logp=ref_logp)
    out.loss.backward()
    assert torch.all(torch.isfinite(logp.grad))
    with torch.inference_mode():
        evaluated = objective(logp.detach(), old_logp, advantages, mask, ref_logp=ref_logp)
    with torch.no_grad():
        no_grad = objective(logp, old_logp, advantages, mask, ref_logp=ref_logp)
    assert evaluated.loss.item() == pytest.approx(out.loss.item())
    assert evaluated.metrics == pytest.approx(out.metrics)
    assert no_grad.metrics == pytest.approx(out.metrics)


def test_bool_and_float_masks_agree() -> None:
    logp, old_logp = torch.randn(2, 3), torch.randn(2, 3)
    advantages = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    objective = build_objective({"name": "sapo"})
    losses = {objective(logp, old_logp, advantages, m).loss.item() for m in (mask, mask.bool(), mask.float())}
    assert len(losses) == 1


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ({"logp": (2, 3), "old_logp": (2, 4), "advantages": (2,), "mask": (2, 3)}, "old_logp"),
        ({"logp": (2, 3), "old_logp": (2, 3), "advantages": (3,), "mask": (2, 3)}, "advantages"),
        ({"logp": (2, 3), "old_logp": (2, 3), "advantages": (2, 1), "mask": (2, 3)}, "advantages"),
        ({"logp": (2, 3), "old_logp": (2, 3), "advantages": (2,), "mask": (3, 2)}, "mask"),
        ({"logp": (6,), "old_logp": (6,), "advantages": (6,), "mask": (6,)}, "logp"),
        ({"logp": (2, 3), "old_logp": (2, 3), "advantages": (2,), "mask": (2, 3), "ref_logp": (2, 2)}, "ref_logp"),
    ],
)
def test_mismatched_shapes_raise_value_error(shapes: dict, match: str) -> None:
    tensors = {key: torch.zeros(shape) for key, shape in shapes.items()}
    with pytest.raises(ValueError, match=match):
        build_objective({"name": "grpo"})(**tensors)


def test_beta_without_reference_raises_value_error() -> None:
    with pytest.raises(ValueError, match="ref_logp"):
        build_objective({"name": "sapo", "beta": 0.1})(
            torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2)
        )


def test_integer_log_probs_raise_value_error() -> None:
    with pytest.raises(ValueError, match="logp"):
        build_objective({"name": "sapo"})(
            torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 2), torch.ones(1), torch.ones(1, 2)
        )


def test_log_ratio_clamp_bounds_the_ratio() -> None:
    logp = torch.tensor([[0.0, -100.0]], dtype=torch.float64)
    old_logp = torch.tensor([[-100.0, 0.0]], dtype=torch.float64)
    out = build_objective({"name": "gspo", "log_ratio_clamp": 5.0})(
        logp, old_logp, torch.ones(1, dtype=torch.float64), torch.ones(1, 2)
    )
    assert out.metrics["ratio/token_max"] == pytest.approx(math.exp(5.0))
    assert out.metrics["ratio/token_min"] == pytest.approx(math.exp(-5.0))
    assert out.metrics["ratio/log_abs_mean"] == pytest.approx(5.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_one_host_sync_per_call_on_cuda() -> None:
    import warnings

    device = torch.device("cuda")
    old_logp = -torch.rand(8, 16, device=device)
    logp = (old_logp + 0.1 * torch.randn(8, 16, device=device)).requires_grad_(True)
    advantages = torch.randn(8, device=device)
    mask = torch.ones(8, 16, device=device)
    objective = build_objective({"name": "sspo", "beta": 0.1})
    objective(logp, old_logp, advantages, mask, ref_logp=old_logp)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            objective(logp, old_logp, advantages, mask, ref_logp=old_logp)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) == 1, [str(w.message) for w in syncs]  # the metrics' single tolist()
