"""Our sampler correction (spec: "Sampler correction", "Diagnostics added") against verl 0.9.1's rollout correction.

Runs in the verl environment (`.ci/verl_tests`) and is skipped elsewhere. verl's side is verl's own code, called
as its trainer calls it: `compute_rollout_correction_and_add_to_batch` on a real `DataProto` with a real
`RolloutCorrectionConfig` preset (what `RayPPOTrainer.fit` does in decoupled mode), and its registered policy
losses with the `rollout_is_weights` its actor passes. Our side is the public API: `build_objective(...)` called
with `behav_logp=`; our weight c is read off the gradient of grpo under token_mean at logp = old_logp, A = 1
(which is -c/N per counted token).

Batches are random and in float64: ragged completions, an empty one, both signs of A, and about one token in
seven with a large sampler log-ratio (|ds| ~ 3), so that every bound bites. Where verl and the spec differ by a
documented convention, the test applies exactly that convention to our value and asserts equality to float64
round-off; fractions verl takes in float32 are compared at float32 precision (counts k/N differ by >= 1/N).

Two differences the spec does not document are pinned at the end: verl's rollout_is_max/min in sequence modes
describe the raw sequence ratio, not the applied weight; and verl sums unclamped token log-ratios into its
sequence ratio, chi2_seq and k3_kl (the spec clamps each ds at +-20 first), which matters only for |ds| > 20.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest

pytest.importorskip("verl", reason="verl is not installed here: .ci/verl_tests runs these tests in .venv-verl")

import torch  # noqa: E402
from ragged_batches import mixed_advantages, ragged_mask  # noqa: E402
from verl.protocol import DataProto  # noqa: E402
from verl.trainer.config.algorithm import RolloutCorrectionConfig  # noqa: E402
from verl.trainer.ppo.core_algos import get_policy_loss_fn  # noqa: E402
from verl.trainer.ppo.rollout_corr_helper import (  # noqa: E402
    compute_rollout_correction_and_add_to_batch,
    compute_rollout_rejection_mask,
)
from verl.workers.config import ActorConfig, PolicyLossConfig  # noqa: E402

from sspo_cli.objectives import build_objective  # noqa: E402

SEEDS = (0, 1, 2, 3, 4)
CLOSE = dict(rtol=1e-12, atol=1e-15)
FLOAT32 = dict(rel=2e-7, abs=1e-9)
# Our mode -> verl's named preset (spec, Modes table), each with its default bounds.
PRESETS = {
    "token_truncate": RolloutCorrectionConfig.decoupled_token_is,  # rollout_is=token, 2.0
    "sequence_truncate": RolloutCorrectionConfig.decoupled_seq_is,  # rollout_is=sequence, 2.0
    "token_mask": RolloutCorrectionConfig.decoupled_token_icepop,  # rollout_is=token, "0.5_5.0"
    "sequence_mask": RolloutCorrectionConfig.decoupled_seq_is_rs,  # seq IS 2.0 + rollout_rs=seq_sum_k1 "0.5_2.0"
}
# verl pads with an integer response_mask (a slice of the attention mask); a float mask shows its 1e-8.
MASK_DTYPES = (torch.int64, torch.float64)


@dataclass(frozen=True)
class Sampled:
    """A batch as the decoupled trainer holds it: sampler (behav_logp), proximal (old_logp), current (logp)."""

    behav_logp: torch.Tensor
    old_logp: torch.Tensor
    logp: torch.Tensor
    advantages: torch.Tensor  # [B]
    mask: torch.Tensor  # bool [B, T]

    def row(self, index: int) -> Sampled:
        pick = slice(index, index + 1)
        return Sampled(*(getattr(self, f)[pick] for f in ("behav_logp", "old_logp", "logp", "advantages", "mask")))

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())

    @property
    def completions(self) -> int:
        return int(self.mask.any(-1).sum())


def sampled_batch(seed: int, rows: int = 8, tokens: int = 11, empty_rows: int = 1) -> Sampled:
    generator = torch.Generator().manual_seed(seed)
    shape = (rows, tokens)
    old = -0.05 - 3 * torch.rand(shape, generator=generator, dtype=torch.float64)
    logp = old + 0.3 * torch.randn(shape, generator=generator, dtype=torch.float64)
    ds = 0.25 * torch.randn(shape, generator=generator, dtype=torch.float64)
    far = torch.rand(shape, generator=generator) < 0.15
    ds = torch.where(far, 3 * torch.randn(shape, generator=generator, dtype=torch.float64), ds)
    mask = ragged_mask(generator, rows, tokens, empty_rows)
    advantages = mixed_advantages(generator, rows)
    return Sampled((old - ds).where(mask, 0.0), old.where(mask, 0.0), logp.where(mask, 0.0), advantages, mask)


@dataclass(frozen=True)
class VerlCorrection:
    weights: torch.Tensor  # rollout_is_weights, [B, T]
    mask: torch.Tensor  # response_mask after rejection sampling, bool
    metrics: dict[str, float]  # without the rollout_corr/ prefix
    denominator: float  # what verl's masked_mean divides by: response_mask.sum() + 1e-8


def verl_correction(batch: Sampled, config: RolloutCorrectionConfig, mask_dtype=torch.int64) -> VerlCorrection:
    """verl's decoupled-mode step, as RayPPOTrainer.fit runs it on the rollout batch."""
    response_mask = batch.mask.to(mask_dtype)
    data = DataProto.from_dict(
        tensors={"old_log_probs": batch.old_logp, "rollout_log_probs": batch.behav_logp, "response_mask": response_mask}
    )
    data, metrics = compute_rollout_correction_and_add_to_batch(data, config)
    # verl_F.masked_mean divides by mask.sum() + 1e-8, in the mask's dtype: for an integer mask that sum plus a
    # Python float is float32, where 1e-8 vanishes (N + 1e-8 == N); for a float64 mask it is N + 1e-8.
    denominator = float(response_mask.sum() + 1e-8)
    assert denominator == (batch.tokens if mask_dtype == torch.int64 else batch.tokens + 1e-8)
    return VerlCorrection(
        data.batch["rollout_is_weights"],
        data.batch["response_mask"].bool(),
        {key.removeprefix("rollout_corr/"): value for key, value in metrics.items()},
        denominator,
    )


