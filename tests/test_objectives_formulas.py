"""The 2026 baselines (cispo, dppo_tv, dppo_kl, vespo, luspo) against the spec, in float64:
hand-computed small cases, then the plain-Python reference (tests/spec_reference_2026.py) on random
batches for loss, gradient and every metric key, and the properties the spec states for each."""

from __future__ import annotations

import math
import random

import pytest
import torch
from spec_reference_2026 import reference, to_tensors

from sspo_cli.objectives import METRIC_KEYS, build_objective

LN = math.log
NEW = ("cispo", "dppo_tv", "dppo_kl", "vespo", "luspo")


def rows_from_ratios(olds: list[list[float]], ratios: list[list[float]], advantages: list[float]) -> list[dict]:
    return [
        {"logp": [o + LN(r) for o, r in zip(old, rs)], "old": old, "a": a}
        for old, rs, a in zip(olds, ratios, advantages)
    ]


def run(config: dict, rows: list[dict], width: int | None = None):
    kwargs = to_tensors(rows, width)
    out = build_objective(config)(**kwargs)
    out.loss.backward()
    return out, kwargs["logp"].grad, kwargs


# ------------------------------------------------------------------------------ hand-computed cases
# Row 0: ratios (1.5, 6.0), A = +1; row 1: ratio 0.05, A = -2; row 2 empty (A = 5): B' = 2, N = 3.
WORKED = rows_from_ratios([[-1.0, -2.0], [-0.5], []], [[1.5, 6.0], [0.05], []], [1.0, -2.0, 5.0])
LP00, LP01, LP10 = WORKED[0]["logp"][0], WORKED[0]["logp"][1], WORKED[1]["logp"][0]


def test_cispo_worked_example() -> None:
    # defaults: no lower bound, cap 1 + 4 = 5: w = (1.5, 5, 0.05); token_mean over N = 3
    out, grad, _ = run({"name": "cispo"}, WORKED)
    assert out.loss.item() == pytest.approx(-(1.5 * LP00 + 5.0 * LP01 + 0.05 * -2.0 * LP10) / 3, rel=1e-12)
    torch.testing.assert_close(grad[:2, :2], torch.tensor([[-1.5 / 3, -5.0 / 3], [0.1 / 3, 0.0]], dtype=torch.float64))
    assert torch.all(grad[2] == 0)
    assert out.metrics["grad_weight/truncated_frac"] == pytest.approx(1 / 3)  # r = 6 above the cap
    assert out.metrics["grad_weight/saturated_frac"] == pytest.approx(1 / 3)  # w = 0.05 < 0.1
    assert out.metrics["grad_weight/mean"] == pytest.approx((1.5 + 5.0 + 0.05) / 3)
    assert out.metrics["weight/seq_mean"] == pytest.approx(((1.5 + 5.0) / 2 + 0.05) / 2)


def test_cispo_two_sided_seq_mean_token_mean_worked_example() -> None:
    # eps_low 0.2: w = (1.5, 5, 0.8); J_0 = (1.5 lp00 + 5 lp01) / 2, J_1 = 0.8 * -2 * lp10; B' = 2
    out, grad, _ = run({"name": "cispo", "eps_low": 0.2, "agg": "seq_mean_token_mean"}, WORKED)
    expected = -((1.5 * LP00 + 5.0 * LP01) / 2 + 0.8 * -2.0 * LP10) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(grad[:2, :2], torch.tensor([[-1.5 / 4, -5.0 / 4], [0.8, 0.0]], dtype=torch.float64))
    assert out.metrics["grad_weight/truncated_frac"] == pytest.approx(2 / 3)  # r = 6 > 5 and r = 0.05 < 0.8
    assert out.metrics["grad_weight/saturated_frac"] == 0.0  # the floor 0.8 keeps every weight above 0.1


