"""How a population's members cost, by mechanism: K models one after another, the stacked population decoder
(`sspo_cli.models.population`), and torch.func's vmap over stacked modules.

On the quickstart's tiny Qwen2 (hidden 128, 4 layers):
- update: forward and backward of a mini-batch (rows x tokens) for every member;
- decode: a KV-cache prefill of the prompts and `--new-tokens` one-token steps for every member;
- rl_step: a whole RL step of the quickstart recipe (bf16 off, no warm start), `rl_step` member after member
  against one `population_rl_step` (the population row; vmap has none).
Rounds alternate the mechanisms; the figures are medians of milliseconds per member (lower is better) and
each mechanism's speed-up over K separate models. vmap has no decode row: a KV cache kept across vmap calls
would carry tensors out of the vmapped function.

    .venv/bin/python benchmarks/population_step.py --members 1 2 4 8 16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call, stack_module_state

from sspo_cli.models import build_char_tokenizer, build_tiny_model
from sspo_cli.models.kv_cache import cache_kwarg, new_cache, position_ids_for
from sspo_cli.models.population import Population, PopulationCache
from sspo_cli.recipe import TinyModelConfig

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
STEP_OVERRIDES = ["train.warm_start.enabled=false", "performance.autocast_bf16=false", "train.steps=100000"]
QUICKSTART_MODEL = TinyModelConfig(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512)


def batch(rows: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(4, 19, (rows, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[: rows // 4, :1] = 0  # some left padding
    return ids, mask, position_ids_for(mask)


def loss_of(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().log_softmax(-1).mean()


def update_steps(models: list, rows: int, length: int) -> dict[str, Callable[[], None]]:
    ids, mask, positions = batch(rows, length)
    population = Population.stack(models)
    params, buffers = stack_module_state(models)
    template = models[0]

    def separate() -> None:
        for model in models:
            loss_of(model(input_ids=ids, attention_mask=mask, position_ids=positions).logits).backward()

    def stacked() -> None:
        logits = population.forward(ids, mask, positions)
        loss_of(logits).backward()

    def one(p, b):
        return functional_call(template, (p, b), (ids,), {"attention_mask": mask, "position_ids": positions}).logits

    def vmapped() -> None:
        loss_of(torch.vmap(one)(params, buffers)).backward()

    return {"separate": separate, "population": stacked, "vmap": vmapped}


def decode_steps(models: list, rows: int, prompt: int, new_tokens: int) -> dict[str, Callable[[], None]]:
    ids, mask, positions = batch(rows, prompt)
    population = Population.stack(models)
    token = ids[:, -1:]
    cache_name = cache_kwarg(models[0])

    @torch.inference_mode()
    def separate() -> None:
        for model in models:
            cache = new_cache(model)
            model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_name: cache})
            for step in range(new_tokens):
                full = torch.cat([mask, mask.new_ones(rows, step + 1)], 1)
                model(
                    input_ids=token,
                    attention_mask=full,
                    position_ids=positions[:, -1:] + step + 1,
                    use_cache=True,
                    **{cache_name: cache},
                )

    @torch.inference_mode()
    def stacked() -> None:
        cache = PopulationCache()
        population.forward(ids, mask, positions, cache)
        for step in range(new_tokens):
            full = torch.cat([mask, mask.new_ones(rows, step + 1)], 1)
            population.forward(token, full, positions[:, -1:] + step + 1, cache)

    return {"separate": separate, "population": stacked}


def rl_steps(members: int, overrides: list[str]) -> dict[str, Callable[[], None]]:
    from sspo_cli.engines.native.learner import Learner
    from sspo_cli.engines.native.loop import make_optimizer
    from sspo_cli.engines.native.population import PopulationLearner, population_rl_step, population_unsupported
    from sspo_cli.engines.native.step import rl_step
    from sspo_cli.models import load_policy
    from sspo_cli.objectives import build_objective
    from sspo_cli.recipe import load_recipe
    from sspo_cli.run.state import Policy, TrainState
    from sspo_cli.tasks import build_task

    recipe = load_recipe(QUICKSTART, [*STEP_OVERRIDES, *overrides])
    assert population_unsupported(recipe) is None, population_unsupported(recipe)
    task, objective, seeds = build_task(recipe.task), build_objective(recipe.objective), list(range(members))
    alone = []
    for seed in seeds:
        member = recipe.model_copy(update={"seed": seed})
        model, tokenizer = load_policy(member.model, task.alphabet, seed)
        alone.append((member, Learner(Policy(model, tokenizer), *make_optimizer(member, model)), TrainState()))
    models = [load_policy(recipe.model, task.alphabet, seed)[0] for seed in seeds]
    together = PopulationLearner.of(recipe, models, alone[0][1].policy.tokenizer)
    steps = {"population": 0}

    def separate() -> None:
        for member, learner, state in alone:
            state.step += 1
            rl_step(member, learner, task, objective, state)

    def stacked() -> None:
        steps["population"] += 1
        population_rl_step(recipe, together, task, [objective] * members, seeds, steps["population"])

    return {"separate": separate, "population": stacked}


# part -> its mechanisms' step functions, from the members' models and the command line
PARTS: dict[str, Callable[[list, argparse.Namespace], dict[str, Callable[[], None]]]] = {
    "update": lambda models, args: update_steps(models, args.rows, args.length),
    "decode": lambda models, args: decode_steps(models, args.sample_rows, args.prompt, args.new_tokens),
    "rl_step": lambda models, args: rl_steps(len(models), args.set),
}


def median_ms(step: Callable[[], None], members: int) -> float:
    start = time.perf_counter()
    step()
    return (time.perf_counter() - start) * 1000 / members


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rows", type=int, default=32, help="Update mini-batch rows (the quickstart's: 32).")
    parser.add_argument("--length", type=int, default=10, help="Update tokens per row (prompt and completion).")
    parser.add_argument("--sample-rows", type=int, default=128, help="Completions sampled per member per step.")
    parser.add_argument("--prompt", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--set", action="append", default=[], help="Recipe override of the rl_step part (repeatable).")
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=list(PARTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = build_char_tokenizer("0123456789+-=* ")
    for members in args.members:
        models = [build_tiny_model(QUICKSTART_MODEL, tokenizer, seed=seed) for seed in range(members)]
        parts = {part: PARTS[part](models, args) for part in args.parts}
        for part, steps in parts.items():
            times: dict[str, list[float]] = {name: [] for name in steps}
            for step in steps.values():  # warm-up
                step()
            for _ in range(args.rounds):
                for name, step in steps.items():
                    times[name].append(median_ms(step, members))
            medians = {name: statistics.median(values) for name, values in times.items()}
            line = {
                "part": part,
                "members": members,
                "threads": args.threads,
                "ms_per_member": {k: round(v, 3) for k, v in medians.items()},
                "speedup_vs_separate": {k: round(medians["separate"] / v, 2) for k, v in medians.items()},
            }
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