def objective(settings: dict):
    return build_objective({"name": "grpo", "eps_low": 0.2, "eps_high": 0.28, **settings})


def our_metrics(batch: Sampled, settings: dict) -> dict[str, float]:
    out = objective(settings)(batch.logp, batch.old_logp, batch.advantages, batch.mask, behav_logp=batch.behav_logp)
    return out.metrics


def our_weights(batch: Sampled, settings: dict) -> torch.Tensor:
    """c[b,t] through the public API: grpo, token_mean, logp = old_logp (r = 1, unclipped), A = 1: dloss/dlogp =
    -c/N on every counted token."""
    logp = batch.old_logp.clone().requires_grad_(True)
    ones = torch.ones_like(batch.advantages)
    loss = objective({**settings, "agg": "token_mean"})(
        logp, batch.old_logp, ones, batch.mask, behav_logp=batch.behav_logp
    ).loss
    (gradient,) = torch.autograd.grad(loss, logp)
    return -gradient * batch.tokens


def per_completion(batch: Sampled, settings: dict, key: str) -> list[float]:
    """Our metric on each non-empty completion alone: for a sequence mode, 0 or 1 per completion."""
    return [our_metrics(batch.row(b), settings)[key] for b in range(batch.mask.shape[0]) if batch.mask[b].any()]


def sequence_log_ratio(batch: Sampled) -> torch.Tensor:
    """sum_t ds for each completion (|ds| < 20 in these batches, so no clamp applies)."""
    return torch.where(batch.mask, batch.old_logp - batch.behav_logp, 0.0).sum(-1)


# The correction weights.


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", ["token_truncate", "sequence_truncate", "token_mask"])
def test_the_weights_are_verls_preset_weights(seed: int, mode: str) -> None:
    batch = sampled_batch(seed)
    verl = verl_correction(batch, PRESETS[mode]())
    ours = our_weights(batch, {"correction": mode})
    assert torch.equal(verl.mask, batch.mask)  # no rejection sampling in these presets
    torch.testing.assert_close(ours[batch.mask], verl.weights[batch.mask], **CLOSE)
    assert torch.equal(verl.weights[~batch.mask], torch.zeros_like(verl.weights[~batch.mask]))
    # The bounds bite: some weights are cut to 2.0, or zeroed outside [0.5, 5.0].
    if mode.endswith("truncate"):
        assert (verl.weights[batch.mask] == 2.0).any()
    else:
        assert (verl.weights[batch.mask] == 0.0).any()


