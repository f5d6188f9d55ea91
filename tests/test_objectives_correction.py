"""The sampler correction and the M2PO mask (sspo_cli/objectives/correction.py) on every objective:
hand-computed cases, the plain-Python reference (tests/spec_reference_2026.py) for loss, gradient and
every metric key, properties over random batches (hypothesis), and the call-time errors."""

from __future__ import annotations

import math
import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_reference_2026 import reference, to_tensors
from test_objectives_formulas import assert_matches_reference, random_rows

from sspo_cli.objectives import CORRECTION_METRIC_KEYS, METRIC_KEYS, STALENESS_METRIC_KEYS, build_objective
from sspo_cli.objectives.batch import clamped_log_ratio
from sspo_cli.objectives.correction import SamplerRatios, m2po_keep

LN = math.log
MODES = ("none", "token_truncate", "sequence_truncate", "token_mask", "sequence_mask")
OBJECTIVES = [
    {"name": "grpo"},
    {"name": "grpo", "agg": "token_mean"},
    {"name": "gspo", "eps_low": 0.05, "eps_high": 0.1},
    {"name": "gmpo"},
    {"name": "sapo"},
    {"name": "sspo"},
    {"name": "cispo"},
    {"name": "dppo_tv"},
    {"name": "dppo_kl", "agg": "seq_mean_token_mean"},
    {"name": "vespo"},
    {"name": "luspo", "eps_low": 0.05, "eps_high": 0.1},
]
SEQUENCE_LEVEL = {"gspo", "gmpo", "sspo", "luspo"}


def config_id(config: dict) -> str:
    return "-".join(str(v) for v in config.values())


def combinations():
    for objective in OBJECTIVES:
        for mode in MODES:
            if objective["name"] == "vespo" and mode.startswith("sequence"):
                continue
            yield {**objective, "correction": mode}


# ------------------------------------------------------------------------------ hand-computed cases


def test_token_truncate_on_grpo_by_hand() -> None:
    # One row, A = +1, on-policy learner (r = 1, u = A); sampler ratios rho = (3, 0.5): c = (2, 0.5).
    old = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    behav = old - torch.tensor([[LN(3.0), LN(0.5)]], dtype=torch.float64)
    logp = old.clone().requires_grad_(True)
    out = build_objective({"name": "grpo", "correction": "token_truncate"})(
        logp, old, torch.tensor([1.0], dtype=torch.float64), torch.ones(1, 2), behav_logp=behav
    )
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-(2.0 + 0.5) / 2)
    torch.testing.assert_close(logp.grad, torch.tensor([[-1.0, -0.25]], dtype=torch.float64))
    m = out.metrics
    assert (m["correction/weight_mean"], m["correction/weight_min"], m["correction/weight_max"]) == pytest.approx(
        (1.25, 0.5, 2.0)
    )
    assert m["correction/ess"] == pytest.approx(2.5**2 / (2 * 4.25))
    assert (m["correction/low_frac"], m["correction/high_frac"]) == (0.0, 0.5)  # no lower bound by default
    assert (m["correction/truncated_frac"], m["correction/masked_frac"]) == (0.5, 0.0)
    assert m["correction/chi2_token"] == pytest.approx((9 + 0.25) / 2 - 1)
    assert m["correction/chi2_seq"] == pytest.approx(1.5**2 - 1)
    assert m["correction/kl_k3"] == pytest.approx(((3 - LN(3) - 1) + (0.5 - LN(0.5) - 1)) / 2)
    assert m["correction/m2_mean"] == pytest.approx((LN(3) ** 2 + LN(0.5) ** 2) / 2)
    assert m["correction/m2_masked_frac"] == 0.0
    # the objective's own keys leave c out: on-policy omega is 1
    assert m["grad_weight/mean"] == 1.0 and m["weight/seq_mean"] == 1.0


def test_sequence_mask_keeps_the_denominators() -> None:
    # Two rows of gspo on-policy (J_b = A_b); row 0's sequence ratio 3 is above 2: c = 0, yet B' stays 2.
    old = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    behav = old - torch.tensor([[LN(3.0), 0.0], [LN(1.2), 0.0]], dtype=torch.float64)
    logp = old.clone().requires_grad_(True)
    advantages = torch.tensor([1.0, 2.0], dtype=torch.float64)
    out = build_objective({"name": "gspo", "correction": "sequence_mask"})(
        logp, old, advantages, torch.ones(2, 2), behav_logp=behav
    )
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-(0.0 + 2.0 * 1.2) / 2)
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0], [-0.6, -0.6]], dtype=torch.float64))
    assert out.metrics["correction/masked_frac"] == 0.5 and out.metrics["correction/high_frac"] == 0.5


