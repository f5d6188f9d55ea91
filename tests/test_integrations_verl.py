"""SSPO as a verl policy loss, cross-checked against our objectives and against verl's own losses.

Runs in the verl environment (`.ci/verl_tests` builds it: verl 0.9.1 pins transformers<5.11) and is skipped
elsewhere. verl's losses are plain torch functions: they are called here the way verl's actor calls them
(`verl.workers.utils.losses.ppo_loss`, keyword for keyword), with real random batches in float64: padding,
both signs of advantage, ratios away from 1. Every difference from our definitions asserted below is one that
docs/engines.md ("verl") lists.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="verl is not installed here: .ci/verl_tests runs these tests in .venv-verl")

import torch  # noqa: E402
from ragged_batches import mixed_advantages, ragged_mask  # noqa: E402
from verl.trainer.ppo.core_algos import agg_loss, get_policy_loss_fn, kl_penalty  # noqa: E402
from verl.workers.config import ActorConfig, PolicyLossConfig  # noqa: E402

from sspo_cli.integrations.verl.loss import VERL_LOSS_MODES, VerlSettingError  # noqa: E402
from sspo_cli.integrations.verl.plugin import SspoPolicyLossConfig  # noqa: E402
from sspo_cli.objectives import METRIC_KEYS, build_objective  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2, 3)
GATES = ("sigmoid", "arctan", "erf", "softsign")
CLOSE = dict(rtol=1e-9, atol=1e-12)
# Our objectives as a default verl actor config sets them: clip_ratio 0.2 gives gmpo's log-space bounds.
AT_VERL_DEFAULTS = {
    "sspo": {"name": "sspo"},
    "gmpo": {"name": "gmpo", "eps_low": 0.2, "eps_high": 0.2},
    "vespo": {"name": "vespo", "agg": "seq_mean_token_mean"},
    "luspo": {"name": "luspo", "eps_low": 0.2, "eps_high": 0.2},
}
LOSS_AGG_MODES = {"luspo": "seq-mean-token-sum"}  # luspo's one aggregation; the others: seq-mean-token-mean


@dataclass(frozen=True)
class Batch:
    old_logp: torch.Tensor
    logp: torch.Tensor
    advantages: torch.Tensor  # [B], ours
    mask: torch.Tensor  # bool [B, T]

    @property
    def token_advantages(self) -> torch.Tensor:
        """What verl passes: GRPO's outcome advantage broadcast over the completion's tokens, 0 on padding."""
        return self.advantages[:, None] * self.mask

    def rows(self, index: slice) -> Batch:
        return Batch(self.old_logp[index], self.logp[index], self.advantages[index], self.mask[index])


def random_batch(seed: int, rows: int = 8, tokens: int = 11, spread: float = 0.6, empty_rows: int = 0) -> Batch:
    """Ragged completions (right padding, log-probs 0 there as verl pads them), both signs of A and a zero."""
    generator = torch.Generator().manual_seed(seed)
    old = -0.05 - 3 * torch.rand(rows, tokens, generator=generator, dtype=torch.float64)
    logp = old + spread * torch.randn(rows, tokens, generator=generator, dtype=torch.float64)
    mask = ragged_mask(generator, rows, tokens, empty_rows)
    advantages = mixed_advantages(generator, rows)
    return Batch(old.where(mask, 0.0), logp.where(mask, 0.0), advantages, mask)


def actor_config(loss_mode: str, policy_loss: PolicyLossConfig | None = None, **fields) -> ActorConfig:
    fields.setdefault("loss_agg_mode", LOSS_AGG_MODES.get(loss_mode, "seq-mean-token-mean"))
    return ActorConfig(
        strategy="fsdp",
        rollout_n=1,
        ppo_micro_batch_size_per_gpu=1,
        policy_loss=policy_loss or PolicyLossConfig(loss_mode=loss_mode),
        **fields,
    )


def verl_loss(
    batch: Batch, config: ActorConfig, logp: torch.Tensor, rollout_is_weights: torch.Tensor | None = None, **info
) -> tuple[torch.Tensor, dict]:
    """The registered loss of config.policy_loss.loss_mode, called as verl's ppo_loss calls it."""
    config.global_batch_info.clear()
    config.global_batch_info.update(info)
    return get_policy_loss_fn(config.policy_loss.loss_mode)(
        old_log_prob=batch.old_logp,
        log_prob=logp,
        advantages=batch.token_advantages,
        response_mask=batch.mask,
        loss_agg_mode=config.loss_agg_mode,
        config=config,
        rollout_is_weights=rollout_is_weights,
    )


