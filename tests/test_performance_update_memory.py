"""The update-memory benchmark runs at a tiny size and prints its figures (not timed)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--intermediate", "64"]
TINY += ["--vocab", "256", "--lengths", "8", "--rows", "4", "--group", "2", "--prompt-len", "4"]


def test_update_memory_benchmark_prints_its_figures():
    command = [sys.executable, str(REPO / "benchmarks" / "update_memory.py"), *TINY]
    command += ["--variants", "whole", "micro", "--updates", "1", "--threads", "1"]
    lines = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout.splitlines()
    assert lines[0].startswith("cpu: ") and "torch CPU capability" in lines[0]
    assert re.search(r": [\d,]+ parameters$", lines[2]), lines[2]
    runs = [json.loads(line) for line in lines if line.startswith("{")]
    assert [(r["new_tokens"], r["variant"], r["micro_batch_size"]) for r in runs] == [(8, "whole", 4), (8, "micro", 2)]
    for run in runs:
        assert run["peak_rss_mb"] > run["peak_above_start_mb"] > 0 and run["update_s"] > 0
    assert abs(runs[0]["loss"] - runs[1]["loss"]) < 1e-5 * max(1.0, abs(runs[0]["loss"]))  # the same update
    table = [line for line in lines if line.startswith("| 8 |")]
    assert len(table) == 2 and all(len(row.split("|")) == 8 for row in table)
