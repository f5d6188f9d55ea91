"""cispo, vespo and luspo against TRL 1.16's own loss, alone and with each of TRL's four vLLM
importance-sampling modes, in float64.

TRL's side is `GRPOTrainer._compute_loss` itself, called on a stand-in trainer that holds a real
`GRPOConfig` and hands back a float64 leaf tensor as the policy's per-token log-probs; its importance
weight is TRL's own block of `_generate_and_score_completions`, restated line for line in
`trl_importance_weight`. Our side is `build_objective` with `behav_logp` = the sampler's log-probs and
the spec's mapping (spec, "2026 baselines and off-policy corrections"):

- cispo: TRL's `epsilon_high` caps r itself, with no lower bound: ours with eps_low = 1 and
  eps_high = epsilon_high - 1; TRL's "dapo" normaliser is token_mean on one process.
- vespo: TRL folds the token-level weight into phi (sequence modes are refused by both).
- luspo: TRL averages over all B rows, the spec over the B' non-empty ones: with an empty row the two
  differ by exactly B / B' (test_luspo_differs_from_trl_by_b_over_b_prime).

TRL's KL bias correction (`use_bias_correction_kl`, on by default) is off: the spec's KL is not weighted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest

pytest.importorskip("trl")

import torch

from sspo_cli.objectives import build_objective

B, T = 6, 5
MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
# mode -> (TRL clip_min, clip_max) = (our correction_min, correction_max); chosen so both bounds act
BOUNDS = {
    "token_truncate": (None, 1.3),
    "token_mask": (0.7, 1.4),
    "sequence_truncate": (0.8, 1.5),
    "sequence_mask": (0.85, 2.0),
}


@pytest.fixture(scope="module")
def trl_module():
    from trl import GRPOConfig, GRPOTrainer

    return GRPOConfig, GRPOTrainer


class StandIn:
    """What `GRPOTrainer._compute_loss` reads of its trainer, with TRL's config and gamma weights."""

    def __init__(self, GRPOTrainer, args, logp: torch.Tensor, use_is: bool):
        self.args = args
        self.loss_type = args.loss_type
        self.importance_sampling_level = args.importance_sampling_level
        self.epsilon_low = args.epsilon  # as GRPOTrainer.__init__ sets them
        self.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
        self.beta = args.beta
        self.top_entropy_quantile = args.top_entropy_quantile
        self.off_policy_mask_threshold = args.off_policy_mask_threshold
        self.use_vllm = self.vllm_importance_sampling_correction = use_is
        self.aux_loss_enabled = False
        self._entropy_bonus_enabled = False
        self.current_gradient_accumulation_steps = 1
        self.model = SimpleNamespace(training=True)
        self.accelerator = SimpleNamespace(
            num_processes=1, gather=lambda x: x, gather_for_metrics=lambda x: x, reduce=lambda x, reduction: x
        )
        self._metrics = defaultdict(lambda: defaultdict(list))
        self.get_gamma_weights = GRPOTrainer.get_gamma_weights
        self._logp = logp

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **kwargs):
        return self._logp, torch.zeros_like(self._logp), None


