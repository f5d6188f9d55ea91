"""Off-policy on purpose: a sampler that lags the learner (rollout.policy_lag, sync_interval), and
one that runs in another dtype (rollout.sampler_dtype). Mirrors sspo_cli/engines/native/lag.py and
the sampling half of sspo_cli/engines/native/step.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers_reliability import write_choice_task

from sspo_cli.engines.native.lag import LaggedWeights, LagSchedule
from sspo_cli.recipe import recipe_from_dict

torch = pytest.importorskip("torch")

from sspo_cli.engines.native.learner import Learner  # noqa: E402
from sspo_cli.engines.native.step import rl_step  # noqa: E402
from sspo_cli.models import load_policy  # noqa: E402
from sspo_cli.objectives import build_objective  # noqa: E402
from sspo_cli.run.schedule import lr_multiplier  # noqa: E402
from sspo_cli.run.state import Policy, TrainState  # noqa: E402
from sspo_cli.tasks import build_task  # noqa: E402


@pytest.mark.parametrize(
    ("schedule", "lags"),
    [
        (LagSchedule(), [0, 0, 0, 0, 0, 0, 0]),
        (LagSchedule(policy_lag=1), [0, 1, 1, 1, 1, 1, 1]),
        (LagSchedule(policy_lag=3), [0, 1, 2, 3, 3, 3, 3]),  # warm-up: the initial weights sample steps 1-4
        (LagSchedule(sync_interval=3), [0, 1, 2, 0, 1, 2, 0]),  # refreshed at the start of steps 1, 4, 7
    ],
    ids=["none", "lag1", "lag3", "sync3"],
)
def test_the_lag_of_each_step(schedule: LagSchedule, lags: list[int]) -> None:
    assert [schedule.lag(step) for step in range(1, 8)] == lags


def test_lag3_samples_with_the_initial_weights_until_step_4() -> None:
    assert [LagSchedule(policy_lag=3).source(step) for step in range(1, 8)] == [0, 0, 0, 0, 1, 2, 3]


def choice_recipe(folder: Path, tiny_overrides: list[str], *overrides: str):
    """The tiny model on one-character answers, which it gets right by chance: rewards vary, the weights move.
    One update per rollout, so each step's ratio statistics are its first update's."""
    task = {"name": "file", "path": str(write_choice_task(folder / "choice.jsonl")), "eval_size": 16, "dev_size": 0}
    return recipe_from_dict(
        {"objective": {"name": "grpo"}, "task": task},
        [o for o in tiny_overrides if not o.startswith("task.")]
        + ["model.device=cpu", "rollout.max_new_tokens=2", "rollout.updates_per_rollout=1", "train.lr=0.01"]
        + ["performance.autocast_bf16=false", *overrides],
    )


def test_the_copies_go_to_a_checkpoint_file_and_back() -> None:
    copies = {3: {"model.embed.weight": torch.ones(2, 2)}, 5: {"model.embed.weight": torch.zeros(2, 2)}}
    flat = LaggedWeights(copies).flat()
    assert set(flat) == {"3/model.embed.weight", "5/model.embed.weight"}
    back = LaggedWeights.from_flat(flat).copies
    assert back.keys() == copies.keys() and all(
        torch.equal(back[k]["model.embed.weight"], copies[k]["model.embed.weight"]) for k in copies
    )
    with pytest.raises(ValueError, match="step"):
        LaggedWeights.from_flat({"model.embed.weight": torch.ones(1)})


def run_steps(folder: Path, tiny_overrides: list[str], steps: int, *overrides: str) -> list[dict[str, float]]:
    """`steps` real RL steps of one policy, as the trainer runs them."""
    recipe = choice_recipe(folder, tiny_overrides, *overrides)
    task = build_task(recipe.task)
    model, tokenizer = load_policy(recipe.model, task.alphabet, recipe.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.train.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(recipe))
    policy, objective, state = Policy(model, tokenizer), build_objective(recipe.objective), TrainState()
    learner, rows = Learner(policy, optimizer, scheduler), []
    for _ in range(steps):
        state.step += 1
        rows.append(rl_step(recipe, learner, task, objective, state))
    return rows


def test_without_lag_the_first_update_is_on_policy(tmp_path: Path, tiny_overrides: list[str]) -> None:
    rows = run_steps(tmp_path, tiny_overrides, 3, "performance.sampling_logprobs=false")
    assert [row["rollout/policy_lag"] for row in rows] == [0.0, 0.0, 0.0]
    assert all(row["ratio/token_mean"] == 1.0 and row["ratio/token_std"] == 0.0 for row in rows), rows
    assert all(row["ratio/log_abs_mean"] == 0.0 for row in rows)


@pytest.mark.parametrize("lag", ["rollout.policy_lag=2", "rollout.sync_interval=3"])
def test_a_lagged_sampler_puts_the_first_update_off_policy(tmp_path: Path, tiny_overrides: list[str], lag: str) -> None:
    rows = run_steps(tmp_path, tiny_overrides, 4, lag)
    lags = [row["rollout/policy_lag"] for row in rows]
    assert lags == ([0.0, 1.0, 2.0, 2.0] if "policy_lag" in lag else [0.0, 1.0, 2.0, 0.0])
    for row, steps_behind in zip(rows, lags):
        if steps_behind == 0:  # the sampling pass's log-probs: the learner's forward up to float rounding
            assert row["ratio/log_abs_mean"] < 1e-5, row
        else:
            assert row["ratio/token_std"] > 0.05 and row["ratio/log_abs_mean"] > 0.05, row


def test_a_lagged_lora_policy_lags_its_adapters(tmp_path: Path, tiny_overrides: list[str]) -> None:
    pytest.importorskip("peft")
    from sspo_cli.models.lora import attach_lora

    recipe = choice_recipe(tmp_path, tiny_overrides, "train.lr=0.05", "model.lora.rank=4", "rollout.policy_lag=1")
    task = build_task(recipe.task)
    model, tokenizer = load_policy(recipe.model, task.alphabet, recipe.seed)
    assert recipe.model.lora is not None
    adapter = attach_lora(recipe.model.lora, model, recipe.seed, base_in_checkpoint=True)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=recipe.train.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(recipe))
    policy, state = Policy(model, tokenizer, adapter=adapter), TrainState()
    learner, rows = Learner(policy, optimizer, scheduler), []
    for _ in range(3):
        state.step += 1
        rows.append(rl_step(recipe, learner, task, build_objective(recipe.objective), state))
    assert [row["rollout/policy_lag"] for row in rows] == [0.0, 1.0, 1.0]
    (copy,) = learner.lagged.copies.values()  # the weights after step 2, which sample step 3 ... of the adapters only
    assert copy.keys() == {name for name, p in model.named_parameters() if p.requires_grad}
    assert all("lora" in name for name in copy)
    assert rows[2]["ratio/log_abs_mean"] > 1e-4, rows[2]


def test_a_bf16_sampler_differs_from_the_learner_and_same_is_exactly_zero(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    (same,) = run_steps(tmp_path, tiny_overrides, 1)
    assert same["rollout/sampler_logp_diff_mean"] == 0.0 and same["rollout/sampler_logp_diff_max"] == 0.0
    for extra in ([], ["performance.sampling_logprobs=false"]):
        (bf16,) = run_steps(tmp_path, tiny_overrides, 1, "rollout.sampler_dtype=bfloat16", *extra)
        assert 0 < bf16["rollout/sampler_logp_diff_mean"] <= bf16["rollout/sampler_logp_diff_max"], bf16
        # the objective's old log-probs are the learner's recomputation: its first update is on-policy
        assert bf16["ratio/log_abs_mean"] == 0.0, bf16
    (float32,) = run_steps(tmp_path, tiny_overrides, 1, "rollout.sampler_dtype=float32")
    assert float32["rollout/sampler_logp_diff_max"] < 1e-5  # the learner runs float32 here too


def test_the_sampler_s_own_log_probs_as_behaviour_put_the_mismatch_into_the_ratios(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    (row,) = run_steps(
        tmp_path, tiny_overrides, 1, "rollout.sampler_dtype=bfloat16", "rollout.behaviour_logprobs=sampler"
    )
    assert row["ratio/log_abs_mean"] > 1e-4 and row["rollout/sampler_logp_diff_mean"] > 0, row


# --------------------------------------------------------------------------- decoupled mode (spec: Sampler correction)


def test_a_lagged_run_with_a_correction_takes_ratios_against_the_proximal_policy(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    """With a correction the objective's ratio is the learner against itself (proximal, recomputed before the first
    update: exactly on-policy there), and the lag shows in the correction's keys instead."""
    lagged = ("rollout.policy_lag=2", "rollout.updates_per_rollout=1", "rollout.minibatch_size=null")
    rows = run_steps(tmp_path, tiny_overrides, 3, *lagged, "objective.correction=token_truncate")
    assert [row["rollout/staleness_max"] for row in rows] == [0.0, 1.0, 2.0]
    for row in rows:
        assert row["ratio/log_abs_mean"] < 1e-5, row  # one update per step, against the proximal policy
        assert 0.0 < row["correction/ess"] <= 1.0
    assert rows[0]["correction/kl_k3"] < 1e-6  # no lag at step 1: the sampler is the proximal policy
    assert rows[2]["correction/kl_k3"] > 1e-4 and rows[2]["correction/weight_max"] <= 2.0 + 1e-6  # truncated at 2