@pytest.mark.parametrize("seed", SEEDS)
def test_seq_mis_keeps_the_completions_verls_seq_sum_k1_rejection_keeps(seed: int) -> None:
    """decoupled_seq_is_rs: verl keeps sequences with log(0.5) <= -sum ds <= log(2.0) (k1 bounds, reciprocal here)
    and weighs them by seq TIS 2.0; ours zeroes the weight outside [0.5, 2.0]. Same kept set, same weights on it."""
    batch = sampled_batch(seed)
    verl = verl_correction(batch, PRESETS["sequence_mask"]())
    ours = our_weights(batch, {"correction": "sequence_mask"})
    kept = (ours != 0) & batch.mask
    assert torch.equal(kept, verl.mask)
    assert 0 < int(kept.sum()) < batch.tokens  # some completions rejected, some kept
    torch.testing.assert_close(ours[kept], verl.weights[kept], **CLOSE)
    assert torch.equal(ours[batch.mask & ~kept], torch.zeros_like(ours[batch.mask & ~kept]))


# The metrics.


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
@pytest.mark.parametrize("mode", ["token_truncate", "sequence_truncate", "token_mask"])
def test_weight_mean_and_ess_are_verls_up_to_its_1e_8(seed: int, mask_dtype: torch.dtype, mode: str) -> None:
    """rollout_is_mean = sum c / (N + 1e-8 in the mask's dtype); rollout_is_eff_sample_size normalises the weights
    by (mean + 1e-8): 1 / mean((c / (m + 1e-8))^2) with m = sum c / D, D = N + 1e-8 (spec: "adds 1e-8")."""
    batch = sampled_batch(seed)
    verl = verl_correction(batch, PRESETS[mode](), mask_dtype)
    ours = our_metrics(batch, {"correction": mode})
    n, d = batch.tokens, verl.denominator
    weight_sum = ours["correction/weight_mean"] * n
    assert verl.metrics["rollout_is_mean"] == pytest.approx(weight_sum / d, rel=1e-14)
    ess = ours["correction/ess"] * n * d * (weight_sum / d + 1e-8) ** 2 / weight_sum**2
    assert verl.metrics["rollout_is_eff_sample_size"] == pytest.approx(ess, rel=1e-13)
    assert verl.metrics["rollout_is_eff_sample_size"] != pytest.approx(ours["correction/ess"], rel=1e-9)
    if mode.startswith("token"):  # sequence modes: see the last tests
        assert verl.metrics["rollout_is_min"] == ours["correction/weight_min"]
        assert verl.metrics["rollout_is_max"] == ours["correction/weight_max"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
def test_chi2_and_k3_are_verls_off_policy_metrics(seed: int, mask_dtype: torch.dtype) -> None:
    """chi2_token and k3_kl: verl's masked_mean (denominator D); chi2_seq: verl's .mean() over all B rows, an empty
    row counting rho_seq = 1, where the spec averages over the B' non-empty ones. m2_mean: twice the mean of
    verl's k2 rejection statistic 0.5 * ds^2 (rollout_rs token_k2)."""
    batch = sampled_batch(seed, empty_rows=2)
    verl = verl_correction(batch, PRESETS["token_truncate"](), mask_dtype)
    ours = our_metrics(batch, {"correction": "none"})  # these keys do not depend on the mode
    n, d = batch.tokens, verl.denominator
    rows, completions = batch.mask.shape[0], batch.completions
    assert completions == rows - 2
    assert verl.metrics["chi2_token"] == pytest.approx((ours["correction/chi2_token"] + 1) * n / d - 1, rel=1e-14)
    assert verl.metrics["k3_kl"] == pytest.approx(ours["correction/kl_k3"] * n / d, rel=1e-14)
    chi2_seq = (completions * (ours["correction/chi2_seq"] + 1) + (rows - completions)) / rows - 1
    assert verl.metrics["chi2_seq"] == pytest.approx(chi2_seq, rel=1e-13)
    assert verl.metrics["chi2_seq"] == pytest.approx(ours["correction/chi2_seq"] * completions / rows, rel=1e-12)
    _, k2 = compute_rollout_rejection_mask(
        batch.old_logp - batch.behav_logp, batch.mask.to(mask_dtype), rollout_rs="token_k2", rollout_rs_threshold=1e9
    )
    assert k2["rollout_rs_token_k2_mean"] == pytest.approx(0.5 * ours["correction/m2_mean"] * n / d, rel=1e-14)


def test_the_off_policy_metrics_do_not_depend_on_the_mode() -> None:
    batch = sampled_batch(0)
    keys = ("correction/chi2_token", "correction/chi2_seq", "correction/kl_k3", "correction/m2_mean")
    values = {mode: [our_metrics(batch, {"correction": mode})[k] for k in keys] for mode in ["none", *PRESETS]}
    assert all(v == values["none"] for v in values.values())


@pytest.mark.parametrize("seed", SEEDS)
def test_token_fractions_are_verls_and_its_low_without_a_lower_bound_is_below_one_over_max(seed: int) -> None:
    """Token modes: rollout_is_ratio_fraction_high/low over the raw rho (float32 in verl). Token TIS has no lower
    bound: our low_frac is 0, verl's 'low' is rho < 1/2.0, our low_frac with correction_min = 1/2.0."""
    batch = sampled_batch(seed)
    tis = verl_correction(batch, PRESETS["token_truncate"]()).metrics
    ours = our_metrics(batch, {"correction": "token_truncate"})
    assert tis["rollout_is_ratio_fraction_high"] == pytest.approx(ours["correction/high_frac"], **FLOAT32)
    assert ours["correction/truncated_frac"] == ours["correction/high_frac"] > 0
    assert ours["correction/low_frac"] == 0.0 < tis["rollout_is_ratio_fraction_low"]
    reciprocal = our_metrics(batch, {"correction": "token_truncate", "correction_min": 1 / 2.0})
    assert tis["rollout_is_ratio_fraction_low"] == pytest.approx(reciprocal["correction/low_frac"], **FLOAT32)

    icepop = verl_correction(batch, PRESETS["token_mask"]()).metrics
    ours = our_metrics(batch, {"correction": "token_mask"})
    assert icepop["rollout_is_ratio_fraction_high"] == pytest.approx(ours["correction/high_frac"], **FLOAT32)
    assert icepop["rollout_is_ratio_fraction_low"] == pytest.approx(ours["correction/low_frac"], **FLOAT32)
    assert icepop["rollout_is_oob_ratio"] == pytest.approx(ours["correction/masked_frac"], **FLOAT32)
    assert ours["correction/masked_frac"] == pytest.approx(ours["correction/low_frac"] + ours["correction/high_frac"])
    assert ours["correction/masked_frac"] > 0


@pytest.mark.parametrize("seed", SEEDS)
def test_sequence_fractions_count_completions_where_ours_count_tokens(seed: int) -> None:
    """Seq TIS: verl's fractions are over rows (all B of them, empty ones included: their ratio is 1); ours over
    tokens. Each completion alone gives ours 0 or 1, and their sum over B is verl's; 'low' is again < 1/2.0."""
    batch = sampled_batch(seed)
    verl = verl_correction(batch, PRESETS["sequence_truncate"]()).metrics
    rows = batch.mask.shape[0]
    settings = {"correction": "sequence_truncate"}
    high = per_completion(batch, settings, "correction/high_frac")
    low = per_completion(batch, {**settings, "correction_min": 1 / 2.0}, "correction/low_frac")
    assert set(high) | set(low) <= {0.0, 1.0} and sum(high) + sum(low) > 0
    assert verl["rollout_is_ratio_fraction_high"] == pytest.approx(sum(high) / rows, **FLOAT32)
    assert verl["rollout_is_ratio_fraction_low"] == pytest.approx(sum(low) / rows, **FLOAT32)
    ours = our_metrics(batch, settings)
    tokens = batch.mask.sum(-1)[batch.mask.any(-1)].tolist()
    assert ours["correction/high_frac"] == pytest.approx(sum(h * n for h, n in zip(high, tokens)) / batch.tokens)
    assert ours["correction/low_frac"] == 0.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mask_dtype", MASK_DTYPES)
def test_seq_mis_metrics_are_verls_rejection_metrics(seed: int, mask_dtype: torch.dtype) -> None:
    """Seq-MIS: our masked_frac is verl's rollout_rs_masked_fraction (tokens, denominator D). verl's k1 statistic is
    -log rho, so its rs 'fraction_high' is our low side (rho < 0.5) and 'fraction_low' our high side (rho > 2),
    counted over the B' non-empty completions (unlike rollout_is_ratio_fraction_*, over all B rows). Our weight
    metrics are those of the weight verl applies, rollout_is_weights on its rejection-sampled mask."""
    batch = sampled_batch(seed)
    verl = verl_correction(batch, PRESETS["sequence_mask"](), mask_dtype)
    settings = {"correction": "sequence_mask"}
    ours = our_metrics(batch, settings)
    n, d = batch.tokens, verl.denominator
    for key in ("rollout_rs_masked_fraction", "rollout_rs_seq_sum_k1_masked_fraction"):
        assert verl.metrics[key] == pytest.approx(ours["correction/masked_frac"] * n / d, rel=1e-14)
    assert ours["correction/masked_frac"] == pytest.approx(ours["correction/low_frac"] + ours["correction/high_frac"])
    assert ours["correction/masked_frac"] > 0
    low = per_completion(batch, settings, "correction/low_frac")
    high = per_completion(batch, settings, "correction/high_frac")
    assert verl.metrics["rollout_rs_seq_sum_k1_fraction_high"] == pytest.approx(sum(low) / len(low), **FLOAT32)
    assert verl.metrics["rollout_rs_seq_sum_k1_fraction_low"] == pytest.approx(sum(high) / len(high), **FLOAT32)
    applied = torch.where(verl.mask, verl.weights, 0.0)[batch.mask]
    assert ours["correction/weight_mean"] == pytest.approx(float(applied.mean()), rel=1e-14)
    assert ours["correction/weight_min"] == float(applied.min()) == 0.0
    assert ours["correction/weight_max"] == float(applied.max())


# The loss: our objective with a correction is verl's policy loss with verl's rollout_is_weights.


def actor_config(loss_mode: str, loss_agg_mode: str, **fields) -> ActorConfig:
    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        policy_loss=PolicyLossConfig(loss_mode=loss_mode),
        loss_agg_mode=loss_agg_mode,
        **fields,
    )


