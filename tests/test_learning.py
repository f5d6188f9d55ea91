"""The embedded default must really learn: the quickstart itself, from a cold warm-start cache, on two warm-start seeds.

Where the warm start stops, and how much RL then gains, depends on floating-point rounding (the
CPU's matmul kernels, the thread count, bf16 or not) and on the seed, so one seed proves little.
Held-out greedy accuracy after RL must beat the warm-started start by the quickstart's promise of
15 points. Seeds 3 and 4 are the ones that failed under earlier defaults: seed 4 missed the bar on an
AVX2 EPYC, seed 3 on an AVX-512 EPYC (its warm start stopped on a 66% spike of dev accuracy) before
the warm start checked its target every 5 steps. The README's "Measured" section has the whole
grid of seeds, thread counts and bf16 on and off.
"""

import json
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, sspo_command

MIN_GAIN = 0.15


@pytest.mark.slow
@pytest.mark.parametrize("warm_seed", [3, 4])
def test_quickstart_gains_15_points_of_held_out_accuracy(tmp_path: Path, warm_seed: int) -> None:
    command = sspo_command(
        "train",
        str(REPO / "recipes" / "quickstart.yaml"),
        "--set",
        f"train.warm_start.seed={warm_seed}",
        "-o",
        str(tmp_path),
        "--quiet",
    )
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (summary_file,) = tmp_path.glob("quickstart-sspo-s0-*/summary.json")
    summary = json.loads(summary_file.read_text())
    before, after = summary["eval_before"]["accuracy"], summary["eval_after"]["accuracy"]
    print(
        f"warm start {summary['warm_start']}, eval accuracy {before:.3f} -> {after:.3f} in {summary['wall_seconds']:.0f} s"
    )
    assert summary["warm_start"]["cached"] is False
    assert summary["warm_start"]["reached_target"] is True, "the warm start missed its dev-accuracy target"
    assert after >= before + MIN_GAIN
