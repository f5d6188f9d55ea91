"""Peak memory and time of one RL optimiser update, whole vs micro-batched vs gradient-checkpointed.

    python benchmarks/update_memory.py                      # ~39M-parameter Qwen2, 64/256/1024 new tokens
    python benchmarks/update_memory.py --hidden 32 --layers 1 --vocab 256 --lengths 8 16 --rows 4   # smoke

A Qwen2-style decoder built from a config (random init, seed 0; default hidden 512, 8 layers,
8 heads, 2 KV heads, MLP 1408, vocabulary 32,768, tied embeddings; its parameter count is
printed). The mini-batch: `--rows` completions of each length in `--lengths`, in groups of
`--group` sharing a `--prompt-len`-token prompt, every completion token counted. The completion
tokens are random ids standing in for sampled ones; the behaviour log-probs come from a no-grad
pass of the same model. Each update goes through the project's real path:
`sspo_cli.engines.native.step.accumulate_gradients` (chunked log-probs, the objective, backward, micro-batch
by micro-batch) and `apply_update` (clip, AdamW step), float32, no autocast unless asked.

Each (length, variant) runs in a fresh process, which reports its peak RSS (`ru_maxrss`) and the
part of it above what it held before the first update (weights, data and the no-grad pass),
which includes AdamW's two moment buffers and the gradients. Seconds per update: the last of
`--updates` (the first also allocates the optimiser state). Variants:
- whole: the mini-batch at once (`performance.micro_batch_size` unset, the default),
- micro: `performance.micro_batch_size = --micro-batch-size`,
- checkpointing: `performance.gradient_checkpointing: true`, whole mini-batch,
- micro+checkpointing: both.
Prints the CPU, then one JSON line per run, then a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import cpu_name, current_rss_mb, parameter_count, peak_rss_mb, qwen2_model  # noqa: E402

VARIANTS = {
    "whole": {},
    "micro": {"micro": True},
    "checkpointing": {"gradient_checkpointing": True},
    "micro+checkpointing": {"micro": True, "gradient_checkpointing": True},
}


def build_model(args: argparse.Namespace):
    return qwen2_model(
        vocab=args.vocab,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate=args.intermediate,
        positions=args.prompt_len + max(args.lengths),
        seed=0,
    )


def update_recipe(args: argparse.Namespace, variant: str):
    from sspo_cli.recipe import recipe_from_dict

    switches = VARIANTS[variant]
    performance = {
        "autocast_bf16": args.autocast_bf16,
        "logprob_chunk_mb": args.chunk_mb,
        "micro_batch_size": args.micro_batch_size if switches.get("micro") else None,
        "gradient_checkpointing": switches.get("gradient_checkpointing", False),
    }
    return recipe_from_dict(
        {"objective": {"name": args.objective}, "performance": performance, "train": {"lr": 1e-5}}, [], "benchmark"
    )


def synthetic_batch(model, args: argparse.Namespace, length: int):
    """A mini-batch as a rollout hands it to the updates: prompts in groups, random completion ids."""
    import torch

    from sspo_cli.engines.native.step import UpdateData
    from sspo_cli.models.logprobs import completion_logprobs

    generator = torch.Generator().manual_seed(1)
    prompt_index = torch.arange(args.rows) // args.group
    prompts = torch.randint(0, args.vocab, (int(prompt_index[-1]) + 1, args.prompt_len), generator=generator)
    completions = torch.randint(0, args.vocab, (args.rows, length), generator=generator)
    input_ids = torch.cat([prompts[prompt_index], completions], dim=1)
    attention_mask = torch.ones_like(input_ids)
    with torch.inference_mode():
        old_logp, _ = completion_logprobs(model, input_ids, attention_mask, length, 1.0, prompt_index, args.chunk_mb)
    advantages = torch.randn(args.rows, generator=generator)
    mask = torch.ones(args.rows, length)
    return UpdateData(input_ids, attention_mask, length, old_logp, advantages, mask, None), prompt_index


def measure(args: argparse.Namespace, length: int, variant: str) -> dict[str, float | str | int]:
    """Runs in its own process: peak RSS is per process."""
    import torch

    from sspo_cli.engines.native.step import accumulate_gradients, apply_update
    from sspo_cli.engines.native.tuning import prepared_model
    from sspo_cli.objectives import build_objective
    from sspo_cli.run.state import TrainState

    torch.set_num_threads(args.threads)
    recipe = update_recipe(args, variant)
    model = prepared_model(build_model(args), recipe.performance)
    data, prompt_index = synthetic_batch(model, args, length)
    objective = build_objective(recipe.objective)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.train.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    state, rows = TrainState(), torch.arange(args.rows)
    before = current_rss_mb()
    model.train()
    seconds, loss = [], float("nan")
    for _ in range(args.updates):
        started = time.perf_counter()
        update = accumulate_gradients(model, objective, data, rows, prompt_index, recipe)
        loss = apply_update(update.loss, model, optimizer, scheduler, recipe, state)["train/loss"]
        seconds.append(time.perf_counter() - started)
    peak = peak_rss_mb()
    return {
        "new_tokens": length,
        "variant": variant,
        "micro_batch_size": recipe.performance.micro_batch_size or args.rows,
        "peak_rss_mb": round(peak, 1),
        "peak_above_start_mb": round(peak - before, 1),
        "update_s": round(seconds[-1], 3),
        "first_update_s": round(seconds[0], 3),
        "loss": loss,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model (Qwen2 from a config)")
    model.add_argument("--vocab", type=int, default=32_768)
    model.add_argument("--hidden", type=int, default=512)
    model.add_argument("--layers", type=int, default=8)
    model.add_argument("--heads", type=int, default=8)
    model.add_argument("--kv-heads", type=int, default=2)
    model.add_argument("--intermediate", type=int, default=1408)
    batch = parser.add_argument_group("mini-batch")
    batch.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024], help="New tokens per completion.")
    batch.add_argument("--rows", type=int, default=8, help="Completions in the mini-batch (one update).")
    batch.add_argument("--group", type=int, default=4, help="Completions per prompt.")
    batch.add_argument("--prompt-len", type=int, default=32)
    update = parser.add_argument_group("update")
    update.add_argument("--micro-batch-size", type=int, default=2, help="performance.micro_batch_size of 'micro'.")
    update.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    update.add_argument("--objective", default="sspo")
    update.add_argument("--chunk-mb", type=float, default=64.0, help="performance.logprob_chunk_mb")
    update.add_argument("--autocast-bf16", action="store_true", help="performance.autocast_bf16 (default off)")
    update.add_argument("--updates", type=int, default=2, help="Updates per run; the last one is timed.")
    update.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--one", nargs=2, metavar=("LENGTH", "VARIANT"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(args, int(args.one[0]), args.one[1])))
        return

    import torch

    print(f"cpu: {cpu_name()}")
    print(f"torch {torch.__version__}, {args.threads} threads, {'bf16 autocast' if args.autocast_bf16 else 'float32'}")
    print(
        f"model: Qwen2 hidden {args.hidden}, {args.layers} layers, {args.heads} heads, {args.kv_heads} KV heads, "
        f"MLP {args.intermediate}, vocabulary {args.vocab}: {parameter_count(build_model(args)):,} parameters"
    )
    print(
        f"mini-batch: {args.rows} completions ({args.rows // args.group} prompts x {args.group}) after "
        f"{args.prompt_len} prompt tokens; micro-batches of {args.micro_batch_size}; objective {args.objective}"
    )
    results = []
    for length in args.lengths:
        for variant in args.variants:
            command = [sys.executable, __file__, *argv, "--one", str(length), variant]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            line = output.strip().splitlines()[-1]
            results.append(json.loads(line))
            print(line, flush=True)
    print()
    print("| new tokens | variant | micro-batch | peak RSS MB | above start MB | s / update |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['new_tokens']} | {r['variant']} | {r['micro_batch_size']} | {r['peak_rss_mb']:.0f} "
            f"| {r['peak_above_start_mb']:.0f} | {r['update_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