def verl_loss_and_gradient(batch: Sampled, verl: VerlCorrection, config: ActorConfig) -> tuple[torch.Tensor, ...]:
    """verl's registered loss as its ppo_loss calls it: advantages per token, the rejection-sampled mask."""
    logp = batch.logp.clone().requires_grad_(True)
    loss, _ = get_policy_loss_fn(config.policy_loss.loss_mode)(
        old_log_prob=batch.old_logp,
        log_prob=logp,
        advantages=batch.advantages[:, None] * batch.mask,
        response_mask=verl.mask,
        loss_agg_mode=config.loss_agg_mode,
        config=config,
        rollout_is_weights=verl.weights,
    )
    (gradient,) = torch.autograd.grad(loss, logp)
    return loss.detach(), gradient


def our_loss_and_gradient(batch: Sampled, settings: dict) -> tuple[torch.Tensor, ...]:
    logp = batch.logp.clone().requires_grad_(True)
    loss = build_objective(settings)(logp, batch.old_logp, batch.advantages, batch.mask, behav_logp=batch.behav_logp)
    (gradient,) = torch.autograd.grad(loss.loss, logp)
    return loss.loss.detach(), gradient


AGGREGATIONS = [("token-mean", "token_mean"), ("seq-mean-token-mean", "seq_mean_token_mean")]
# verl's vanilla is PPO with dual clip: clip_ratio_c = 1e9 turns that off (tests/test_integrations_verl.py).
VANILLA = {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28, "clip_ratio_c": 1e9}
GRPO = {"name": "grpo", "eps_low": 0.2, "eps_high": 0.28}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("loss_agg_mode", "agg"), AGGREGATIONS)
@pytest.mark.parametrize("mode", ["token_truncate", "sequence_truncate", "token_mask"])
def test_grpo_with_a_correction_is_verls_vanilla_with_its_weights(seed: int, loss_agg_mode: str, agg: str, mode: str):
    batch = sampled_batch(seed)
    verl = verl_correction(batch, PRESETS[mode]())
    theirs = verl_loss_and_gradient(batch, verl, actor_config("vanilla", loss_agg_mode, **VANILLA))
    ours = our_loss_and_gradient(batch, {**GRPO, "agg": agg, "correction": mode})
    uncorrected = our_loss_and_gradient(batch, {**GRPO, "agg": agg})
    torch.testing.assert_close(theirs, ours, rtol=1e-9, atol=1e-12)  # verl divides by L_b + 1e-8 (seq-mean)
    assert not torch.allclose(ours[1], uncorrected[1])


