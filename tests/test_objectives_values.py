"""Objective values, gradients and diagnostics against the spec, computed independently.

Two layers of independent checks, both in float64:
1. A worked example whose expected losses are written out as numbers (derivations in comments).
2. A plain-Python (``math`` only) reference of every spec formula, including the closed-form
   gradient weights omega, compared with loss, autograd gradient and every metric.
"""

from __future__ import annotations

import math

import pytest
import torch

from sspo_cli.objectives import METRIC_KEYS, build_objective

LN = math.log

# ---------------------------------------------------------------------------------------------
# 1. Worked example: row 0 has ratios (1.5, 0.5) and A = +1; row 1 has ratio 2 and A = -1;
#    row 2 is empty (L = 0) and must not count, so B' = 2 and loss = -(J_0 + J_1) / 2.
# ---------------------------------------------------------------------------------------------


def worked_example() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    old_logp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0], [-1.0, -1.0]], dtype=torch.float64)
    log_ratio = torch.tensor([[LN(1.5), LN(0.5)], [LN(2.0), 7.0], [3.0, -3.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1], [1, 0], [0, 0]], dtype=torch.float64)
    advantages = torch.tensor([1.0, -1.0, 5.0], dtype=torch.float64)
    return old_logp + log_ratio, old_logp, advantages, mask


WORKED_EXAMPLE_LOSSES = {
    # J_0 = (min(1.5, 1.2) + min(0.5, 0.8)) / 2 = 0.85; J_1 = min(-2, -1.2) = -2
    "grpo": ({"name": "grpo"}, -(0.85 - 2.0) / 2),
    # token_mean over the 3 counted tokens: (1.2 + 0.5 - 2) / 3
    "grpo_token_mean": ({"name": "grpo", "agg": "token_mean"}, -(1.2 + 0.5 - 2.0) / 3),
    # s_0 = sqrt(1.5 * 0.5) = 0.8660254 (< 1 - 3e-4: min keeps s); s_1 = 2 (A < 0: min keeps -2)
    "gspo": ({"name": "gspo"}, -(0.8660254037844386 - 2.0) / 2),
    # row 0 (A > 0): l = (min(ln1.5, 0.4), min(ln0.5, -0.4)) = (0.4, ln 0.5), w = exp(-0.146574)
    # = 0.8636622; row 1 (A < 0): l = max(ln 2, 0.4) = ln 2, w = 2
    "gmpo": ({"name": "gmpo"}, -(0.8636621728550089 - 2.0) / 2),
    # row 0 (tau 1): (4 sigma(0.5) + 4 sigma(-0.5)) / 2 = 2 exactly;
    # row 1 (tau 1.05): -(4/1.05) sigma(1.05) = -2.8219996
    "sapo": ({"name": "sapo"}, -(2.0 - 2.821999615932015) / 2),
    # w_0 = 4 sqrt(sigma(0.5) sigma(-0.5)) = 1.9390873; w_1 = (4/1.05) sigma(1.05) = 2.8219996
    "sspo_sigmoid": ({"name": "sspo"}, -(1.9390872582804293 - 2.821999615932015) / 2),
    # w_0 = exp((atan(ln1.5) + atan(ln0.5)) / 2) = 0.8954297; w_1 = exp(atan(1.05 ln2)/1.05)
    "sspo_arctan": ({"name": "sspo", "gate": "arctan"}, -(0.8954296885192229 - 1.820634001304369) / 2),
    # w = exp(mean(sqrt(pi)/(2 tau) erf(tau d)))
    "sspo_erf": ({"name": "sspo", "gate": "erf"}, -(0.8993492672161431 - 1.8003633466489473) / 2),
    # w = exp(mean(d / (1 + tau |d|)))
    "sspo_softsign": ({"name": "sspo", "gate": "softsign"}, -(0.9413445404923471 - 1.493574467747789) / 2),
}


