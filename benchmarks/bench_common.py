"""Setup the benchmarks share: a Qwen2-style decoder from a config, memory, CPU and load readings.

Only the standard library is imported at the top (torch and transformers where used), so that
`trl_grpo_baseline.py` can use it from its scratch environment, which has no sspo_cli. Each
benchmark runs as `python benchmarks/NAME.py`, which puts this folder first on `sys.path`.
"""

from __future__ import annotations

import os
import platform
import resource
from typing import Any


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
    """The CPU's model name as lscpu prints it, and the vector extensions torch's kernels use."""
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return f"{name} ({os.cpu_count()} cores, torch CPU capability {torch.backends.cpu.get_cpu_capability()})"


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
