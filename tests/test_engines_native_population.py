"""One optimiser step over a population's stacked weights equals each member's own clipped AdamW step."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from sspo_cli.engines.native.population import clip_member_grad_norms_, member_optimizer_state  # noqa: E402
from sspo_cli.models import build_char_tokenizer, build_tiny_model  # noqa: E402
from sspo_cli.models.population import Population  # noqa: E402
from sspo_cli.recipe import TinyModelConfig  # noqa: E402

TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64)


def gradients(model, member: int, step: int) -> dict[str, torch.Tensor]:
    """Made-up gradients of a size that clipping at 1.0 cuts for some members and not others."""
    generator = torch.Generator().manual_seed(100 * step + member)
    scale = 0.002 * (1 + member * 3)
    return {name: scale * torch.randn(p.shape, generator=generator) for name, p in model.named_parameters()}


@pytest.mark.parametrize("max_norm", [1.0, math.inf])
def test_a_stacked_step_is_each_members_own_step(max_norm):
    tokenizer = build_char_tokenizer("0123456789+-=* ")
    models = [build_tiny_model(TINY, tokenizer, seed=seed) for seed in range(3)]
    population = Population.stack(models)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01, fused=True) for m in models]
    stacked = torch.optim.AdamW(population.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    clipped = set()
    for step in range(3):
        for member, (model, optimizer) in enumerate(zip(models, optimizers)):
            for name, p in model.named_parameters():
                p.grad = gradients(model, member, step)[name]
            norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            optimizer.step()
            clipped |= {member} if norm > max_norm else set()
            for name, weight in population.weights.items():
                if weight.grad is None:
                    weight.grad = torch.zeros_like(weight)
                weight.grad[member] = gradients(model, member, step)[name]
        norms = clip_member_grad_norms_(population.parameters(), max_norm)
        stacked.step()
        for member, model in enumerate(models):
            own = sum(float(g.pow(2).sum()) for g in gradients(model, member, step).values()) ** 0.5
            assert float(norms[member]) == pytest.approx(own, rel=1e-5)
    assert max_norm == math.inf or 0 < len(clipped) < 3  # clipping cut some members and not others
    for member, model in enumerate(models):
        for name, p in model.named_parameters():
            torch.testing.assert_close(population.weights[name][member], p.detach(), rtol=1e-6, atol=1e-7)


POPULATION_RECIPE = [
    "model.tiny.hidden_size=32",
    "model.tiny.num_layers=2",
    "model.tiny.intermediate_size=64",
    "train.warm_start.enabled=false",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "rollout.max_new_tokens=6",
    "rollout.updates_per_rollout=2",
    "performance.autocast_bf16=false",
    "train.lr=1e-3",
    "task={name: sort, length: 4, reward: similarity, eval_size: 8, dev_size: 8, train_size: 200}",  # partial credit from the start
]


# what a step measures of its own speed: a population's step is shared by its members, so these differ
TIMINGS = {
    "train/step_seconds",
    "train/sample_seconds",
    "train/tokens_per_s",
    "train/objective_seconds",
    "train/population_size",
}


@pytest.mark.parametrize(
    ("objective_name", "bf16", "share_prompts", "tolerance"),
    [
        ("sspo", False, True, 1e-5),
        ("grpo", False, True, 1e-5),
        ("sspo", False, False, 1e-5),
        ("sspo", True, True, 1e-2),
        ("cispo", True, False, 1e-2),
    ],
)
def test_the_first_rl_step_of_each_member_equals_its_standalone_step(objective_name, bf16, share_prompts, tolerance):
    """Equal within float32 rounding; with bf16 updates within bf16 rounding (a batched product rounds its bf16
    outputs where a single one does, but may sum in another order)."""
    from conftest import REPO

    from sspo_cli.engines.native.learner import Learner
    from sspo_cli.engines.native.loop import make_optimizer
    from sspo_cli.engines.native.population import PopulationLearner, population_rl_step, population_unsupported
    from sspo_cli.engines.native.step import rl_step
    from sspo_cli.models import load_policy
    from sspo_cli.objectives import build_objective
    from sspo_cli.recipe import load_recipe
    from sspo_cli.run.state import Policy, TrainState
    from sspo_cli.tasks import build_task

    overrides = [
        *POPULATION_RECIPE,
        f"objective.name={objective_name}",
        f"performance.autocast_bf16={str(bf16).lower()}",
        f"performance.share_prompt_prefix={str(share_prompts).lower()}",
    ]
    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", overrides)
    assert population_unsupported(recipe) is None
    task, objective, seeds = build_task(recipe.task), build_objective(recipe.objective), [0, 1, 2]
    standalone, initial = [], []
    for seed in seeds:
        member = recipe.model_copy(update={"seed": seed})
        model, tokenizer = load_policy(member.model, task.alphabet, seed)
        initial.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))
        optimizer, scheduler = make_optimizer(member, model)
        state = TrainState(step=1)
        metrics = rl_step(member, Learner(Policy(model, tokenizer), optimizer, scheduler), task, objective, state)
        standalone.append((metrics, model))
    models = [load_policy(recipe.model, task.alphabet, seed)[0] for seed in seeds]
    tokenizer = load_policy(recipe.model, task.alphabet, 0)[1]
    learner = PopulationLearner.of(recipe, models, tokenizer)
    population = learner.population
    together = population_rl_step(recipe, learner, task, [objective] * len(seeds), seeds, step=1)
    for k, (metrics, model) in enumerate(standalone):
        assert set(metrics) - TIMINGS <= set(together[k])  # every metric of a standalone step
        for key in set(metrics) - TIMINGS:
            # the bf16 and float32 log-probs' difference is rounding itself: the same size, not the same number
            rel = 0.5 if key.startswith("rollout/sampler_logp_diff") else tolerance
            assert together[k][key] == pytest.approx(metrics[key], rel=rel, abs=tolerance / 10, nan_ok=True), (k, key)
        together_weights = torch.cat(
            [population.weights[name][k].detach().flatten() for name, _ in model.named_parameters()]
        )
        own_weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        if not bf16:
            torch.testing.assert_close(together_weights, own_weights, rtol=1e-5, atol=1e-5)
        else:  # bf16 rounding alone moves a step by about 6% of its size (bf16 against float32 updates)
            difference = float((together_weights - own_weights).norm())
            assert difference < 0.1 * float((own_weights - initial[k]).norm())
    losses = [m["train/loss"] for m, _ in standalone]
    assert len(set(losses)) == len(seeds) and all(loss != 0 for loss in losses)  # real, different updates


def test_a_members_optimizer_state_continues_alone_as_in_the_population():
    tokenizer = build_char_tokenizer("0123456789+-=* ")
    models = [build_tiny_model(TINY, tokenizer, seed=seed) for seed in range(3)]
    population = Population.stack(models)
    stacked = torch.optim.AdamW(population.parameters(), lr=1e-3, weight_decay=0.01, fused=True)

    def set_grads(step: int) -> None:
        for name, weight in population.weights.items():
            weight.grad = torch.stack([gradients(models[k], k, step)[name] for k in range(3)])

    for step in range(2):
        set_grads(step)
        stacked.step()
    member = 1
    alone = population.load_member_into(member, build_tiny_model(TINY, tokenizer, seed=9))
    optimizer = torch.optim.AdamW(alone.parameters(), lr=1e-3, weight_decay=0.01, fused=True)
    optimizer.load_state_dict(member_optimizer_state(stacked, population, member, alone))
    set_grads(2)
    for name, p in alone.named_parameters():
        p.grad = population.weights[name].grad[member].clone()
    stacked.step()
    optimizer.step()
    for name, p in alone.named_parameters():
        torch.testing.assert_close(p.detach(), population.weights[name][member].detach(), rtol=0, atol=0)


def test_a_member_whose_update_is_not_finite_stops_the_population():
    from conftest import REPO

    from sspo_cli.engines.native.population import NonFiniteMemberUpdate, PopulationLearner, population_rl_step
    from sspo_cli.models import load_policy
    from sspo_cli.objectives import build_objective
    from sspo_cli.recipe import load_recipe
    from sspo_cli.tasks import build_task

    recipe = load_recipe(REPO / "recipes" / "quickstart.yaml", POPULATION_RECIPE)
    task = build_task(recipe.task)
    models = [load_policy(recipe.model, task.alphabet, seed)[0] for seed in (0, 1)]
    tokenizer = load_policy(recipe.model, task.alphabet, 0)[1]
    learner = PopulationLearner.of(recipe, models, tokenizer)
    population = learner.population
    with torch.no_grad():
        population.weights["model.layers.0.mlp.down_proj.weight"][1, 0, 0] = float("inf")
    before = population.member_state(0)
    with pytest.raises(NonFiniteMemberUpdate, match=r"seed\(s\) \[1\]"):
        population_rl_step(recipe, learner, task, [build_objective(recipe.objective)] * 2, [0, 1], step=1)
    assert all(torch.equal(before[name], population.weights[name][0]) for name in before)  # no member stepped
