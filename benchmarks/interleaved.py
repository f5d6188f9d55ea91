"""Compare speed variants step by step in one process, so that the machine's drift hits them all alike.

    python benchmarks/interleaved.py --variant "defaults=" --variant "sdpa updates=--update-attention same"
    python benchmarks/interleaved.py --workload long --variant "defaults=" --variant "plain AdamW=--plain-adamw"

Each `--variant NAME=FLAGS` takes `rl_step.py`'s switch flags (`--baseline`, `--update-attention same`,
`--plain-adamw`, ...). One model and one task are built; each variant gets its own recipe and optimiser
over that model. A round runs one RL step of every variant in turn; after the warm-up rounds, each
variant's step times are kept. The table gives each variant's median step and its paired ratio to
the first variant (the median over rounds of first / variant: above 1 = faster than the first).
Between separate processes this VM's speed drifts by a third (docs/performance.md); within one
process, alternating steps, a few percent can be told apart. Training goes on across variants
(their updates share the weights), which changes what is sampled, not what a step costs.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import add_workload_args, chosen_workload, cpu_name  # noqa: E402
from rl_step import chosen_switches, parse_args, training_parts, workload_recipe  # noqa: E402

from sspo_cli.recipe import PerformanceConfig  # noqa: E402


def parse_variant(text: str) -> tuple[str, argparse.Namespace]:
    name, sep, flags = text.partition("=")
    if not sep or not name.strip():
        raise SystemExit(f"--variant {text!r}: expected NAME=FLAGS")
    return name.strip(), parse_args(shlex.split(flags))


def main(argv: list[str] | None = None) -> None:
    import torch

    from sspo_cli.engines.native.learner import Learner
    from sspo_cli.engines.native.loop import make_optimizer
    from sspo_cli.engines.native.step import rl_step

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, help="NAME=FLAGS of rl_step.py (repeat).")
    parser.add_argument("--objective", default="grpo")
    parser.add_argument("--threads", type=int, default=2)
    add_workload_args(parser)
    args = parser.parse_args(argv)
    workload = chosen_workload(args)
    variants = dict(parse_variant(v) for v in args.variant)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*lr_scheduler.*")

    with tempfile.TemporaryDirectory(prefix="sspo-bench-") as data_dir:
        recipes = {
            name: workload_recipe(args.objective, chosen_switches(v), args.threads, workload, Path(data_dir))
            for name, v in variants.items()
        }
        first = next(iter(recipes.values()))
        task, policy, objective, _, _, state = training_parts(first)
        optimisers = {
            name: make_optimizer(recipes[name], policy.model, fused=False if v.plain_adamw else None)
            for name, v in variants.items()
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for round_index in range(args.warmup + args.steps):
            for name, recipe in recipes.items():
                optimizer, scheduler = optimisers[name]
                state.step += 1
                started = time.perf_counter()
                rl_step(recipe, Learner(policy, optimizer, scheduler), task, objective, state)
                if round_index >= args.warmup:
                    times[name].append(time.perf_counter() - started)

    print(f"cpu: {cpu_name()}; workload {args.workload}; {args.threads} threads; {args.steps} rounds")
    reference = next(iter(times.values()))
    print("| variant | changed from the defaults | median step ms | min ms | paired vs the first (median, lowest) |")
    print("|---|---|---:|---:|---:|")
    defaults = PerformanceConfig().model_dump()
    for name, walls in times.items():
        ratios = [a / b for a, b in zip(reference, walls)]
        changed = {k: v for k, v in recipes[name].performance.model_dump().items() if v != defaults[k]}
        changed |= {"adamw": "per-tensor loop"} if variants[name].plain_adamw else {}
        print(
            f"| {name} | {', '.join(f'{k}={v}' for k, v in changed.items()) or '-'} "
            f"| {statistics.median(walls) * 1e3:.1f} | {min(walls) * 1e3:.1f} "
            f"| {statistics.median(ratios):.3f}x ({min(ratios):.3f}x) |"
        )


if __name__ == "__main__":
    main()