@pytest.mark.parametrize("seed", SEEDS)
def test_cispo_with_token_tis_is_verls_cispo_with_its_weights(seed: int) -> None:
    batch = sampled_batch(seed)
    verl = verl_correction(batch, PRESETS["token_truncate"]())
    config = actor_config("cispo", "token-mean", clip_ratio_low=0.2, clip_ratio_high=0.28)
    settings = {"name": "cispo", "eps_low": 0.2, "eps_high": 0.28, "agg": "token_mean", "correction": "token_truncate"}
    torch.testing.assert_close(verl_loss_and_gradient(batch, verl, config), our_loss_and_gradient(batch, settings))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("loss_agg_mode", "agg"), AGGREGATIONS)
def test_seq_mis_loss_is_verls_scaled_by_the_rejected_share(seed: int, loss_agg_mode: str, agg: str) -> None:
    """verl's rejection sampling removes rejected tokens from response_mask, and so from the denominator: N_kept
    tokens (token-mean) or B'_kept completions (seq-mean-token-mean) where ours keeps N or B'. Loss and gradient
    differ by exactly that ratio (spec: "the gradient scale differs by N/N_kept")."""
    batch = sampled_batch(seed)
    verl = verl_correction(batch, PRESETS["sequence_mask"]())
    theirs = verl_loss_and_gradient(batch, verl, actor_config("vanilla", loss_agg_mode, **VANILLA))
    ours = our_loss_and_gradient(batch, {**GRPO, "agg": agg, "correction": "sequence_mask"})
    if agg == "token_mean":
        scale = batch.tokens / int(verl.mask.sum())
    else:
        scale = batch.completions / int(verl.mask.any(-1).sum())
    assert scale > 1
    torch.testing.assert_close(theirs, (ours[0] * scale, ours[1] * scale), rtol=1e-9, atol=1e-12)


