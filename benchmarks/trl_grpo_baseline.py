"""The standard workloads (`--workload standard|long|smollm2`) on Hugging Face TRL's GRPOTrainer, side by side with ours.

TRL is not a dependency of sspo: run this from a scratch environment outside the repo,

    python3 -m venv /tmp/trlvenv
    /tmp/trlvenv/bin/pip install torch==2.13.0 && /tmp/trlvenv/bin/pip install trl==1.16.0 transformers==5.24.0
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 /tmp/trlvenv/bin/python benchmarks/trl_grpo_baseline.py

It prints, last, the same JSON keys as `benchmarks/rl_step.py`. One RL step is one generation
of the workload's completions (128 for `standard`, 64 for `long`) and its 2 optimiser updates
(`num_iterations=2`), i.e. 2 trainer steps. The workloads' sizes are `bench_common.WORKLOADS`.
TRL's defaults that differ from the workload are turned off: bf16, activation checkpointing,
its DAPO loss (-> "grpo"), linear lr decay (-> constant). The model and tokenizer are built
exactly as `sspo_cli.models` builds them (rebuilt here: this environment has no sspo_cli; the
model through `bench_common.py`, which needs only torch and transformers). `--workload smollm2` loads the
float32 folder our GGUF conversion made (`--model-folder`, printed by `rl_step.py --workload smollm2` in its
`details` line) and gives TRL the same chat questions as conversations with the same system prompt.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from typing import Any

from bench_common import (
    ARITHMETIC_SYSTEM_PROMPT,
    Workload,
    add_workload_args,
    arithmetic_rows,
    busy_cpu_seconds,
    chosen_workload,
    copy_rows,
    cpu_name,
    others_cpu_share,
    peak_rss_mb,
    qwen2_model,
    repeated,
)

UPDATES = 2
ADDITION_ALPHABET = "0123456789+-=* "


def char_tokenizer(alphabet: str = ADDITION_ALPHABET):
    """Character tokenizer over `alphabet` plus <pad> <bos> <eos> <unk>; <bos> starts each prompt."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", *sorted(set(alphabet))])}
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


def tiny_model(tokenizer, workload: Workload):
    return qwen2_model(
        vocab=len(tokenizer),
        hidden=workload.hidden,
        layers=workload.layers,
        heads=workload.heads,
        kv_heads=workload.kv_heads,
        intermediate=workload.intermediate,
        positions=workload.positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def addition_dataset(rows: int):
    from datasets import Dataset

    rng = random.Random(0)
    pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(rows)]
    return Dataset.from_dict({"prompt": [f"{a}+{b}=" for a, b in pairs], "answer": [str(a + b) for a, b in pairs]})


def copy_dataset(rows: int):
    """The same rows as ours read (`bench_common.write_copy_data`): 4096 of them, repeated as needed."""
    from datasets import Dataset

    data = repeated(copy_rows(4096), rows)
    return Dataset.from_dict({"prompt": [r["prompt"] for r in data], "answer": [r["answer"] for r in data]})


def arithmetic_dataset(rows: int):
    """The chat questions ours reads (`bench_common.write_arithmetic_data`), as conversations with the system prompt."""
    from datasets import Dataset

    data = repeated(arithmetic_rows(4096), rows)
    conversations = [
        [{"role": "system", "content": ARITHMETIC_SYSTEM_PROMPT}, {"role": "user", "content": r["prompt"]}]
        for r in data
    ]
    return Dataset.from_dict({"prompt": conversations, "answer": [r["answer"] for r in data]})


def pretrained(folder: str):
    """The model and tokenizer of a local float32 folder, left padding as for generation."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32), tokenizer


def task_data(workload: Workload, rows: int):
    """(tokenizer alphabet, dataset): the characters of every prompt and answer, as ours builds its tokenizer."""
    if workload.task == "arithmetic":
        return "", arithmetic_dataset(rows)
    if workload.task == "addition":
        return ADDITION_ALPHABET, addition_dataset(rows)
    data = copy_rows(4096)
    return "".join(sorted({c for r in data for c in r["prompt"] + r["answer"]})), copy_dataset(rows)


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(parser)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model-folder", default=None, help="A pretrained workload's converted model folder.")
    args = parser.parse_args(argv)
    workload = chosen_workload(args)
    if workload.model and not args.model_folder:
        parser.error(f"--workload {args.workload} needs --model-folder (rl_step.py prints it as model_folder)")
    prompts, group, new_tokens = workload.prompts, workload.group, workload.new_tokens

    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(args.threads)
    clock = Clock()
    rl_steps = args.warmup + args.steps
    alphabet, dataset = task_data(workload, rl_steps * prompts * 2)
    if workload.model:
        model, tokenizer = pretrained(args.model_folder)
    else:
        tokenizer = char_tokenizer(alphabet)
        model = tiny_model(tokenizer, workload)
    model.generate = clock.timed(clock.generate_s, model.generate)

    def exact_match(completions, answer, completion_ids, **_: Any) -> list[float]:
        clock.tokens.append(sum(len(ids) for ids in completion_ids))
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]  # conversations: the reply
        return [1.0 if t.strip() == a else 0.0 for t, a in zip(texts, answer)]

    cpu_marks: list[tuple[float, float]] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, _args, state, _control, **_kwargs):
            if state.global_step % UPDATES == 0:
                clock.step_ends.append(time.perf_counter())
                if len(clock.step_ends) in (args.warmup, rl_steps):  # the timed steps lie between these
                    cpu_marks.append(busy_cpu_seconds())

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out,
            per_device_train_batch_size=prompts * group,
            num_generations=group,
            steps_per_generation=1,
            num_iterations=UPDATES,
            max_completion_length=new_tokens,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            beta=0.0,
            loss_type="grpo",
            scale_rewards="group",
            learning_rate=workload.lr,
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
            reward_funcs=exact_match,
            args=config,
            train_dataset=dataset,
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
        "completions_per_s": prompts * group * len(walls) / total,
        "tokens_per_s": sum(clock.tokens[args.warmup :]) / total,
        "peak_rss_mb": peak_rss_mb(),
        "generate_frac": generate / total,
        "objective_frac": objective / total,
    }
    assert len(forward_s) == rl_steps * (UPDATES + 1), "TRL's forward pattern changed: fix _loss_forwards"
    others = others_cpu_share(cpu_marks[0], cpu_marks[-1], total)
    details = {
        "first_step_s": ends[1] - ends[0],
        "workload": args.workload,
        "cpu": cpu_name(),
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
