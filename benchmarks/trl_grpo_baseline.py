"""The issue-6 workload on Hugging Face TRL's GRPOTrainer, for a side-by-side comparison.

TRL is not a dependency of sspo: run this from a scratch environment outside the repo,

    python3 -m venv /tmp/trlvenv
    /tmp/trlvenv/bin/pip install torch==2.13.0 && /tmp/trlvenv/bin/pip install trl==1.16.0 transformers==5.24.0
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 /tmp/trlvenv/bin/python benchmarks/trl_grpo_baseline.py

It prints, last, the same JSON keys as `benchmarks/rl_step.py`. One RL step is one generation
of 128 completions and its 2 optimiser updates (`num_iterations=2`), i.e. 2 trainer steps.
TRL's defaults that differ from the workload are turned off: bf16, activation checkpointing,
its DAPO loss (-> "grpo"), linear lr decay (-> constant). The model and tokenizer are built
exactly as `sspo_cli.models` builds them (copied here: this environment has no sspo_cli).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

PROMPTS, GROUP, NEW_TOKENS, UPDATES = 16, 8, 8, 2


def char_tokenizer():
    """Character tokenizer over `0123456789+-=* ` plus <pad> <bos> <eos> <unk>; <bos> starts each prompt."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *sorted(set("0123456789+-=* "))])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.padding_side = "left"
    return tokenizer


def tiny_model(tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=512,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


def addition_dataset(rows: int):
    from datasets import Dataset

    rng = random.Random(0)
    pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(rows)]
    return Dataset.from_dict({"prompt": [f"{a}+{b}=" for a, b in pairs], "answer": [str(a + b) for a, b in pairs]})


class Clock:
    """Wall time of each RL step (every UPDATES trainer steps) and of the parts asked about."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []
        self.generate_s: list[float] = []
        self.objective_s: list[float] = []
        self.tokens: list[int] = []

    def timed(self, sink: list[float], function):
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                sink.append(time.perf_counter() - started)

        return wrapper


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    clock = Clock()
    tokenizer = char_tokenizer()
    model = tiny_model(tokenizer)
    model.generate = clock.timed(clock.generate_s, model.generate)

    def exact_sum(completions, answer, completion_ids, **_: Any) -> list[float]:
        clock.tokens.append(sum(len(ids) for ids in completion_ids))
        return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

    cpu_marks: list[tuple[float, float]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, _args, state, _control, **_kwargs):
            if state.global_step % UPDATES == 0:
                clock.step_ends.append(time.perf_counter())
                if len(clock.step_ends) in (args.warmup, rl_steps):  # the timed steps lie between these
                    cpu_marks.append(busy_cpu_seconds())

    rl_steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=PROMPTS * GROUP,
            num_generations=GROUP,
            steps_per_generation=1,
            num_iterations=UPDATES,
            max_completion_length=NEW_TOKENS,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            beta=0.0,
            loss_type="grpo",
            scale_rewards="group",
            learning_rate=1e-4,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=1.0,
            max_steps=rl_steps * UPDATES,
            bf16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            seed=0,
            logging_steps=10_000,
            disable_tqdm=True,
            save_strategy="no",
            report_to="none",
            dataloader_num_workers=0,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=exact_sum,
            args=config,
            train_dataset=addition_dataset(rl_steps * PROMPTS * 2),
            processing_class=tokenizer,
            callbacks=[StepClock()],
        )
        # The loss and its metrics, apart from the policy forward inside it.
        forward_s: list[float] = []
        trainer._get_per_token_logps_and_entropies = clock.timed(forward_s, trainer._get_per_token_logps_and_entropies)
        loss_s: list[float] = []
        trainer._compute_loss = clock.timed(loss_s, trainer._compute_loss)
        started, cpu_at_start = time.perf_counter(), busy_cpu_seconds()
        trainer.train()

    ends = [started, *clock.step_ends]
    if args.warmup == 0:
        cpu_marks.insert(0, cpu_at_start)
    walls = [b - a for a, b in zip(ends, ends[1:])][args.warmup :]
    total = sum(walls)
    # Generation happens once per RL step; the per-token forwards run once for the behaviour
    # log-probs (num_iterations > 1) and once inside each _compute_loss.
    generate = sum(clock.generate_s[args.warmup :])
    loss_only = [loss - forward for loss, forward in zip(loss_s, _loss_forwards(forward_s, UPDATES))]
    objective = sum(loss_only[args.warmup * UPDATES :])
    result = {
        "objective": "grpo (TRL GRPOTrainer)",
        "steps": len(walls),
        "step_s_median": statistics.median(walls),
        "step_s_min": min(walls),
        "step_s_max": max(walls),
        "completions_per_s": PROMPTS * GROUP * len(walls) / total,
        "tokens_per_s": sum(clock.tokens[args.warmup :]) / total,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "generate_frac": generate / total,
        "objective_frac": objective / total,
    }
    assert len(forward_s) == rl_steps * (UPDATES + 1), "TRL's forward pattern changed: fix _loss_forwards"
    others = others_cpu_share(cpu_marks[0], cpu_marks[-1], total)
    details = {
        "first_step_s": ends[1] - ends[0],
        "others_cpu_share": others,
        "load_1min": os.getloadavg()[0],
        "trl": __import__("trl").__version__,
        "python": sys.version.split()[0],
    }
    print("details " + json.dumps(details))
    print(json.dumps(result))


def _loss_forwards(forward_s: list[float], updates: int) -> list[float]:
    """Per RL step the forwards are: 1 behaviour log-prob pass, then 1 per update (inside the loss)."""
    return [t for i, t in enumerate(forward_s) if i % (updates + 1) != 0]


if __name__ == "__main__":
    main()