# The +-20 clamp, and what the spec does not document.


def with_log_ratios(batch: Sampled, row: int, values: list[float]) -> Sampled:
    """The batch with completion ``row``'s sampler log-ratios ds set to ``values``, then 0 to its end."""
    length = int(batch.mask[row].sum())
    assert len(values) <= length
    ds = torch.zeros(length, dtype=torch.float64)
    ds[: len(values)] = torch.tensor(values, dtype=torch.float64)
    behav = batch.behav_logp.clone()
    behav[row, :length] = batch.old_logp[row, :length] - ds
    return replace(batch, behav_logp=behav)


UNBOUNDED_SEQUENCE_IS = dict(rollout_is="sequence", rollout_is_threshold=1e30, rollout_rs=None)


def test_the_sequence_ratio_is_clamped_at_plus_minus_20_by_both() -> None:
    """Tokens within +-20 whose sum is not: both clamp the sum (spec: "verl and the spec clamp the sum at +-20")."""
    batch = with_log_ratios(with_log_ratios(sampled_batch(0), 0, [3.0] * 11), 1, [-9.0] * 3)
    verl = verl_correction(batch, RolloutCorrectionConfig(**UNBOUNDED_SEQUENCE_IS))
    ours = our_weights(batch, {"correction": "sequence_truncate", "correction_max": 1e30})
    torch.testing.assert_close(ours[batch.mask], verl.weights[batch.mask], **CLOSE)
    assert verl.weights[0, 0] == math.exp(20.0) and verl.weights[1, 0] == math.exp(-20.0)
    metrics = our_metrics(batch, {"correction": "none"})
    rows, completions = batch.mask.shape[0], batch.completions
    assert verl.metrics["chi2_seq"] == pytest.approx(metrics["correction/chi2_seq"] * completions / rows, rel=1e-12)


