"""The embedded default must really learn: a shorter quickstart, from a cold warm-start cache.

Held-out greedy accuracy after RL must beat the warm-started starting point by a clear margin.
(The full quickstart gains about 25 points over 200 steps; 80 steps already gain well over 15.)
"""

import json
import subprocess
from pathlib import Path

from conftest import REPO, sspo_command

MIN_GAIN = 0.10


def test_quickstart_recipe_improves_held_out_accuracy(tmp_path: Path) -> None:
    result = subprocess.run(
        sspo_command("train", str(REPO / "recipes" / "quickstart.yaml"), "--set", "train.steps=80", "--set", "eval.every=40", "-o", str(tmp_path), "--quiet"),
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_file,) = tmp_path.glob("quickstart-sspo-s0-*/summary.json")
    summary = json.loads(summary_file.read_text())
    before, after = summary["eval_before"]["accuracy"], summary["eval_after"]["accuracy"]
    print(f"warm start {summary['warm_start']}, eval accuracy {before:.3f} -> {after:.3f} in {summary['wall_seconds']:.0f} s")
    assert summary["warm_start"]["cached"] is False
    assert 0.2 < before < 0.8, "the warm start should leave room to learn"
    assert after >= before + MIN_GAIN