def test_bounds_are_inclusive_and_null_is_no_bound() -> None:
    old = torch.zeros(1, 3, dtype=torch.float64)  # ds = old - behav is then exactly -behav
    ds = torch.tensor([[LN(0.5), LN(5.0), LN(7.0)]], dtype=torch.float64)
    rho = ds.exp().tolist()[0]  # the ratios as computed, so that the bounds meet them exactly
    logp = old.clone().requires_grad_(True)
    kwargs = dict(advantages=torch.tensor([1.0], dtype=torch.float64), mask=torch.ones(1, 3), behav_logp=-ds)
    config = {"name": "grpo", "correction": "token_mask", "correction_min": rho[0], "correction_max": rho[1]}
    masked = build_objective(config)(logp, old, **kwargs)
    assert masked.metrics["correction/weight_max"] == rho[1]  # c = (0.5, 5, 0): both bounds keep their ratio
    assert masked.metrics["correction/weight_mean"] == pytest.approx((rho[0] + rho[1]) / 3)
    assert masked.metrics["correction/high_frac"] == pytest.approx(1 / 3) and masked.metrics["correction/low_frac"] == 0
    open_top = build_objective({**config, "correction_max": None})(logp, old, **kwargs)
    assert open_top.metrics["correction/weight_max"] == pytest.approx(7.0)
    assert open_top.metrics["correction/masked_frac"] == 0.0