def test_without_a_correction_no_correction_keys_and_the_lag_stays_in_the_ratio(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    (row,) = run_steps(tmp_path, tiny_overrides, 1, "rollout.policy_lag=2")
    assert not [key for key in row if key.startswith(("correction/", "rollout/staleness"))]


def test_on_policy_a_correction_and_the_m2po_mask_change_nothing_but_their_keys(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    """Without lag the sampler is the proximal policy up to float rounding: every weight is 1 and M2PO drops
    nothing, so the first step's objective diagnostics equal the plain objective's."""
    plain = run_steps(tmp_path, tiny_overrides, 1)[0]
    corrected = run_steps(
        tmp_path, tiny_overrides, 1, "objective.correction=token_mask", "objective.m2_threshold=0.04"
    )[0]
    assert corrected["correction/m2_masked_frac"] == 0.0 and corrected["correction/masked_frac"] == 0.0
    assert abs(corrected["correction/weight_mean"] - 1.0) < 1e-5
    for key in ("train/reward", "ratio/token_mean", "weight/seq_mean", "train/loss"):
        assert corrected[key] == pytest.approx(plain[key], abs=1e-5), key


def test_bf16_updates_take_the_learners_own_behaviour_logprobs(tmp_path: Path, tiny_overrides: list[str]) -> None:
    """With bf16 updates the float32 sampling pass is another computation: the objective's old log-probs are the
    learner's own bf16 forward (the first update exactly on-policy), the float32 sampler's logged as the mismatch."""
    (row,) = run_steps(tmp_path, tiny_overrides, 1, "performance.autocast_bf16=true")
    assert row["ratio/log_abs_mean"] == 0.0 and row["ratio/token_std"] == 0.0, row
    assert 0 < row["rollout/sampler_logp_diff_mean"] <= row["rollout/sampler_logp_diff_max"], row
    (sampler,) = run_steps(
        tmp_path, tiny_overrides, 1, "performance.autocast_bf16=true", "rollout.behaviour_logprobs=sampler"
    )
    assert sampler["ratio/log_abs_mean"] > 0, sampler  # the float32 sampler's log-probs against bf16 updates