def loss_and_gradient(batch: Batch, loss_of) -> tuple[torch.Tensor, torch.Tensor]:
    """loss_of(logp) and its gradient with respect to logp."""
    logp = batch.logp.clone().requires_grad_(True)
    loss = loss_of(logp)
    loss = loss[0] if isinstance(loss, tuple) else loss
    (gradient,) = torch.autograd.grad(loss, logp)
    return loss.detach(), gradient


def native(batch: Batch, settings: dict, advantages: torch.Tensor | None = None):
    objective = build_objective(settings)
    chosen = batch.advantages if advantages is None else advantages
    return lambda logp: objective(logp, batch.old_logp, chosen, batch.mask).loss


def assert_same(left: tuple[torch.Tensor, torch.Tensor], right: tuple[torch.Tensor, torch.Tensor]) -> None:
    torch.testing.assert_close(left[0], right[0], **CLOSE)
    torch.testing.assert_close(left[1], right[1], **CLOSE)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=environment, capture_output=True, text=True, timeout=300
    )


# Loading: verl's own mechanisms, in fresh interpreters.


def test_the_installed_entry_point_registers_our_losses_when_verl_is_imported() -> None:
    code = (
        "from importlib.metadata import entry_points\n"
        "print(sorted(e.name + '=' + e.value for e in entry_points(group='verl.plugins')))\n"
        "import verl\n"
        "from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
        f"print([get_policy_loss_fn(m).__module__ for m in {VERL_LOSS_MODES!r}])\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    entry_points, modules = result.stdout.strip().splitlines()
    assert "sspo=sspo_cli.integrations.verl.plugin" in entry_points
    assert modules == str(["sspo_cli.integrations.verl.loss"] * len(VERL_LOSS_MODES))


def test_the_check_command_passes_here_and_fails_loudly_without_the_plug_in() -> None:
    check = [sys.executable, "-m", "sspo_cli.integrations.verl.check"]
    passed = subprocess.run(check, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert passed.returncode == 0, passed.stderr
    assert "loss_mode sspo, gmpo, vespo, luspo registered by sspo-cli" in passed.stdout
    environment = {**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"}
    failed = subprocess.run(check, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1
    assert "VERL_USE_EXTERNAL_PLUGINS=none leaves out the entry point 'sspo'" in failed.stderr
    assert "loss_mode=sspo is not registered: Unsupported loss mode: sspo" in failed.stderr


def test_verl_use_external_modules_registers_without_the_entry_point() -> None:
    """The variable the Ray workers must get through the runtime env when entry points are off."""
    code = "import verl\nfrom verl.trainer.ppo.core_algos import get_policy_loss_fn\nget_policy_loss_fn('sspo')\n"
    assert run_python(code, VERL_USE_EXTERNAL_PLUGINS="none").returncode == 1
    result = run_python(
        code, VERL_USE_EXTERNAL_PLUGINS="none", VERL_USE_EXTERNAL_MODULES="sspo_cli.integrations.verl.plugin"
    )
    assert result.returncode == 0, result.stderr


def test_a_plug_in_that_fails_to_import_says_so_at_warning_level() -> None:
    """verl logs a failed entry point at DEBUG only; ours warns before verl swallows the error."""
    code = (
        "import sys\n"
        "sys.modules['sspo_cli.integrations.verl.loss'] = None  # its import now raises ImportError\n"
        "import verl\n"
        "from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
        "get_policy_loss_fn('sspo')\n"
    )
    result = run_python(code)
    assert (
        "sspo-cli's verl plug-in failed to load, so loss_mode=sspo/gmpo/vespo/luspo are not registered" in result.stderr
    )
    assert "ValueError: Unsupported loss mode: sspo" in result.stderr
    assert result.returncode == 1


# SSPO and GMPO: the plug-in against our native objective, loss and gradients.


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("seed", SEEDS)
def test_sspo_in_verl_equals_our_objective(gate: str, seed: int) -> None:
    batch = random_batch(seed)
    config = actor_config(
        "sspo", SspoPolicyLossConfig(loss_mode="sspo", gate=gate), tau_pos=1.3, tau_neg=0.8 + 0.1 * seed
    )
    settings = {"name": "sspo", "gate": gate, "tau_pos": 1.3, "tau_neg": 0.8 + 0.1 * seed}
    ours = loss_and_gradient(batch, native(batch, settings))
    assert_same(loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp)), ours)
    # What verl's actor passes: the mini-batch counts, here of this one micro-batch on one rank.
    full = {"dp_size": 1, "global_batch_size": batch.mask.shape[0], "batch_num_tokens": int(batch.mask.sum())}
    assert_same(loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp, **full)), ours)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_metrics_are_our_diagnostics_under_our_keys(seed: int) -> None:
    batch = random_batch(seed)
    _, metrics = verl_loss(batch, actor_config("sspo"), batch.logp)
    expected = build_objective({"name": "sspo"})(batch.logp, batch.old_logp, batch.advantages, batch.mask).metrics
    assert set(metrics) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        assert math.isclose(metrics[key], expected[key], rel_tol=1e-9, abs_tol=1e-12) or (
            math.isnan(metrics[key]) and math.isnan(expected[key])
        ), key


