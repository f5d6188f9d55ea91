"""Where one RL step's time goes: phases timed around the real calls, then torch.profiler's operator table.

    python benchmarks/profile_step.py                        # standard workload, defaults
    python benchmarks/profile_step.py --workload long --steps 3
    python benchmarks/profile_step.py --autocast-bf16 false  # any speed switch of rl_step.py

Phases (medians over the timed steps): sampling (`rollout.generate`, the sampling-pass log-probs
included), its model forwards apart, the update forwards (`completion_logprobs` under autograd),
backward (`Tensor.backward`), the optimiser (`clip_grad_norm_` and `optimizer.step`), the objective
(`train/objective_seconds`), and the rest (rewards, advantages, bookkeeping). Then one profiled
pass of `--profile-steps` steps: operators by self CPU time, grouped (matrix products, attention,
elementwise and the rest), and how many operators one step runs: at a few microseconds of
dispatch each, their count times that is the per-operator overhead. The timers add a few
microseconds per call; the profiled pass is slower than the timed ones (it records every operator).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import chosen_workload, cpu_name  # noqa: E402
from rl_step import BASELINE_SWITCHES, parse_args, training_parts, workload_recipe  # noqa: E402

from sspo_cli.recipe import PerformanceConfig  # noqa: E402

GROUPS = {
    "matrix products": ("mm", "addmm", "bmm", "linear", "matmul", "baddbmm"),
    "attention (SDPA)": ("scaled_dot_product", "_flash_attention", "_efficient_attention"),
    "log-softmax / logsumexp / sampling": ("log_softmax", "logsumexp", "softmax", "multinomial", "gather"),
    "copies, casts, cat, indexing": ("copy_", "to", "_to_copy", "cat", "index", "clone", "contiguous", "slice"),
}


class Timer:
    """Wall seconds of each call of the wrapped functions, by phase; a phase's calls inside another's are kept apart."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, phase: str, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[phase] += time.perf_counter() - started

        return timed

    def take(self) -> dict[str, float]:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out


def instrument(timer: Timer, optimizer) -> None:
    import torch

    import sspo_cli.engines.native.step as step
    import sspo_cli.models.generation as sampling

    # Wrapped where the step calls them: it imported the functions themselves, not their modules.
    step.generate = timer.wrap("sampling", step.generate)
    sampling.draw = timer.wrap("sampling: draw tokens, log-probs, entropy", sampling.draw)
    step.completion_logprobs = timer.wrap("update forwards (log-probs)", step.completion_logprobs)
    torch.Tensor.backward = timer.wrap("backward", torch.Tensor.backward)
    torch.nn.utils.clip_grad_norm_ = timer.wrap("optimiser: gradient clipping", torch.nn.utils.clip_grad_norm_)
    optimizer.step = timer.wrap("optimiser: AdamW step", optimizer.step)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--profile-steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=20)
    own, rest = parser.parse_known_args(argv)
    args = parse_args(rest)

    import torch

    from sspo_cli.engines.native.learner import Learner
    from sspo_cli.engines.native.step import rl_step

    switches = dict(BASELINE_SWITCHES) if args.baseline else {}
    switches |= {n: getattr(args, n) for n in PerformanceConfig.model_fields if getattr(args, n) is not None}
    workload = chosen_workload(args)
    scratch = tempfile.TemporaryDirectory(prefix="sspo-bench-")  # the workload's data files, removed at exit
    recipe = workload_recipe(args.objective, switches, args.threads, workload, Path(scratch.name))
    torch.set_num_threads(args.threads)
    task, policy, objective, optimizer, scheduler, state = training_parts(recipe)
    timer = Timer()
    instrument(timer, optimizer)

    def step() -> dict[str, float]:
        state.step += 1
        started = time.perf_counter()
        metrics = rl_step(recipe, Learner(policy, optimizer, scheduler), task, objective, state)
        wall = time.perf_counter() - started
        return {**timer.take(), "objective + diagnostics": metrics["train/objective_seconds"], "step": wall}

    for _ in range(args.warmup):
        step()
    rows = [step() for _ in range(args.steps)]
    print(f"cpu: {cpu_name()}; workload {args.workload}; {args.threads} threads; {args.steps} steps")
    print("switches: " + json.dumps(recipe.performance.model_dump()))
    phases = {name: statistics.median(r.get(name, 0.0) for r in rows) for name in rows[0]}
    step_s = phases.pop("step")
    draw = phases.pop("sampling: draw tokens, log-probs, entropy", 0.0)
    known = sum(phases.values())
    print("| part | ms | share |\n|---|---:|---:|")
    for name, seconds in phases.items():
        print(f"| {name} | {seconds * 1000:.1f} | {seconds / step_s:.0%} |")
        if name == "sampling":
            print(
                f"| (of which: drawing tokens, their log-probs and entropy) | {draw * 1000:.1f} | {draw / step_s:.0%} |"
            )
    print(f"| rewards, advantages, bookkeeping | {(step_s - known) * 1000:.1f} | {(step_s - known) / step_s:.0%} |")
    print(f"| step | {step_s * 1000:.1f} | |")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for _ in range(own.profile_steps):
            step()
        profiled = (time.perf_counter() - started) / own.profile_steps
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    self_us = {e.key: e.self_cpu_time_total / own.profile_steps for e in events}
    calls = sum(e.count for e in events) / own.profile_steps
    grouped: dict[str, float] = defaultdict(float)
    for key, us in self_us.items():
        op = key.removeprefix("aten::")
        group = next(
            (
                g
                for g, names in GROUPS.items()
                if any(op == n or op.startswith(n + "_") or (n in op and len(n) > 8) for n in names)
            ),
            None,
        )
        grouped[group or "other operators"] += us
    total_ops = sum(self_us.values())
    print(
        f"\nprofiled: {profiled * 1000:.1f} ms per step (with the profiler), {calls:,.0f} aten operator calls per step"
    )
    print("| operators (self CPU time) | ms per step | share of the profiled step |\n|---|---:|---:|")
    for group, us in sorted(grouped.items(), key=lambda kv: -kv[1]):
        print(f"| {group} | {us / 1000:.1f} | {us / 1000 / (profiled * 1000):.0%} |")
    outside = profiled * 1e6 - total_ops
    print(
        f"| outside aten operators (Python, autograd engine, dispatch) | {outside / 1000:.1f} | {outside / (profiled * 1e6):.0%} |"
    )
    print(f"\ntop {own.top} operators by self CPU time per step:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: own.top]:
        print(
            f"  {e.key:45s} {e.self_cpu_time_total / own.profile_steps / 1000:8.2f} ms  {e.count / own.profile_steps:7.0f} calls"
        )


if __name__ == "__main__":
    main()
