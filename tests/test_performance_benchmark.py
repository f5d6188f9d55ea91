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