@pytest.mark.parametrize("seed", SEEDS)
def test_gmpo_in_verl_equals_our_objective_and_verls_geo_mean_on_one_micro_batch(seed: int) -> None:
    batch = random_batch(seed)
    fields = dict(clip_ratio_low=0.3, clip_ratio_high=0.45)
    ours = loss_and_gradient(batch, native(batch, {"name": "gmpo", "eps_low": 0.3, "eps_high": 0.45}))
    assert_same(loss_and_gradient(batch, lambda logp: verl_loss(batch, actor_config("gmpo", **fields), logp)), ours)
    geo_mean = actor_config("geo_mean", **fields)
    assert_same(loss_and_gradient(batch, lambda logp: verl_loss(batch, geo_mean, logp)), ours)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss_mode", VERL_LOSS_MODES)
def test_micro_batches_and_ranks_add_up_to_the_mini_batch(seed: int, loss_mode: str) -> None:
    batch = random_batch(seed, rows=8)
    config = actor_config(loss_mode)
    whole = loss_and_gradient(batch, native(batch, AT_VERL_DEFAULTS[loss_mode]))
    halves = [batch.rows(slice(0, 3)), batch.rows(slice(3, 8))]
    counts = {"global_batch_size": 8, "batch_num_tokens": int(batch.mask.sum())}
    micro = [
        loss_and_gradient(half, lambda logp, h=half: verl_loss(h, config, logp, dp_size=1, **counts)) for half in halves
    ]
    torch.testing.assert_close(micro[0][0] + micro[1][0], whole[0], **CLOSE)
    torch.testing.assert_close(torch.cat([micro[0][1], micro[1][1]]), whole[1], **CLOSE)
    # Two data-parallel ranks, one half each: DDP/FSDP average the ranks' gradients.
    ranks = [
        loss_and_gradient(half, lambda logp, h=half: verl_loss(h, config, logp, dp_size=2, **counts)) for half in halves
    ]
    torch.testing.assert_close(torch.cat([ranks[0][1], ranks[1][1]]) / 2, whole[1], **CLOSE)