@pytest.mark.parametrize("case", sorted(WORKED_EXAMPLE_LOSSES))
def test_worked_example_loss(case: str) -> None:
    config, expected = WORKED_EXAMPLE_LOSSES[case]
    logp, old_logp, advantages, mask = worked_example()
    out = build_objective(config)(logp, old_logp, advantages, mask)
    assert out.loss.dtype == torch.float64
    assert out.loss.dim() == 0
    assert out.loss.item() == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_worked_example_grpo_gradient_by_hand() -> None:
    # d loss / d logp = -(1/B') * A * (1/L) * r where unclipped, 0 where clipped.
    logp, old_logp, advantages, mask = worked_example()
    logp.requires_grad_(True)
    build_objective({"name": "grpo"})(logp, old_logp, advantages, mask).loss.backward()
    expected = torch.tensor(
        [
            [0.0, -0.5 * 1.0 * 0.5 * 0.5],  # r=1.5 clipped above; r=0.5 keeps its gradient
            [-0.5 * -1.0 * 1.0 * 2.0, 0.0],  # A<0 and r=2 > 1.2: max(r, clip) = r, unclipped
            [0.0, 0.0],
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(logp.grad, expected, rtol=1e-12, atol=1e-12)


def test_worked_example_kl_penalty_is_k3() -> None:
    logp, old_logp, advantages, mask = worked_example()
    ref_logp = logp.detach() + torch.tensor([[0.3, -0.2], [0.1, 50.0], [1.0, 1.0]], dtype=torch.float64)
    plain = build_objective({"name": "gmpo"})(logp, old_logp, advantages, mask).loss
    with_kl = build_objective({"name": "gmpo", "beta": 0.25})(logp, old_logp, advantages, mask, ref_logp=ref_logp).loss

    def k3(x: float) -> float:
        return math.exp(x) - x - 1.0

    kl = ((k3(0.3) + k3(-0.2)) / 2 + k3(0.1)) / 2
    assert (with_kl - plain).item() == pytest.approx(0.25 * kl, rel=1e-12)

    token_plain = build_objective({"name": "grpo", "agg": "token_mean"})(logp, old_logp, advantages, mask).loss
    token_kl = build_objective({"name": "grpo", "agg": "token_mean", "beta": 0.5})(
        logp, old_logp, advantages, mask, ref_logp=ref_logp
    ).loss
    expected = 0.5 * (k3(0.3) + k3(-0.2) + k3(0.1)) / 3
    assert (token_kl - token_plain).item() == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# 2. Plain-Python reference of the spec (no torch), with closed-form omega.
# ---------------------------------------------------------------------------------------------


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def clip(x: float, low: float, high: float) -> float:
    return max(low, min(high, x))


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def pop_var(xs: list[float]) -> float:
    m = mean(xs)
    return mean([(x - m) ** 2 for x in xs])


DEFAULTS = {
    "grpo": {"eps_low": 0.2, "eps_high": 0.2, "agg": "seq_mean_token_mean"},
    "gspo": {"eps_low": 3e-4, "eps_high": 4e-4},
    "gmpo": {"eps_low": 0.4, "eps_high": 0.4},
    "sapo": {"tau_pos": 1.0, "tau_neg": 1.05},
    "sspo": {"gate": "sigmoid", "tau_pos": 1.0, "tau_neg": 1.05},
}


def log_gate_and_slope(gate: str, d: float, tau: float) -> tuple[float, float, float]:
    """(log g, d log g / d d, on-policy w) for SSPO's gates."""
    if gate == "sigmoid":
        x = tau * (math.exp(d) - 1.0)
        return math.log(4.0 / tau) + math.log(sigmoid(x)), (1.0 - sigmoid(x)) * tau * math.exp(d), 2.0 / tau
    if gate == "arctan":
        return math.atan(tau * d) / tau, 1.0 / (1.0 + (tau * d) ** 2), 1.0
    if gate == "erf":
        return math.sqrt(math.pi) / (2 * tau) * math.erf(tau * d), math.exp(-((tau * d) ** 2)), 1.0
    if gate == "softsign":
        return d / (1.0 + tau * abs(d)), 1.0 / (1.0 + tau * abs(d)) ** 2, 1.0
    raise AssertionError(gate)


def reference_row(name: str, p: dict, ds: list[float], a: float) -> tuple[float, list[float], float]:
    """(J_b, omega per token, sequence weight / on-policy weight) for one non-empty row."""
    rs = [math.exp(d) for d in ds]
    if name == "grpo":
        lo, hi = 1 - p["eps_low"], 1 + p["eps_high"]
        us = [min(r * a, clip(r, lo, hi) * a) for r in rs]
        clipped = [(a > 0 and r > hi) or (a < 0 and r < lo) for r in rs]
        weight = mean([min(r, clip(r, lo, hi)) if a > 0 else max(r, clip(r, lo, hi)) for r in rs])
        return mean(us), [0.0 if c else r for c, r in zip(clipped, rs)], weight
    if name == "gspo":
        lo, hi = 1 - p["eps_low"], 1 + p["eps_high"]
        s = math.exp(mean(ds))
        j = min(s * a, clip(s, lo, hi) * a)
        clipped = (a > 0 and s > hi) or (a < 0 and s < lo)
        weight = min(s, clip(s, lo, hi)) if a > 0 else max(s, clip(s, lo, hi))
        return j, [0.0 if clipped else s] * len(ds), weight
    if name == "gmpo":
        k = (a > 0) - (a < 0)
        ls = [k * min(k * d, k * clip(d, -p["eps_low"], p["eps_high"])) for d in ds]
        w = math.exp(mean(ls))
        clipped = [(a > 0 and d > p["eps_high"]) or (a < 0 and d < -p["eps_low"]) for d in ds]
        return w * a, [0.0 if c else w for c in clipped], w
    tau = p["tau_pos"] if a > 0 else p["tau_neg"]
    if name == "sapo":
        fs = [4 / tau * sigmoid(tau * (r - 1)) for r in rs]
        omegas = [4 * sigmoid(tau * (r - 1)) * (1 - sigmoid(tau * (r - 1))) * r for r in rs]
        return mean(fs) * a, omegas, mean(fs) * tau / 2
    if name == "sspo":
        parts = [log_gate_and_slope(p["gate"], d, tau) for d in ds]
        w = math.exp(mean([log_g for log_g, _, _ in parts]))
        return w * a, [w * slope for _, slope, _ in parts], w / parts[0][2]
    raise AssertionError(name)


def reference(name: str, p: dict, rows: list[tuple[list[float], float]], ref_rows=None, beta=0.0):
    """Loss, d loss / d logp per counted token, and all metrics, from the spec alone."""
    token_mean = p.get("agg") == "token_mean"
    non_empty = [(ds, a) for ds, a in rows if ds]
    b_prime = len(non_empty)
    n_tokens = sum(len(ds) for ds, _ in rows)
    js, omegas, weights = [], [], []
    for ds, a in rows:
        if not ds:
            js.append(0.0), omegas.append([]), weights.append(float("nan"))
            continue
        j, om, w = reference_row(name, p, ds, a)
        js.append(j), omegas.append(om), weights.append(w)
    if token_mean:
        total = 0.0
        for ds, a in non_empty:
            lo, hi = 1 - p["eps_low"], 1 + p["eps_high"]
            total += sum(min(math.exp(d) * a, clip(math.exp(d), lo, hi) * a) for d in ds)
        loss = -total / n_tokens
    else:
        loss = -sum(js) / b_prime
    kl_grads = [[0.0] * len(ds) for ds, _ in rows]
    if beta > 0:
        k3s = [[math.exp(x) - x - 1 for x in xs] for xs in ref_rows]
        if token_mean:
            loss += beta * sum(sum(k) for k in k3s) / n_tokens
            kl_grads = [[beta * (1 - math.exp(x)) / n_tokens for x in xs] for xs in ref_rows]
        else:
            loss += beta * sum(mean(k) for k in k3s if k) / b_prime
            kl_grads = [[beta * (1 - math.exp(x)) / (b_prime * len(xs)) for x in xs] for xs in ref_rows]
    grads = []
    for (ds, a), om, kg in zip(rows, omegas, kl_grads):
        scale = 1 / n_tokens if token_mean else 1 / (b_prime * max(len(ds), 1))
        grads.append([-a * scale * o + g for o, g in zip(om, kg)])

    # omega includes the KL gradient when beta > 0: omega = grad / (-A * scale)
    all_omega, pos_omega, neg_omega = [], [], []
    for (ds, a), g in zip(rows, grads):
        if a == 0:
            continue
        scale = 1 / n_tokens if token_mean else 1 / (b_prime * max(len(ds), 1))
        o = [x / (-a * scale) for x in g]
        all_omega += o
        (pos_omega if a > 0 else neg_omega).extend(o)
    threshold = p.get("saturation_threshold", 0.1)
    token_ratios = [math.exp(d) for ds, _ in rows for d in ds]
    seq_ratios = [math.exp(mean(ds)) for ds, _ in non_empty]
    informative_weights = [w for (ds, a), w in zip(rows, weights) if ds and a != 0]
    metrics = {
        "ratio/token_mean": mean(token_ratios),
        "ratio/token_std": math.sqrt(pop_var(token_ratios)),
        "ratio/token_min": min(token_ratios),
        "ratio/token_max": max(token_ratios),
        "ratio/log_abs_mean": mean([abs(d) for ds, _ in rows for d in ds]),
        "ratio/seq_mean": mean(seq_ratios),
        "ratio/seq_std": math.sqrt(pop_var(seq_ratios)),
        "ratio/seq_min": min(seq_ratios),
        "ratio/seq_max": max(seq_ratios),
        "weight/seq_mean": mean(informative_weights),
        "weight/seq_var": pop_var(informative_weights),
        "grad_weight/mean": mean(all_omega),
        "grad_weight/pos_mean": mean(pos_omega),
        "grad_weight/neg_mean": mean(neg_omega),
        "grad_weight/saturated_frac": mean([1.0 if o < threshold else 0.0 for o in all_omega]),
        "kl/k3": mean([math.exp(d) - d - 1 for ds, _ in rows for d in ds]),
        "grad_weight/truncated_frac": mean([0.0 for _ in all_omega]),  # these objectives' bounds zero gradients
    }
    return loss, grads, metrics


# Rows of counted log-ratios (chosen away from every clip boundary) and advantages.
ROWS: list[tuple[list[float], float]] = [
    ([0.1, -0.3, 0.5, 0.02], 1.5),
    ([0.25, -0.05], -0.8),
    ([-0.6], 0.7),
    ([], 1.0),  # empty completion: counts nowhere
    ([0.15, 0.35, -0.45], 0.0),  # zero advantage: no gradient, out of weight/grad metrics
    ([-0.25, -0.1, 0.6], -1.2),
]
REF_OFFSETS = [[0.2, -0.1, 0.05, 0.3], [-0.4, 0.1], [0.7], [], [0.0, 0.1, -0.2], [0.3, -0.3, 0.15]]

CASES = [
    ("grpo", {}),
    ("grpo", {"eps_low": 0.1, "eps_high": 0.28}),
    ("grpo", {"agg": "token_mean"}),
    ("gspo", {}),
    ("gspo", {"eps_low": 0.05, "eps_high": 0.12}),
    ("gmpo", {}),
    ("gmpo", {"eps_low": 0.2, "eps_high": 0.3}),
    ("sapo", {}),
    ("sapo", {"tau_pos": 2.0, "tau_neg": 0.5, "saturation_threshold": 0.9}),
    ("sspo", {"gate": "sigmoid"}),
    ("sspo", {"gate": "arctan"}),
    ("sspo", {"gate": "erf"}),
    ("sspo", {"gate": "softsign"}),
    ("sspo", {"gate": "sigmoid", "tau_pos": 3.0, "tau_neg": 0.4}),
    ("sspo", {"gate": "erf", "tau_pos": 2.5, "tau_neg": 1.5, "saturation_threshold": 0.8}),
]


def tensors_from_rows(rows, dtype=torch.float64):
    width = max(len(ds) for ds, _ in rows)
    old_logp = -torch.linspace(0.5, 3.0, len(rows) * width, dtype=torch.float64).reshape(len(rows), width)
    log_ratio = torch.full((len(rows), width), 13.0, dtype=torch.float64)  # garbage off-mask
    mask = torch.zeros(len(rows), width)
    for b, (ds, _) in enumerate(rows):
        log_ratio[b, : len(ds)] = torch.tensor(ds, dtype=torch.float64)
        mask[b, : len(ds)] = 1
    advantages = torch.tensor([a for _, a in rows], dtype=torch.float64)
    logp = (old_logp + log_ratio).to(dtype).requires_grad_(True)
    return logp, old_logp.to(dtype), advantages.to(dtype), mask


def ref_logp_for(logp: torch.Tensor, offsets) -> torch.Tensor:
    ref = logp.detach().clone() - 40.0  # far away off-mask: must be ignored
    for b, xs in enumerate(offsets):
        if xs:
            ref[b, : len(xs)] = logp.detach()[b, : len(xs)] + torch.tensor(xs, dtype=logp.dtype)
    return ref


@pytest.mark.parametrize("beta", [0.0, 0.3])
@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_matches_plain_python_reference(name: str, overrides: dict, beta: float) -> None:
    params = {**DEFAULTS[name], **overrides}
    expected_loss, expected_grads, expected_metrics = reference(name, params, ROWS, REF_OFFSETS, beta)

    logp, old_logp, advantages, mask = tensors_from_rows(ROWS)
    ref_logp = ref_logp_for(logp, REF_OFFSETS) if beta > 0 else None
    out = build_objective({"name": name, "beta": beta, **overrides})(
        logp, old_logp, advantages, mask, ref_logp=ref_logp
    )
    out.loss.backward()

    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-10, abs=1e-12)
    for b, row in enumerate(expected_grads):
        torch.testing.assert_close(
            logp.grad[b, : len(row)], torch.tensor(row, dtype=torch.float64), rtol=1e-9, atol=1e-12
        )
        assert torch.all(logp.grad[b, len(row) :] == 0)
    assert set(out.metrics) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert out.metrics[key] == pytest.approx(expected_metrics[key], rel=1e-9, abs=1e-12), key


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_float32_matches_reference(name: str, overrides: dict) -> None:
    params = {**DEFAULTS[name], **overrides}
    expected_loss, expected_grads, expected_metrics = reference(name, params, ROWS)
    logp, old_logp, advantages, mask = tensors_from_rows(ROWS, dtype=torch.float32)
    out = build_objective({"name": name, **overrides})(logp, old_logp, advantages, mask)
    out.loss.backward()
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(expected_loss, rel=1e-5, abs=1e-6)
    for key in METRIC_KEYS:
        assert out.metrics[key] == pytest.approx(expected_metrics[key], rel=1e-4, abs=1e-5), key
