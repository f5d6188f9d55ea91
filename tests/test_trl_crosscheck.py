"""Our objectives inside TRL against TRL's own GRPO losses: same batch, same loss, same gradient.

Both sides are real `GRPOTrainer._compute_loss` calls on one tiny model copied twice: TRL's
built-in loss (configured by `trl_loss_settings`, the settings the engine documents as matching)
and `SspoGRPOTrainer`'s, which is our `build_objective`. They share TRL's log-prob code, so what
is compared is the loss formula, its aggregation and its normalisation, through backward into
every weight. The batch is off-policy enough that hard clips and soft gates are both active.

Conditions under which they agree (docs/engines.md): no empty completion (TRL divides by every
row, the spec by the non-empty ones: test_empty_completion_is_where_they_differ), token log-ratios
within +-objective.log_ratio_clamp, TRL's `use_bias_correction_kl=False` when beta > 0, and TRL's
`delta` (two-sided clip), entropy mask/bonus, off-policy mask and vLLM importance correction off.

With TRL's vLLM importance weight on (`trl.vllm_importance_sampling_correction`), TRL weighs its
per-token loss and we weigh each token's gradient (`weighted_gradient`): the same gradient for
token-level objectives and for per-sequence weights (test_trls_importance_weight_gives_trls_gradient).
"""

import copy

import pytest

pytest.importorskip("trl")

import torch
from conftest import REPO, TINY_OVERRIDES

from sspo_cli.engines.trl.engine import grpo_config
from sspo_cli.engines.trl.mapping import plan_trl_run
from sspo_cli.engines.trl.trainer import SspoGRPOTrainer, task_reward_function, training_dataset
from sspo_cli.models import load_policy, save_policy
from sspo_cli.recipe import load_recipe
from sspo_cli.rollout.prompts import text_format
from sspo_cli.tasks import build_task

BATCH, PROMPT_LEN, COMPLETION_LEN = 8, 6, 5