def test_dppo_tv_worked_example() -> None:
    # Row 0 (A > 0): p - p_old = 1.2e^-2 - e^-2 = 0.027 (kept), 1.4e^-0.7 - e^-0.7 = 0.199 > 0.15 (dropped).
    # Row 1 (A < 0): 0.7e^-0.3 - e^-0.3 = -0.222 < -0.15 (dropped), 0.5e^-3 - e^-3 = -0.025 (kept).
    rows = rows_from_ratios([[-2.0, -0.7], [-0.3, -3.0]], [[1.2, 1.4], [0.7, 0.5]], [1.0, -1.0])
    out, grad, _ = run({"name": "dppo_tv"}, rows)
    lp = [row["logp"] for row in rows]
    assert out.loss.item() == pytest.approx(-(1.2 * lp[0][0] - 0.5 * lp[1][1]) / 4, rel=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[-1.2 / 4, 0.0], [0.0, 0.5 / 4]], dtype=torch.float64))
    assert out.metrics["grad_weight/saturated_frac"] == pytest.approx(2 / 4)  # the two dropped tokens
    assert out.metrics["grad_weight/truncated_frac"] == 0.0
    assert out.metrics["weight/seq_mean"] == pytest.approx((1.2 / 2 + 0.5 / 2) / 2)


def test_dppo_kl_worked_example() -> None:
    # Token: p_old = e^-0.7 = 0.49659, ratio 1.4 -> p = 0.69522, A > 0 and p rose:
    # kl_bin = 0.49659 * (-ln 1.4) + 0.50341 * ln(0.50341 / 0.30478) = -0.16709 + 0.25257 = 0.08548 > 0.05: dropped.
    # Ratio 1.1 -> p = 0.54625: kl_bin = -0.04733 + 0.50341 * ln(0.50341 / 0.45375) = 0.00496: kept.
    # A < 0 rows: a token whose probability rose is never dropped.
    rows = rows_from_ratios([[-0.7, -0.7], [-0.7]], [[1.4, 1.1], [1.4]], [1.0, -1.0])
    out, grad, _ = run({"name": "dppo_kl"}, rows)
    lp = [row["logp"] for row in rows]
    assert out.loss.item() == pytest.approx(-(1.1 * lp[0][1] - 1.4 * lp[1][0]) / 3, rel=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[0.0, -1.1 / 3], [1.4 / 3, 0.0]], dtype=torch.float64))
    assert out.metrics["grad_weight/saturated_frac"] == pytest.approx(1 / 3)


def test_dppo_ratio_cap_truncates_without_dropping() -> None:
    # p_old = e^-5 and r = 30: p - p_old = 0.195 > 0.15 would drop it under A > 0; under A < 0 it is kept.
    rows = rows_from_ratios([[-5.0, -5.0]], [[30.0, 2.0]], [-1.0])
    out, grad, _ = run({"name": "dppo_tv"}, rows)
    torch.testing.assert_close(grad, torch.tensor([[20.0 / 2, 2.0 / 2]], dtype=torch.float64))
    assert out.metrics["grad_weight/truncated_frac"] == pytest.approx(1 / 2)


def test_vespo_worked_example() -> None:
    # Row 0 (A >= 0, k 2, lambda 3): w = 1.5 * 0.5 = 0.75, phi = e^3 0.75^2 e^-2.25 = 0.5625 e^0.75.
    # Row 1 (A < 0, k 3, lambda 2): w = 2, phi = e^2 * 8 * e^-4 = 8 e^-2. Token mean over N = 3.
    rows = rows_from_ratios([[-1.0, -2.0], [-0.5], []], [[1.5, 0.5], [2.0], []], [1.0, -2.0, 5.0])
    out, grad, _ = run({"name": "vespo"}, rows)
    phi0, phi1 = 0.5625 * math.exp(0.75), 8 * math.exp(-2)
    lp = [row["logp"] for row in rows]
    expected = -(phi0 * (lp[0][0] + lp[0][1]) + phi1 * -2.0 * lp[1][0]) / 3
    assert out.loss.item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(
        grad[:2], torch.tensor([[-phi0 / 3, -phi0 / 3], [2 * phi1 / 3, 0.0]], dtype=torch.float64)
    )
    assert out.metrics["weight/seq_mean"] == pytest.approx((phi0 + phi1) / 2)
    assert out.metrics["grad_weight/mean"] == pytest.approx((2 * phi0 + phi1) / 3)