def test_verls_geo_mean_normalises_each_micro_batch_so_accumulated_gradients_scale_with_their_number() -> None:
    """geo_mean returns torch.mean over the micro-batch and ignores global_batch_info: two micro-batches of a
    mini-batch give twice its gradient (our gmpo gives it once)."""
    batch = random_batch(5, rows=8)
    config = actor_config("geo_mean")
    whole = loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp))
    halves = [batch.rows(slice(0, 4)), batch.rows(slice(4, 8))]
    counts = {"dp_size": 1, "global_batch_size": 8, "batch_num_tokens": int(batch.mask.sum())}
    micro = [loss_and_gradient(h, lambda logp, h=h: verl_loss(h, config, logp, **counts)) for h in halves]
    torch.testing.assert_close(torch.cat([micro[0][1], micro[1][1]]), 2 * whole[1], **CLOSE)


def test_empty_completions_count_as_verl_counts_them_when_it_passes_the_mini_batch_size() -> None:
    """The spec divides by B' (non-empty completions); verl's global_batch_size counts every completion."""
    batch = random_batch(3, rows=6, empty_rows=2)
    config = actor_config("sspo")
    ours = loss_and_gradient(batch, native(batch, {"name": "sspo"}))
    assert_same(loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp)), ours)
    loss, gradient = loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp, global_batch_size=6))
    assert_same((loss * 6 / 4, gradient * 6 / 4), ours)
    # verl's geo_mean averages over all B rows, empty ones included.
    geo = loss_and_gradient(batch, lambda logp: verl_loss(batch, actor_config("geo_mean"), logp))
    gmpo = loss_and_gradient(batch, native(batch, AT_VERL_DEFAULTS["gmpo"]))
    assert_same((geo[0] * 6 / 4, geo[1] * 6 / 4), gmpo)


# Rollout importance weights.


def test_sequence_rollout_weights_scale_each_completion_and_token_weights_enter_their_geometric_mean() -> None:
    batch = random_batch(7)
    generator = torch.Generator().manual_seed(7)
    per_sequence = 0.5 + torch.rand(batch.mask.shape[0], generator=generator, dtype=torch.float64)
    config = actor_config("sspo")
    weighted = native(batch, {"name": "sspo"}, batch.advantages * per_sequence)
    broadcast = per_sequence[:, None].expand_as(batch.mask)
    assert_same(
        loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp, broadcast)),
        loss_and_gradient(batch, weighted),
    )
    token = 0.5 + torch.rand(batch.mask.shape, generator=generator, dtype=torch.float64)
    geometric = torch.exp(torch.where(batch.mask, token.log(), 0.0).sum(-1) / batch.mask.sum(-1))
    assert_same(
        loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp, token)),
        loss_and_gradient(batch, native(batch, {"name": "sspo"}, batch.advantages * geometric)),
    )
    # verl's geo_mean takes the same geometric mean, of weight + 1e-10.
    gmpo, geo_mean = actor_config("gmpo"), actor_config("geo_mean")
    ours = loss_and_gradient(batch, lambda logp: verl_loss(batch, gmpo, logp, token))
    theirs = loss_and_gradient(batch, lambda logp: verl_loss(batch, geo_mean, logp, token))
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-12)
    # A rejected token (weight 0) rejects its completion: the weight is one product over the tokens.
    token[1, 0] = 0.0
    loss, gradient = loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp, token))
    assert torch.isfinite(loss) and torch.equal(gradient[1], torch.zeros_like(gradient[1]))


# verl's own losses against ours, where the definitions coincide.


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("loss_agg_mode", "agg"), [("seq-mean-token-mean", "seq_mean_token_mean"), ("token-mean", "token_mean")]
)
def test_verls_vanilla_without_dual_clip_equals_our_grpo(seed: int, loss_agg_mode: str, agg: str) -> None:
    batch = random_batch(seed)
    config = actor_config(
        "vanilla", loss_agg_mode=loss_agg_mode, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=1e9
    )
    ours = native(batch, {"name": "grpo", "eps_low": 0.2, "eps_high": 0.28, "agg": agg})
    assert_same(loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp)), loss_and_gradient(batch, ours))