def recipe_for(*overrides: str):
    return load_recipe(
        REPO / "recipes" / "quickstart.yaml",
        [*TINY_OVERRIDES, "engine=trl", "train.steps=1", "rollout.updates_per_rollout=1", *overrides],
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is fastest, and far faster than several on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def policy_and_task():
    recipe = recipe_for()
    task = build_task(recipe.task)
    model, tokenizer = load_policy(recipe.model, task.alphabet, seed=3)
    return model, tokenizer, task


def trainer_pair(recipe, policy_and_task, tmp_path):
    """TRL's GRPOTrainer and ours, each with its own copy of the same weights."""
    from trl import GRPOTrainer

    model, tokenizer, task = policy_and_task
    args = grpo_config(plan_trl_run(recipe), tmp_path)
    reference_model = copy.deepcopy(model)
    if recipe.objective.beta > 0:  # TRL builds a reference model from this folder; the test feeds ref log-probs itself
        save_policy(model, tokenizer, tmp_path / "reference")
        reference_model.config._name_or_path = str(tmp_path / "reference")
    text = text_format(recipe, tokenizer)
    common = dict(
        reward_funcs=task_reward_function(task, text.end_ids(tokenizer, model)),
        args=args,
        train_dataset=training_dataset(task, tokenizer, text),
        processing_class=tokenizer,
    )
    theirs = GRPOTrainer(model=reference_model, **common)
    ours = SspoGRPOTrainer(model=copy.deepcopy(reference_model), recipe=recipe, **common)
    for trainer in (theirs, ours):
        trainer.model.train()
        trainer.current_gradient_accumulation_steps = 1
    return theirs, ours


def off_policy_batch(trainer, tokenizer, completion_lengths, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    vocab = len(tokenizer)
    prompt_ids = torch.randint(4, vocab, (BATCH, PROMPT_LEN), generator=generator)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_ids[0, :2], prompt_mask[0, :2] = tokenizer.pad_token_id, 0  # one left-padded prompt
    completion_ids = torch.randint(4, vocab, (BATCH, COMPLETION_LEN), generator=generator)
    completion_mask = (torch.arange(COMPLETION_LEN) < torch.tensor(completion_lengths)[:, None]).long()
    completion_ids = completion_ids.masked_fill(completion_mask == 0, tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model,
            torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([prompt_mask, completion_mask], 1),
            COMPLETION_LEN,
        )
    noise = lambda: (torch.rand(BATCH, COMPLETION_LEN, generator=generator) - 0.5) * 0.8  # noqa: E731  |log-ratio| <= 0.4
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": torch.randn(BATCH, generator=generator),
        "old_per_token_logps": (logp + noise()) * completion_mask,
        "ref_per_token_logps": (logp + noise()) * completion_mask,
        "num_items_in_batch": completion_mask.sum(),
    }


def loss_and_grads(trainer, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in trainer.model.named_parameters() if p.grad is not None}


FULL_LENGTHS = [5, 1, 3, 5, 2, 4, 5, 3]  # every completion has at least one token

MATCHING = {
    # objective overrides -> TRL settings (from trl_loss_settings) that give the same loss
    "grpo, seq_mean_token_mean == TRL loss_type=grpo": ["objective.name=grpo"],
    "grpo, asymmetric clip (DAPO bounds)": ["objective.name=grpo", "objective.eps_low=0.1", "objective.eps_high=0.28"],
    "grpo, token_mean == TRL loss_type=bnpo": ["objective.name=grpo", "objective.agg=token_mean"],
    "grpo with a k3 KL penalty, beta=0.05": ["objective.name=grpo", "objective.beta=0.05"],
    "gspo == TRL grpo + importance_sampling_level=sequence": [
        "objective.name=gspo",
        "objective.eps_low=0.02",
        "objective.eps_high=0.03",
    ],
    "gspo with a k3 KL penalty, beta=0.05": [
        "objective.name=gspo",
        "objective.eps_low=0.02",
        "objective.eps_high=0.03",
        "objective.beta=0.05",
    ],
    "sapo == TRL loss_type=sapo": ["objective.name=sapo"],
    "sapo, other temperatures": ["objective.name=sapo", "objective.tau_pos=2.0", "objective.tau_neg=0.5"],
}


@pytest.mark.parametrize("case", list(MATCHING))
def test_loss_and_gradient_equal_trl(case: str, policy_and_task, tmp_path) -> None:
    recipe = recipe_for(*MATCHING[case])
    theirs, ours = trainer_pair(recipe, policy_and_task, tmp_path)
    batch = off_policy_batch(theirs, policy_and_task[1], FULL_LENGTHS)
    their_loss, their_grads = loss_and_grads(theirs, batch)
    our_loss, our_grads = loss_and_grads(ours, batch)

    torch.testing.assert_close(our_loss, their_loss, rtol=1e-5, atol=1e-7)
    assert set(our_grads) == set(their_grads) and their_grads
    for name, grad in their_grads.items():
        torch.testing.assert_close(
            our_grads[name], grad, rtol=1e-4, atol=1e-7, msg=lambda m, name=name: f"{case}: {name}: {m}"
        )
    # The batch exercises the non-trivial regime: some tokens (or sequences) are clipped or gated down.
    saturated = ours._metrics["train"]["grad_weight/saturated_frac"][-1]
    weight = ours._metrics["train"]["grad_weight/mean"][-1]
    assert saturated > 0 if recipe.objective.name != "sapo" else weight != pytest.approx(1.0, abs=1e-3)


def test_empty_completion_is_where_they_differ(policy_and_task, tmp_path) -> None:
    """TRL averages over every row, the spec over non-empty ones: a factor B / B' apart, exactly."""
    recipe = recipe_for("objective.name=grpo")
    theirs, ours = trainer_pair(recipe, policy_and_task, tmp_path)
    lengths = [5, 0, 3, 5, 2, 4, 0, 3]
    batch = off_policy_batch(theirs, policy_and_task[1], lengths)
    their_loss, their_grads = loss_and_grads(theirs, batch)
    our_loss, our_grads = loss_and_grads(ours, batch)
    factor = BATCH / sum(1 for n in lengths if n > 0)
    torch.testing.assert_close(our_loss, their_loss * factor, rtol=1e-5, atol=1e-7)
    for name, grad in their_grads.items():
        torch.testing.assert_close(our_grads[name], grad * factor, rtol=1e-4, atol=1e-7)


def importance_weight(old_logp, sampling_logp, mask, mode: str, cap: float) -> torch.Tensor:
    """TRL's documented weight: exp(old - sampling) per token or summed per sequence, truncated at cap or zeroed above."""
    log_weight = (old_logp - sampling_logp) * mask
    if mode.startswith("sequence"):
        log_weight = log_weight.sum(-1, keepdim=True)
    weight = torch.exp(log_weight)
    return weight.clamp(max=cap) if mode.endswith("truncate") else weight.masked_fill(weight > cap, 0.0)


CORRECTED = {
    "grpo, token_truncate": (["objective.name=grpo"], "token_truncate", 1.1),
    "sapo, token_mask": (["objective.name=sapo"], "token_mask", 1.1),
    "gspo, sequence_mask": (
        ["objective.name=gspo", "objective.eps_low=0.02", "objective.eps_high=0.03"],
        "sequence_mask",
        1.3,
    ),
    "grpo token_mean, sequence_truncate": (
        ["objective.name=grpo", "objective.agg=token_mean"],
        "sequence_truncate",
        1.2,
    ),
}


@pytest.mark.parametrize("case", list(CORRECTED))
def test_trls_importance_weight_gives_trls_gradient(case: str, policy_and_task, tmp_path) -> None:
    overrides, mode, cap = CORRECTED[case]
    theirs, ours = trainer_pair(recipe_for(*overrides), policy_and_task, tmp_path)
    batch = off_policy_batch(theirs, policy_and_task[1], FULL_LENGTHS)
    unweighted_loss, unweighted_grads = loss_and_grads(ours, batch)
    generator = torch.Generator().manual_seed(1)
    sampling = batch["old_per_token_logps"] + (torch.rand(BATCH, COMPLETION_LEN, generator=generator) - 0.5) * 0.6
    weight = importance_weight(batch["old_per_token_logps"], sampling, batch["completion_mask"], mode, cap)
    assert (weight < cap).any() and (weight == (cap if mode.endswith("truncate") else 0.0)).any()  # both regimes
    weighted = {**batch, "sampling_per_token_logps": sampling, "importance_sampling_ratio": weight}
    theirs.use_vllm = theirs.vllm_importance_sampling_correction = True  # TRL's loss reads the weight only then
    _, their_grads = loss_and_grads(theirs, weighted)
    our_loss, our_grads = loss_and_grads(ours, weighted)

    torch.testing.assert_close(our_loss, unweighted_loss)  # the objective's value; the weight is in the gradient
    for name, grad in their_grads.items():
        torch.testing.assert_close(
            our_grads[name], grad, rtol=1e-4, atol=1e-7, msg=lambda m, name=name: f"{case}: {name}: {m}"
        )
    assert any(not torch.allclose(our_grads[n], unweighted_grads[n]) for n in our_grads)