def test_vespo_peaks_at_k_over_lambda_and_vanishes_far_off_policy() -> None:
    # One token per row: w = r. phi(k/lambda) is the maximum: 1.21 (A >= 0), 1.24 (A < 0) with the defaults.
    objective = build_objective({"name": "vespo"})
    for a, peak, value in ((1.0, 2 / 3, 4 * math.e / 9), (-1.0, 3 / 2, 3.375 / math.e)):  # 1.208, 1.242
        for r, expected in ((peak, value), (1.0, 1.0), (1e-12, 0.0), (1e12, 0.0)):
            old = torch.tensor([[-1.0]], dtype=torch.float64)
            metrics = objective(old + LN(r), old, torch.tensor([a], dtype=torch.float64), torch.ones(1, 1)).metrics
            assert metrics["weight/seq_mean"] == pytest.approx(expected, abs=1e-4)


def test_luspo_worked_example() -> None:
    # Row 0 (A = +1): s = sqrt(1.5 * 0.5) = 0.866 < 1 (min keeps s), J_0 = 2 * 0.866;
    # row 1 (A = -1): s = 2 (max keeps s), J_1 = 1 * -2; B' = 2 (the empty row counts nowhere).
    rows = rows_from_ratios([[-1.0, -2.0], [-0.5], []], [[1.5, 0.5], [2.0], []], [1.0, -1.0, 3.0])
    out, grad, _ = run({"name": "luspo"}, rows)
    s0 = math.sqrt(0.75)
    assert out.loss.item() == pytest.approx(-(2 * s0 - 2.0) / 2, rel=1e-12)
    # each token: gspo's gradient -A s / (B' L) times L
    torch.testing.assert_close(grad[:2], torch.tensor([[-s0 / 2, -s0 / 2], [1.0, 0.0]], dtype=torch.float64))
    assert out.metrics["weight/seq_mean"] == pytest.approx((s0 + 2.0) / 2)
    # clipped: ratio 1.1 with A > 0 is above 1 + 2.5e-3
    clipped, grad, _ = run({"name": "luspo"}, rows_from_ratios([[-1.0, -1.0]], [[1.1, 1.1]], [1.0]))
    assert torch.all(grad == 0) and clipped.metrics["grad_weight/saturated_frac"] == 1.0
    assert clipped.loss.item() == pytest.approx(-2 * 1.0025, rel=1e-12)