def test_verls_dual_clip_caps_negative_advantage_tokens_beyond_clip_ratio_c() -> None:
    batch = random_batch(0, spread=0.2)  # every other ratio stays below 3
    logp = batch.logp.clone()
    logp[1, 0] = batch.old_logp[1, 0] + math.log(4.0)  # A < 0 and r = 4 > clip_ratio_c = 3
    batch = Batch(batch.old_logp, logp, batch.advantages, batch.mask)
    config = actor_config("vanilla", clip_ratio_c=3.0)
    theirs = loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp))
    ours = loss_and_gradient(batch, native(batch, {"name": "grpo"}))
    assert theirs[1][1, 0] == 0.0 and ours[1][1, 0] != 0.0
    others = torch.ones_like(batch.mask)
    others[1, 0] = False
    torch.testing.assert_close(theirs[1][others], ours[1][others], **CLOSE)


@pytest.mark.parametrize("seed", SEEDS)
def test_verls_gspo_equals_ours_with_seq_mean_token_mean(seed: int) -> None:
    batch = random_batch(seed, spread=0.05)
    config = actor_config("gspo", clip_ratio_low=3e-3, clip_ratio_high=4e-3)
    ours = native(batch, {"name": "gspo", "eps_low": 3e-3, "eps_high": 4e-3})
    assert_same(loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp)), loss_and_gradient(batch, ours))


def test_verls_gspo_with_token_mean_weighs_completions_by_length() -> None:
    batch = random_batch(1, spread=0.05)
    config = actor_config("gspo", loss_agg_mode="token-mean", clip_ratio_low=3e-3, clip_ratio_high=4e-3)
    ours = loss_and_gradient(batch, native(batch, {"name": "gspo", "eps_low": 3e-3, "eps_high": 4e-3}))
    theirs = loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp))
    lengths = batch.mask.sum(-1, keepdim=True).to(torch.float64)
    # d loss / d logp[b,t] is the spec's times L_b * B / N.
    torch.testing.assert_close(theirs[1], ours[1] * lengths * 8 / lengths.sum(), **CLOSE)


def test_verls_gspo_caps_the_sequence_log_ratio_at_10() -> None:
    batch = random_batch(2, spread=0.0)
    logp = batch.logp.clone()
    logp[1] = torch.where(batch.mask[1], batch.old_logp[1] + 12.0, 0.0)  # A < 0: s = e^12 is not clipped
    batch = Batch(batch.old_logp, logp, batch.advantages, batch.mask)
    config = actor_config("gspo")
    theirs = loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp))
    ours = loss_and_gradient(batch, native(batch, {"name": "gspo", "eps_low": 0.2, "eps_high": 0.2}))
    assert theirs[1][1].abs().sum() == 0.0 and ours[1][1].abs().sum() > 0.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("loss_agg_mode", ["seq-mean-token-mean", "token-mean"])
def test_verls_sapo_equals_ours_whatever_the_loss_agg_mode(seed: int, loss_agg_mode: str) -> None:
    """verl's sapo always aggregates seq-mean-token-mean: it ignores loss_agg_mode."""
    batch = random_batch(seed)
    config = actor_config("sapo", loss_agg_mode=loss_agg_mode, tau_pos=0.9, tau_neg=1.4)
    ours = native(batch, {"name": "sapo", "tau_pos": 0.9, "tau_neg": 1.4})
    assert_same(loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp)), loss_and_gradient(batch, ours))


@pytest.mark.parametrize("seed", SEEDS)
def test_verls_low_var_kl_loss_is_our_beta_term(seed: int) -> None:
    """use_kl_loss=True, kl_loss_type=low_var_kl, kl_loss_coef=beta: the spec's k3 KL aggregated per completion."""
    batch = random_batch(seed, spread=0.3)
    generator = torch.Generator().manual_seed(seed)
    ref = (batch.old_logp + 0.3 * torch.randn(batch.mask.shape, generator=generator, dtype=torch.float64)).where(
        batch.mask, 0.0
    )

    def verl_total(logp):
        policy, _ = verl_loss(batch, actor_config("sspo"), logp)
        kl = kl_penalty(logprob=logp, ref_logprob=ref, kl_penalty="low_var_kl")
        return policy + 0.05 * agg_loss(loss_mat=kl, loss_mask=batch.mask, loss_agg_mode="seq-mean-token-mean")

    objective = build_objective({"name": "sspo", "beta": 0.05})
    ours = loss_and_gradient(
        batch, lambda logp: objective(logp, batch.old_logp, batch.advantages, batch.mask, ref_logp=ref).loss
    )
    assert_same(loss_and_gradient(batch, verl_total), ours)