def trl_importance_weight(old, sampling, mask, mode, clip_min, clip_max):
    """TRL 1.16 `_generate_and_score_completions`, the vLLM importance-sampling block, restated."""
    per_token_logps_diff = (old - sampling) * mask
    per_token_logps_diff = torch.nan_to_num(per_token_logps_diff, nan=0.0)
    if mode in ("sequence_mask", "sequence_truncate"):
        logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)
    else:
        logps_diff = per_token_logps_diff
    ratio = torch.exp(logps_diff)
    if mode in ("sequence_truncate", "token_truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    low = clip_min if clip_min is not None else -math.inf
    high = clip_max if clip_max is not None else math.inf
    return ratio.masked_fill((ratio < low) | (ratio > high), value=0.0)


def batch(lengths, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    mask = (torch.arange(T) < torch.tensor(lengths)[:, None]).to(torch.float64)
    old = -torch.rand(B, T, generator=generator, dtype=torch.float64) * 3 - 0.05
    logp = old + 0.35 * torch.randn(B, T, generator=generator, dtype=torch.float64)
    sampling = old + 0.3 * torch.randn(B, T, generator=generator, dtype=torch.float64)
    ref = logp + 0.2 * torch.randn(B, T, generator=generator, dtype=torch.float64)
    advantages = torch.randn(B, generator=generator, dtype=torch.float64)
    # TRL's log-probs are 0 off the mask (its inputs are padded so); ours ignore what is there
    return {k: v * mask for k, v in dict(logp=logp, old=old, sampling=sampling, ref=ref).items()} | {
        "mask": mask,
        "advantages": advantages,
    }


def trl_loss(trl_module, tmp_path, data, settings: dict, mode: str | None):
    GRPOConfig, GRPOTrainer = trl_module
    clip_min, clip_max = BOUNDS.get(mode, (None, 3.0))
    args = GRPOConfig(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        use_bias_correction_kl=False,
        vllm_importance_sampling_mode=mode or "sequence_mask",
        vllm_importance_sampling_clip_min=clip_min,
        vllm_importance_sampling_clip_max=clip_max,
        **settings,
    )
    logp = data["logp"].clone().requires_grad_(True)
    trainer = StandIn(GRPOTrainer, args, logp, use_is=mode is not None)
    mask = data["mask"]
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": data["advantages"],
        "old_per_token_logps": data["old"],
        "ref_per_token_logps": data["ref"],
        "num_items_in_batch": mask.sum(),
    }
    if mode is not None:
        inputs["importance_sampling_ratio"] = trl_importance_weight(
            data["old"], data["sampling"], mask, mode, clip_min, clip_max
        )
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    loss.backward()
    return loss.detach(), logp.grad


def objective_loss(data, config: dict, mode: str | None):
    logp = data["logp"].clone().requires_grad_(True)
    if mode is not None:
        low, high = BOUNDS[mode]
        config = {**config, "correction": mode, "correction_min": low, "correction_max": high}
    kwargs = {"behav_logp": data["sampling"]} if mode is not None else {}
    ref = data["ref"] if config.get("beta", 0) > 0 else None
    out = build_objective(config)(logp, data["old"], data["advantages"], data["mask"], ref_logp=ref, **kwargs)
    out.loss.backward()
    return out.loss.detach(), logp.grad


# objective -> (TRL GRPOConfig settings, our config)
CASES = {
    "cispo": ({"loss_type": "cispo", "epsilon_high": 1.25}, {"name": "cispo", "eps_low": 1.0, "eps_high": 0.25}),
    "cispo, TRL's recommended epsilon_high 5": (
        {"loss_type": "cispo", "epsilon_high": 5.0},
        {"name": "cispo"},  # the spec's defaults are this recipe
    ),
    "cispo with a KL penalty": (
        {"loss_type": "cispo", "epsilon_high": 1.25, "beta": 0.05},
        {"name": "cispo", "eps_high": 0.25, "beta": 0.05},
    ),
    "vespo": ({"loss_type": "vespo"}, {"name": "vespo"}),
    "vespo, other k and lambda": (
        {
            "loss_type": "vespo",
            "vespo_k_pos": 1.0,
            "vespo_lambda_pos": 0.5,
            "vespo_k_neg": 4.0,
            "vespo_lambda_neg": 3.5,
        },
        {"name": "vespo", "k_pos": 1.0, "lambda_pos": 0.5, "k_neg": 4.0, "lambda_neg": 3.5},
    ),
    "luspo": (
        {"loss_type": "luspo", "importance_sampling_level": "sequence", "epsilon": 0.02, "epsilon_high": 0.03},
        {"name": "luspo", "eps_low": 0.02, "eps_high": 0.03},
    ),
    "luspo with a KL penalty": (
        {
            "loss_type": "luspo",
            "importance_sampling_level": "sequence",
            "epsilon": 0.02,
            "epsilon_high": 0.03,
            "beta": 0.05,
        },
        {"name": "luspo", "eps_low": 0.02, "eps_high": 0.03, "beta": 0.05},
    ),
}
FULL = [5, 1, 3, 5, 2, 4]  # no empty row: TRL's B equals the spec's B'


def cases():
    for case, (theirs, ours) in CASES.items():
        for mode in (None, *MODES):
            if ours["name"] == "vespo" and mode is not None and mode.startswith("sequence"):
                continue  # refused by TRL and by the spec
            yield pytest.param(theirs, ours, mode, id=f"{case}-{mode or 'no correction'}")


@pytest.mark.parametrize(("theirs", "ours", "mode"), list(cases()))
def test_loss_and_gradient_equal_trl(trl_module, tmp_path, theirs, ours, mode) -> None:
    data = batch(FULL)
    their_loss, their_grad = trl_loss(trl_module, tmp_path, data, theirs, mode)
    our_loss, our_grad = objective_loss(data, ours, mode)
    assert abs(our_loss - their_loss).item() <= 1e-13
    assert (our_grad - their_grad).abs().max().item() <= 1e-13
    assert their_grad.abs().max() > 0


@pytest.mark.parametrize("mode", [None, *MODES])
def test_the_batch_exercises_every_bound(mode) -> None:
    """Both bounds of each correction act somewhere, and cispo's cap and luspo's clip bite."""
    data = batch(FULL)
    if mode is not None:
        low, high = BOUNDS[mode]
        config = {"name": "cispo", "eps_high": 0.25, "correction": mode, "correction_min": low, "correction_max": high}
        metrics = build_objective(config)(
            data["logp"], data["old"], data["advantages"], data["mask"], behav_logp=data["sampling"]
        ).metrics
        assert metrics["correction/high_frac"] > 0
        assert metrics["correction/low_frac"] > 0 or low is None
    else:
        args = (data["logp"], data["old"], data["advantages"], data["mask"])
        assert build_objective({"name": "cispo", "eps_high": 0.25})(*args).metrics["grad_weight/truncated_frac"] > 0
        luspo = build_objective({"name": "luspo", "eps_low": 0.02, "eps_high": 0.03})(*args)
        assert 0 < luspo.metrics["grad_weight/saturated_frac"] < 1


@pytest.mark.parametrize("mode", [None, "token_mask", "sequence_truncate"])
def test_luspo_differs_from_trl_by_b_over_b_prime(trl_module, tmp_path, mode) -> None:
    lengths = [5, 0, 3, 5, 0, 4]
    data = batch(lengths, seed=1)
    theirs, ours = CASES["luspo"]
    their_loss, their_grad = trl_loss(trl_module, tmp_path, data, theirs, mode)
    our_loss, our_grad = objective_loss(data, ours, mode)
    factor = B / sum(1 for n in lengths if n > 0)
    assert abs(our_loss - their_loss * factor).item() <= 1e-13
    assert (our_grad - their_grad * factor).abs().max().item() <= 1e-13
    assert abs(our_loss - their_loss).item() > 1e-3


@pytest.mark.parametrize("name", ["cispo", "vespo"])
def test_empty_rows_change_nothing_under_token_mean(trl_module, tmp_path, name) -> None:
    """TRL's "dapo" normaliser counts tokens, as token_mean does: empty rows agree too."""
    data = batch([5, 0, 3, 5, 0, 4], seed=2)
    theirs, ours = CASES[name]
    their_loss, their_grad = trl_loss(trl_module, tmp_path, data, theirs, "token_mask")
    our_loss, our_grad = objective_loss(data, ours, "token_mask")
    assert abs(our_loss - their_loss).item() <= 1e-13
    assert (our_grad - their_grad).abs().max().item() <= 1e-13


def test_trls_cispo_without_epsilon_high_caps_every_weight_at_epsilon(trl_module, tmp_path) -> None:
    """TRL falls back to epsilon = 0.2 when epsilon_high is unset: on-policy omega = 0.2, not 1."""
    data = batch(FULL)
    on_policy = {**data, "logp": data["old"]}
    _, their_grad = trl_loss(trl_module, tmp_path, on_policy, {"loss_type": "cispo"}, None)
    _, our_grad = objective_loss(on_policy, {"name": "cispo"}, None)
    torch.testing.assert_close(their_grad, 0.2 * our_grad, rtol=1e-12, atol=1e-15)