def test_luspo_is_gspo_times_length() -> None:
    rows = random_rows(random.Random(4), 6)
    gspo, gspo_grad, kwargs = run({"name": "gspo", "eps_low": 0.05, "eps_high": 0.1}, rows)
    luspo, luspo_grad, _ = run({"name": "luspo", "eps_low": 0.05, "eps_high": 0.1}, rows)
    lengths = kwargs["mask"].sum(-1, keepdim=True).to(torch.float64)
    torch.testing.assert_close(luspo_grad, gspo_grad * lengths, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------ reference on random batches


def random_rows(rng: random.Random, count: int, spread: float = 0.5, behav: float | None = None) -> list[dict]:
    """Rows of log-probs below 0 (one empty row, one zero advantage), optional sampler and reference."""
    rows = []
    for b in range(count):
        length = 0 if b == 2 else rng.randint(1, 6)
        old = [-rng.uniform(0.02, 4.0) for _ in range(length)]
        logp = [min(o + rng.gauss(0.0, spread), -1e-3) for o in old]
        row = {"logp": logp, "old": old, "a": 0.0 if b == 3 else rng.gauss(0.0, 1.5)}
        row["ref"] = [x + rng.gauss(0.0, 0.3) for x in logp]
        if behav is not None:
            row["behav"] = [o + rng.gauss(0.0, behav) for o in old]
        rows.append(row)
    return rows


CONFIGS = [
    {"name": "cispo"},
    {"name": "cispo", "eps_low": 0.2, "eps_high": 0.28, "agg": "seq_mean_token_mean"},
    {"name": "cispo", "eps_high": 0.5, "saturation_threshold": 0.8},
    {"name": "dppo_tv"},
    {"name": "dppo_tv", "delta_low": 0.05, "delta_high": 0.02, "ratio_cap": 1.5, "agg": "seq_mean_token_mean"},
    {"name": "dppo_kl"},
    {"name": "dppo_kl", "delta_low": 0.01, "delta_high": 0.2, "ratio_cap": 2.0},
    {"name": "vespo"},
    {"name": "vespo", "k_pos": 0.5, "lambda_pos": 0.7, "k_neg": 0.0, "lambda_neg": 5.0, "agg": "seq_mean_token_mean"},
    {"name": "luspo"},
    {"name": "luspo", "eps_low": 0.1, "eps_high": 0.2},
]


def config_id(config: dict) -> str:
    return "-".join(str(v) for v in config.values())


def assert_matches_reference(config: dict, rows: list[dict], width: int | None = None) -> dict[str, float]:
    expected_loss, expected_grads, expected_metrics = reference(config, rows)
    out, grad, _ = run(config, rows, width)
    assert out.loss.dtype == torch.float64
    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-10, abs=1e-12)
    for b, row in enumerate(expected_grads):
        torch.testing.assert_close(grad[b, : len(row)], torch.tensor(row, dtype=torch.float64), rtol=1e-9, atol=1e-12)
        assert torch.all(grad[b, len(row) :] == 0)
    assert set(out.metrics) == set(expected_metrics)
    for key, value in expected_metrics.items():
        if math.isnan(value):
            assert math.isnan(out.metrics[key]), key
        else:
            assert out.metrics[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    return out.metrics


@pytest.mark.parametrize("beta", [0.0, 0.2])
@pytest.mark.parametrize("spread", [0.05, 0.6, 2.5])
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_matches_plain_python_reference(config: dict, spread: float, beta: float) -> None:
    for seed in range(3):
        rows = random_rows(random.Random(seed), 7, spread)
        metrics = assert_matches_reference({**config, "beta": beta}, rows, width=8)
        assert set(metrics) == set(METRIC_KEYS)


@pytest.mark.parametrize("name", NEW)
def test_on_policy_omega_is_one(name: str) -> None:
    rows = [{**row, "logp": list(row["old"])} for row in random_rows(random.Random(1), 6)]
    out, grad, kwargs = run({"name": name}, rows)
    for key in ("grad_weight/mean", "grad_weight/pos_mean", "grad_weight/neg_mean", "weight/seq_mean"):
        assert out.metrics[key] == pytest.approx(1.0, abs=1e-12), key
    assert out.metrics["grad_weight/saturated_frac"] == out.metrics["grad_weight/truncated_frac"] == 0.0


@pytest.mark.parametrize("name", ["cispo", "vespo"])
def test_reinforce_form_gradient_depends_on_the_ratios_only(name: str) -> None:
    """u = sg(w) A logp: shifting logp and old_logp together changes the loss, not the gradient."""
    rows = random_rows(random.Random(2), 5)
    out, grad, _ = run({"name": name}, rows)
    shifted = [{**row, "logp": [x - 3.0 for x in row["logp"]], "old": [x - 3.0 for x in row["old"]]} for row in rows]
    shifted_out, shifted_grad, _ = run({"name": name}, shifted)
    torch.testing.assert_close(grad, shifted_grad, rtol=1e-12, atol=1e-15)
    assert shifted_out.loss.item() != pytest.approx(out.loss.item())