# Refusals: one clear message naming the verl key.


def test_a_loss_agg_mode_that_conflicts_with_the_spec_is_refused() -> None:
    batch = random_batch(0)
    for mode in ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
        with pytest.raises(
            VerlSettingError, match="actor_rollout_ref.actor.loss_agg_mode=.* set .*seq-mean-token-mean"
        ):
            verl_loss(batch, actor_config("sspo", loss_agg_mode=mode), batch.logp)


def test_advantages_that_vary_within_a_completion_are_refused() -> None:
    batch = random_batch(0)
    advantages = batch.token_advantages.clone()
    advantages[3, 0] += 0.5
    with pytest.raises(
        VerlSettingError, match="completion 3's token advantages differ by up to 0.5: set algorithm.adv_estimator"
    ):
        get_policy_loss_fn("sspo")(
            old_log_prob=batch.old_logp,
            log_prob=batch.logp,
            advantages=advantages,
            response_mask=batch.mask,
            loss_agg_mode="seq-mean-token-mean",
            config=actor_config("sspo"),
        )


def test_bad_values_are_refused_naming_the_verl_key() -> None:
    batch = random_batch(0)
    with pytest.raises(VerlSettingError, match=r"actor_rollout_ref\.actor\.tau_neg: Input should be greater than 0"):
        verl_loss(batch, actor_config("sspo", tau_neg=-1.0), batch.logp)
    with pytest.raises(VerlSettingError, match=r"actor_rollout_ref\.actor\.policy_loss\.gate: Input should be"):
        SspoPolicyLossConfig(loss_mode="sspo", gate="tanh")
    with pytest.raises(VerlSettingError, match=r"actor_rollout_ref\.actor\.policy_loss\.gate: Extra inputs"):
        SspoPolicyLossConfig(loss_mode="gmpo", gate="arctan")
    with pytest.raises(VerlSettingError, match=r"not 'vanilla': set actor_rollout_ref\.actor\.policy_loss\.loss_mode"):
        SspoPolicyLossConfig(loss_mode="vanilla")
    with pytest.raises(VerlSettingError, match="dp_size=2 needs global_batch_info\\['global_batch_size'\\]"):
        verl_loss(batch, actor_config("sspo"), batch.logp, dp_size=2)


# The launch path: verl's Hydra config, our keys in it, verl's own ppo_loss.


def compose_actor(*overrides: str):
    """The actor config a verl worker builds from `python -m verl.trainer.main_ppo OVERRIDES`."""
    import verl
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        config = compose(config_name="ppo_trainer", overrides=list(overrides))
    return omega_conf_to_dataclass(config.actor_rollout_ref.actor)


LAUNCH = (
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.actor.policy_loss._target_=sspo_cli.integrations.verl.plugin.SspoPolicyLossConfig",
    "actor_rollout_ref.actor.policy_loss.loss_mode=sspo",
    "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
    "actor_rollout_ref.actor.tau_pos=2.0",
)


def documented_launch_overrides() -> list[str]:
    """The overrides of the launch example in docs/engines.md (the block after <!-- verl-launch -->)."""
    import shlex

    text = (REPO / "docs" / "engines.md").read_text().split("<!-- verl-launch -->", 1)[1]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    command = block.split("verl.trainer.main_ppo", 1)[1].replace("\\\n", " ")
    return shlex.split(command)