def test_verls_sequence_extremes_are_the_raw_ratio_not_the_applied_weight() -> None:
    """NOT in the spec: in sequence modes verl's rollout_is_max/min are exp of the extreme per-row sum of
    log-ratios (max capped at exp(20)), over all B rows with an empty row at ratio 1, before truncation: they
    equal our weight_max/min with the upper bound lifted, not our (applied) weight_max under the preset."""
    batch = sampled_batch(0)
    log_ratios = sequence_log_ratio(batch)[batch.mask.any(-1)]
    assert log_ratios.max() > math.log(2.0) and log_ratios.min() < 0  # so the empty row sets neither extreme
    verl = verl_correction(batch, PRESETS["sequence_truncate"]()).metrics
    preset = our_metrics(batch, {"correction": "sequence_truncate"})
    lifted = our_metrics(batch, {"correction": "sequence_truncate", "correction_max": 1e30})
    assert preset["correction/weight_max"] == 2.0 < verl["rollout_is_max"]
    assert verl["rollout_is_max"] == pytest.approx(lifted["correction/weight_max"], rel=1e-14)
    assert verl["rollout_is_min"] == pytest.approx(lifted["correction/weight_min"], rel=1e-14)
    assert verl["rollout_is_min"] == pytest.approx(preset["correction/weight_min"], rel=1e-14)
    # The empty row's ratio 1 becomes verl's minimum when every completion has rho_seq > 1.
    behav = batch.old_logp - (batch.old_logp - batch.behav_logp).abs() - 0.01  # every ds > 0
    shifted = replace(batch, behav_logp=behav.where(batch.mask, 0.0))
    assert sequence_log_ratio(shifted)[shifted.mask.any(-1)].min() > 0
    verl = verl_correction(shifted, PRESETS["sequence_truncate"]()).metrics
    ours = our_metrics(shifted, {"correction": "sequence_truncate", "correction_max": 1e30})
    assert verl["rollout_is_min"] == 1.0 < ours["correction/weight_min"]


def test_verl_sums_unclamped_token_log_ratios_where_the_spec_clamps_each_at_20() -> None:
    """NOT in the spec: with a token |ds| > 20, verl's sequence IS weight, chi2_seq and k3_kl use the unclamped ds
    (its token weights, chi2_token and its k1 rejection clamp each token at 20, as the spec does). Completion 0
    with ds = (21, -20.5): verl's rho_seq = exp(0.5), the spec's exp(20 - 20) = 1; both keep it under Seq-MIS."""
    batch = with_log_ratios(sampled_batch(0), 0, [21.0, -20.5])
    for mode in ("sequence_truncate", "sequence_mask"):
        verl = verl_correction(batch, PRESETS[mode]())
        ours = our_weights(batch, {"correction": mode})
        assert bool(verl.mask[0].all())
        assert verl.weights[0, 0].item() == pytest.approx(math.exp(0.5), rel=1e-14)
        assert ours[0, 0].item() == pytest.approx(1.0, rel=1e-14)
        others = batch.mask.clone()
        others[0] = False
        torch.testing.assert_close(ours[others & verl.mask], verl.weights[others & verl.mask], **CLOSE)
    verl = verl_correction(batch, PRESETS["token_truncate"]())
    ours = our_metrics(batch, {"correction": "token_truncate"})
    # Token level: both clamp, so the weights and chi2_token still agree.
    torch.testing.assert_close(
        our_weights(batch, {"correction": "token_truncate"})[batch.mask], verl.weights[batch.mask]
    )
    assert verl.metrics["chi2_token"] == pytest.approx(ours["correction/chi2_token"], rel=1e-14)
    # k3 = rho - ds - 1 per token: verl's at ds = 21 and -20.5, ours at the clamped 20 and -20.
    k3_gap = sum(math.exp(x) - x - (math.exp(max(-20.0, min(20.0, x))) - max(-20.0, min(20.0, x))) for x in (21, -20.5))
    assert k3_gap > 7e8
    assert verl.metrics["k3_kl"] == pytest.approx(ours["correction/kl_k3"] + k3_gap / batch.tokens, rel=1e-12)
    # chi2_seq: completion 0 has rho_seq^2 = exp(1) in verl's, 1 in ours (then verl's mean over all B rows).
    rows, completions = batch.mask.shape[0], batch.completions
    chi2_seq = (completions * (ours["correction/chi2_seq"] + 1) + (rows - completions) + math.exp(1.0) - 1) / rows - 1
    assert verl.metrics["chi2_seq"] == pytest.approx(chi2_seq, rel=1e-13)