def test_m2po_drops_the_largest_until_the_rest_is_below_the_threshold() -> None:
    # m2 = ds^2 = (0.09, 0.01, 0.25, 0.01, 0.0): means of the n - k smallest: 0.072, 0.0275, 0.0067, ...
    ds = torch.tensor([[0.3, -0.1, 0.5], [0.1, 0.0, 9.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    ratios = SamplerRatios(clamped_log_ratio(ds, torch.zeros_like(ds), mask, 20.0), mask, 20.0)
    keep = m2po_keep(ratios, 0.03)  # k = 1: the 0.25 goes (mean of the rest 0.0275 < 0.03)
    assert keep.tolist() == [[True, True, False], [True, True, False]]
    keep = m2po_keep(ratios, 0.0275)  # strictly below: 0.0275 does not qualify, k = 2
    assert keep.tolist() == [[False, True, False], [True, True, False]]
    keep = m2po_keep(ratios, 1e-9)  # only zeros left... the last value 0.0 < 1e-9: k = 4
    assert keep.tolist() == [[False, False, False], [False, True, False]]
    # ties: earlier flat positions are dropped first; no k qualifies: only the smallest stays
    tied = SamplerRatios(torch.tensor([[0.2, 0.2, 0.2]], dtype=torch.float64), torch.ones(1, 3, dtype=torch.bool), 20.0)
    assert m2po_keep(tied, 0.01).tolist() == [[False, False, True]]


def test_m2po_mask_leaves_numerator_and_denominators() -> None:
    """The objective with m2_threshold equals the objective on mask * keep, everywhere."""
    rows = random_rows(random.Random(5), 7, 0.4, behav=0.4)
    kwargs = to_tensors(rows, 7)
    ratios = SamplerRatios.from_log_probs(kwargs["old_logp"], kwargs["behav_logp"], kwargs["mask"] != 0, 20.0)
    keep = m2po_keep(ratios, 0.04)
    assert 0 < (kwargs["mask"].bool() & ~keep).sum() < kwargs["mask"].sum()
    for config in OBJECTIVES:
        logp = kwargs["logp"].detach().clone().requires_grad_(True)
        with_mask = build_objective({**config, "m2_threshold": 0.04})(
            logp, kwargs["old_logp"], kwargs["advantages"], kwargs["mask"], behav_logp=kwargs["behav_logp"]
        )
        with_mask.loss.backward()
        plain_logp = kwargs["logp"].detach().clone().requires_grad_(True)
        plain = build_objective(config)(plain_logp, kwargs["old_logp"], kwargs["advantages"], kwargs["mask"] * keep)
        plain.loss.backward()
        assert with_mask.loss.item() == pytest.approx(plain.loss.item(), rel=1e-12, abs=1e-15), config
        torch.testing.assert_close(logp.grad, plain_logp.grad, rtol=1e-12, atol=1e-15)
        for key in METRIC_KEYS:
            assert with_mask.metrics[key] == pytest.approx(plain.metrics[key], rel=1e-12, nan_ok=True), key
        assert with_mask.metrics["correction/m2_masked_frac"] == pytest.approx(
            float((kwargs["mask"].bool() & ~keep).sum() / kwargs["mask"].sum())
        )


# ------------------------------------------------------------------------------ reference


@pytest.mark.parametrize("m2", [None, 0.05])
@pytest.mark.parametrize("config", list(combinations()), ids=config_id)
def test_matches_plain_python_reference(config: dict, m2) -> None:
    for seed in range(2):
        rows = random_rows(random.Random(10 + seed), 7, 0.4, behav=0.6)
        for row in rows:
            row["staleness"] = [float(random.Random(seed).randint(0, 8))] * len(row["logp"])
        full = {**config, "m2_threshold": m2, "beta": 0.1 * seed}
        metrics = assert_matches_reference(full, rows, width=7)
        assert set(metrics) == {*METRIC_KEYS, *CORRECTION_METRIC_KEYS, *STALENESS_METRIC_KEYS}


@pytest.mark.parametrize(
    "bounds",
    [{"correction_min": 0.8}, {"correction_min": 0.7, "correction_max": 1.3}, {"correction_max": 1.1}],
)
@pytest.mark.parametrize("mode", MODES[1:])
def test_other_bounds_match_the_reference(mode: str, bounds: dict) -> None:
    rows = random_rows(random.Random(3), 6, 0.3, behav=0.3)
    for name in ("grpo", "sspo", "cispo", "luspo"):
        assert_matches_reference({"name": name, "correction": mode, **bounds}, rows, width=6)


def test_staleness_per_completion_broadcasts_to_its_tokens() -> None:
    rows = random_rows(random.Random(0), 4, behav=0.1)
    kwargs = to_tensors(rows)
    out = build_objective({"name": "grpo"})(**kwargs, staleness=torch.tensor([0, 3, 9, 1]))
    lengths = [len(r["logp"]) for r in rows]
    assert out.metrics["rollout/staleness_mean"] == pytest.approx((3 * lengths[1] + lengths[3]) / sum(lengths))
    assert out.metrics["rollout/staleness_max"] == 3.0  # row 2 is empty


def test_correction_keys_only_with_behav_logp_and_staleness_keys_only_with_staleness() -> None:
    rows = random_rows(random.Random(0), 4, behav=0.1)
    kwargs = to_tensors(rows)
    behav = kwargs.pop("behav_logp")
    assert set(build_objective({"name": "sspo"})(**kwargs).metrics) == set(METRIC_KEYS)
    with_behav = build_objective({"name": "sspo"})(**kwargs, behav_logp=behav).metrics
    assert set(with_behav) == {*METRIC_KEYS, *CORRECTION_METRIC_KEYS}
    assert with_behav["correction/weight_mean"] == 1.0 and with_behav["correction/ess"] == 1.0


# ------------------------------------------------------------------------------ properties

PROPERTY_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def batches(draw):
    rows = draw(st.integers(1, 5))
    width = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    spread = draw(st.sampled_from([1e-6, 0.1, 0.7, 3.0]))
    mismatch = draw(st.sampled_from([0.0, 0.05, 0.5, 2.0]))
    generator = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, width, generator=generator, dtype=torch.float64) * 5 - 1e-3
    logp = (old + spread * torch.randn(rows, width, generator=generator, dtype=torch.float64)).clamp(max=-1e-4)
    behav = old + mismatch * torch.randn(rows, width, generator=generator, dtype=torch.float64)
    lengths = torch.tensor(draw(st.lists(st.integers(0, width), min_size=rows, max_size=rows)))
    mask = (torch.arange(width)[None, :] < lengths[:, None]).to(torch.float64)
    values = st.one_of(st.just(0.0), st.floats(-3.0, 3.0, allow_nan=False, allow_subnormal=False))
    advantages = torch.tensor(draw(st.lists(values, min_size=rows, max_size=rows)), dtype=torch.float64)
    return logp, old, advantages, mask, behav


def loss_and_grad(config, logp, old, advantages, mask, **kwargs):
    logp = logp.detach().clone().requires_grad_(True)
    out = build_objective(config)(logp, old, advantages, mask, **kwargs)
    out.loss.backward()
    return out, logp.grad


@PROPERTY_SETTINGS
@given(config=st.sampled_from(OBJECTIVES), batch=batches())
def test_correction_none_is_no_correction(config, batch) -> None:
    logp, old, advantages, mask, behav = batch
    plain, plain_grad = loss_and_grad(config, logp, old, advantages, mask)
    none, none_grad = loss_and_grad({**config, "correction": "none"}, logp, old, advantages, mask, behav_logp=behav)
    assert none.loss.item() == plain.loss.item()
    assert torch.equal(none_grad, plain_grad)
    for key in METRIC_KEYS:
        assert none.metrics[key] == pytest.approx(plain.metrics[key], nan_ok=True, rel=0, abs=0), key


@PROPERTY_SETTINGS
@given(
    config=st.sampled_from([c for c in OBJECTIVES if c["name"] != "vespo"]),
    mode=st.sampled_from(MODES[1:]),
    batch=batches(),
)
def test_a_correction_scales_gradients_and_keeps_denominators(config, mode, batch) -> None:
    """Token-level: grad = c * grad without; sequence-level: mean_t(c) * grad without. A zero weight
    removes a token's gradient but nothing from L_b, N or B'; the objective's own keys are unchanged."""
    logp, old, advantages, mask, behav = batch
    plain, plain_grad = loss_and_grad(config, logp, old, advantages, mask)
    corrected, grad = loss_and_grad({**config, "correction": mode}, logp, old, advantages, mask, behav_logp=behav)
    ratios = SamplerRatios.from_log_probs(old, behav, mask != 0, 20.0)
    c = ratios.at_level(mode)
    bounds = build_objective({**config, "correction": mode}).config
    low, high = bounds.correction_min, bounds.correction_max
    if mode.endswith("truncate"):
        c = c.clamp(min=low, max=high)
    else:
        c = torch.where((c < (low or 0)) | (c > (high or math.inf)), 0.0, c)
    c = torch.where(mask != 0, c, 0.0)
    if config["name"] in SEQUENCE_LEVEL:
        c = (c.sum(-1) / mask.sum(-1).clamp(min=1))[:, None] * mask
    torch.testing.assert_close(grad, plain_grad * c, rtol=1e-9, atol=1e-12)
    for key in METRIC_KEYS:
        assert corrected.metrics[key] == pytest.approx(plain.metrics[key], nan_ok=True, rel=1e-12), key


@PROPERTY_SETTINGS
@given(config=st.sampled_from(OBJECTIVES), mode=st.sampled_from(MODES), batch=batches())
def test_on_policy_with_a_perfect_sampler_is_the_vanilla_gradient(config, mode, batch) -> None:
    """logp == old_logp == behav_logp: omega = 1 and c = 1 for every objective and mode."""
    if config["name"] == "vespo" and mode.startswith("sequence"):
        return
    _, old, advantages, mask, _ = batch
    out, grad = loss_and_grad({**config, "correction": mode}, old, old, advantages, mask, behav_logp=old)
    plain, plain_grad = loss_and_grad(config, old, old, advantages, mask)
    torch.testing.assert_close(grad, plain_grad, rtol=1e-12, atol=1e-15)
    informative = (mask != 0) & (advantages != 0)[:, None]
    if informative.any():
        assert out.metrics["grad_weight/mean"] == pytest.approx(1.0, abs=1e-12)
    if mask.any():
        assert out.metrics["correction/weight_mean"] == 1.0 and out.metrics["correction/ess"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ call-time errors


@pytest.mark.parametrize(
    ("config", "kwargs", "key"),
    [
        ({"name": "grpo", "correction": "token_truncate"}, {}, "correction"),
        ({"name": "cispo", "m2_threshold": 0.04}, {}, "m2_threshold"),
        ({"name": "sspo"}, {"behav_logp": torch.zeros(2, 2)}, "behav_logp"),
        ({"name": "sspo"}, {"behav_logp": torch.zeros(3, 4, dtype=torch.long)}, "behav_logp"),
        ({"name": "vespo"}, {"staleness": torch.zeros(3, 2)}, "staleness"),
        ({"name": "luspo"}, {"staleness": torch.zeros(4)}, "staleness"),
    ],
)
def test_call_time_errors_name_the_key(config: dict, kwargs: dict, key: str) -> None:
    logp = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=key):
        build_objective(config)(logp, logp, torch.zeros(3), torch.ones(3, 4), **kwargs)


def test_bypass_mode_is_correction_none_with_the_samplers_log_probs_as_old_logp() -> None:
    rows = random_rows(random.Random(8), 5, behav=0.4)
    kwargs = to_tensors(rows)
    behav = kwargs.pop("behav_logp")
    kwargs["old_logp"] = behav
    loss, grads, _ = reference({"name": "grpo"}, [{**r, "old": r["behav"], "behav": None} for r in rows])
    out = build_objective({"name": "grpo"})(**kwargs)
    assert out.loss.item() == pytest.approx(loss, rel=1e-10)