def test_the_documented_launch_builds_the_actor_config_of_our_loss() -> None:
    overrides = documented_launch_overrides()
    assert "actor_rollout_ref.actor.policy_loss.loss_mode=sspo" in overrides
    actor = compose_actor(*overrides)
    assert isinstance(actor.policy_loss, SspoPolicyLossConfig)
    assert (actor.policy_loss.loss_mode, actor.policy_loss.gate, actor.loss_agg_mode) == (
        "sspo",
        "sigmoid",
        "seq-mean-token-mean",
    )
    batch = random_batch(0)
    assert_same(
        loss_and_gradient(batch, lambda logp: verl_loss(batch, actor, logp)),
        loss_and_gradient(batch, native(batch, {"name": "sspo", "tau_pos": actor.tau_pos, "tau_neg": actor.tau_neg})),
    )


def padded_micro_batch(batch: Batch, logp: torch.Tensor):
    """verl's actor input for one micro-batch: a TensorDict as ppo_loss reads it, log-probs unpadded as the model
    returns them (one value per prompt and response token, shifted left by one)."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu

    rows, tokens = batch.mask.shape
    prompt = 2
    lengths = batch.mask.sum(-1)
    flat = torch.cat([torch.cat([logp.new_zeros(1), logp[b, : lengths[b]], logp.new_zeros(1)]) for b in range(rows)])
    attention = torch.cat([torch.ones(rows, prompt, dtype=torch.int64), batch.mask.long()], dim=1)
    data = TensorDict(
        {
            "prompts": torch.ones(rows, prompt, dtype=torch.int64),
            "responses": torch.ones(rows, tokens, dtype=torch.int64),
            "attention_mask": attention,
            "response_mask": batch.mask.long(),
            "old_log_probs": batch.old_logp,
            "advantages": batch.token_advantages,
        },
        batch_size=[rows],
    )
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(batch.mask.sum()), global_batch_size=rows)
    return {"log_probs": flat}, data


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_a_launch_config_with_our_keys_runs_through_verls_ppo_loss(seed: int) -> None:
    from verl.workers.utils.losses import ppo_loss

    actor = compose_actor(*LAUNCH, "+actor_rollout_ref.actor.policy_loss.gate=arctan")
    assert isinstance(actor.policy_loss, SspoPolicyLossConfig) and actor.policy_loss.gate == "arctan"
    batch = random_batch(seed)

    def through_verl(logp):
        output, data = padded_micro_batch(batch, logp)
        loss, metrics = ppo_loss(actor, output, data)
        through_verl.metrics = metrics
        return loss

    ours = native(batch, {"name": "sspo", "gate": "arctan", "tau_pos": 2.0, "tau_neg": 1.05})
    assert_same(loss_and_gradient(batch, through_verl), loss_and_gradient(batch, ours))
    assert set(METRIC_KEYS) <= set(through_verl.metrics)


def test_a_bad_key_in_the_launch_config_fails_when_verl_builds_it() -> None:
    with pytest.raises(Exception, match=r"actor_rollout_ref\.actor\.policy_loss\.gate: Input should be"):
        compose_actor(*LAUNCH, "+actor_rollout_ref.actor.policy_loss.gate=tanh")
    with pytest.raises(Exception, match="gate"):  # verl's own PolicyLossConfig has no field for it
        compose_actor(
            LAUNCH[0],
            "actor_rollout_ref.actor.policy_loss.loss_mode=sspo",
            "+actor_rollout_ref.actor.policy_loss.gate=erf",
        )


# verl's advantage estimators: outcome advantages are one per completion, per-token returns are refused.


def test_verls_grpo_advantages_are_our_group_advantages_and_pass_as_one_per_completion() -> None:
    import numpy as np
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    from sspo_cli.integrations.verl.loss import sequence_advantages
    from sspo_cli.objectives import compute_advantages

    batch = random_batch(4, rows=8)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5], dtype=torch.float64)
    lengths = batch.mask.sum(-1)
    token_rewards = torch.zeros(batch.mask.shape, dtype=torch.float64)
    token_rewards[torch.arange(8), lengths - 1] = rewards  # the reward sits on the last token
    group = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    token_advantages, _ = get_adv_estimator_fn("grpo")(token_rewards, batch.mask, index=group)
    advantages = sequence_advantages(token_advantages, batch.mask, "sspo")
    torch.testing.assert_close(advantages, compute_advantages(rewards, group_size=4), **CLOSE)


def test_verls_per_token_returns_are_refused() -> None:
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.core_algos import get_adv_estimator_fn

    batch = random_batch(4, rows=8)
    token_rewards = torch.zeros(batch.mask.shape, dtype=torch.float64)
    token_rewards[torch.arange(8), batch.mask.sum(-1) - 1] = 1.0
    estimator = get_adv_estimator_fn("reinforce_plus_plus")
    token_advantages, _ = estimator(token_rewards, batch.mask.double(), config=AlgoConfig(gamma=0.9))
    with pytest.raises(VerlSettingError, match="set algorithm.adv_estimator to an outcome estimator"):
        get_policy_loss_fn("sspo")(
            old_log_prob=batch.old_logp,
            log_prob=batch.logp,
            advantages=token_advantages,
            response_mask=batch.mask,
            loss_agg_mode="seq-mean-token-mean",
            config=actor_config("sspo"),
        )


@pytest.mark.parametrize("seed", SEEDS)
def test_vespo_and_luspo_in_verl_equal_our_objectives(seed: int) -> None:
    batch = random_batch(seed, spread=0.3)
    vespo = actor_config("vespo", SspoPolicyLossConfig(loss_mode="vespo", k_pos=1.5, lambda_neg=2.5))
    ours = native(batch, {"name": "vespo", "k_pos": 1.5, "lambda_neg": 2.5, "agg": "seq_mean_token_mean"})
    assert_same(loss_and_gradient(batch, lambda logp: verl_loss(batch, vespo, logp)), loss_and_gradient(batch, ours))
    luspo = actor_config("luspo", clip_ratio_low=2e-3, clip_ratio_high=2.5e-3)
    ours = native(batch, {"name": "luspo"})  # its defaults are LUSPO's bounds
    assert_same(loss_and_gradient(batch, lambda logp: verl_loss(batch, luspo, logp)), loss_and_gradient(batch, ours))


def test_luspo_takes_verls_seq_mean_token_sum_only_and_vespo_refuses_rollout_weights() -> None:
    batch = random_batch(1)
    with pytest.raises(VerlSettingError, match="loss_agg_mode=seq-mean-token-sum"):
        verl_loss(batch, actor_config("luspo", loss_agg_mode="token-mean"), batch.logp)
    with pytest.raises(VerlSettingError, match="rollout_is=null"):
        verl_loss(batch, actor_config("vespo"), batch.logp, torch.ones_like(batch.logp))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("loss_mode", "fields", "ours"),
    [
        (
            "cispo",
            {"clip_ratio_low": 0.2, "clip_ratio_high": 0.28},
            {"name": "cispo", "eps_low": 0.2, "eps_high": 0.28},
        ),
        ("dppo_tv", {"clip_ratio_low": 0.15, "clip_ratio_high": 0.15, "clip_ratio_c": 20.0}, {"name": "dppo_tv"}),
        ("dppo_kl", {"clip_ratio_low": 0.05, "clip_ratio_high": 0.05, "clip_ratio_c": 20.0}, {"name": "dppo_kl"}),
    ],
)
def test_verls_cispo_and_dppo_equal_ours_under_token_mean(seed: int, loss_mode: str, fields: dict, ours: dict) -> None:
    """verl's own 2026 losses against ours (spec: "What was checked"). verl's DPPO cap is clip_ratio_c, whose
    ActorConfig default is 3.0: set to the spec's 20 here."""
    batch = random_batch(seed, spread=0.4)
    config = actor_config(loss_mode, loss_agg_mode="token-mean", **fields)
    theirs = loss_and_gradient(batch, lambda logp: verl_loss(batch, config, logp))
    assert_same(theirs, loss_and_gradient(batch, native(batch, {**ours, "agg": "token_mean"})))
