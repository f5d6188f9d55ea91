"""Side-by-side runs of `rl_step.py` variants (each speed switch added in turn) and TRL, alternating.

    python benchmarks/ablation.py --rounds 5 --trl-python /tmp/trlvenv/bin/python

Each round runs every variant once, in order, so that drifts in machine speed hit all of them
alike; the table gives medians over rounds of each run's median step time. Every run's JSON is
appended to `--log` (default benchmarks/results/ablation.jsonl) with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> extra arguments of rl_step.py; each adds one switch to the one before.
VARIANTS: dict[str, list[str]] = {
    "baseline (all switches off)": ["--baseline"],
    "+ own KV-cache sampler": ["--baseline", "--sampler", "kv_cache"],
    "+ log-probs from sampling": ["--baseline", "--sampler", "kv_cache", "--sampling-logprobs"],
    "+ shared prompt prefix": ["--baseline", "--sampler", "kv_cache", "--sampling-logprobs", "--share-prompt-prefix"],
    "+ trim padding": ["--autocast-bf16", "false"],
    "+ bf16 autocast (= defaults here)": [],
}


def run_json(command: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    lines = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()
    result = json.loads(lines[-1])
    details = next((json.loads(line[len("details ") :]) for line in lines if line.startswith("details ")), {})
    return {**result, "load_1min": details.get("load_1min", os.getloadavg()[0])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--objective", default="grpo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--trl-python", default=None, help="Python of a scratch environment with TRL (leave out to skip TRL).")
    parser.add_argument("--only", nargs="*", default=None, help="Run only these variant names (substring match).")
    parser.add_argument("--log", default=str(HERE / "results" / "ablation.jsonl"))
    args = parser.parse_args(argv)

    variants = {name: extra for name, extra in VARIANTS.items() if not args.only or any(o in name for o in args.only)}
    commands = {name: [sys.executable, str(HERE / "rl_step.py"), "--objective", args.objective, "--steps", str(args.steps), *extra] for name, extra in variants.items()}
    if args.trl_python:
        commands["TRL GRPOTrainer"] = [args.trl_python, str(HERE / "trl_grpo_baseline.py"), "--steps", str(args.steps)]
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {name: [] for name in commands}
    for round_index in range(args.rounds):
        for name, command in commands.items():
            result = run_json(command)
            results[name].append(result)
            with log.open("a") as out:
                out.write(json.dumps({"variant": name, "round": round_index, **result}) + "\n")
            print(f"round {round_index} {name:32s} {result['step_s_median'] * 1000:7.1f} ms  load {result['load_1min']:.2f}", file=sys.stderr)

    trl = statistics.median(r["step_s_median"] for r in results["TRL GRPOTrainer"]) if "TRL GRPOTrainer" in results else None
    print(f"{'variant':32s} {'step ms':>8s} {'compl/s':>8s} {'RSS MB':>7s} {'gen':>5s} {'obj':>5s} {'vs TRL':>7s}")
    for name, rows in results.items():
        step = statistics.median(r["step_s_median"] for r in rows)
        print(
            f"{name:32s} {step * 1000:8.1f} {statistics.median(r['completions_per_s'] for r in rows):8.0f} "
            f"{max(r['peak_rss_mb'] for r in rows):7.0f} {statistics.median(r['generate_frac'] for r in rows):5.2f} "
            f"{statistics.median(r['objective_frac'] for r in rows):5.3f} {'' if trl is None else f'{trl / step:6.2f}x':>7s}"
        )
    print(f"load average (1 min) during the runs: min {min(r['load_1min'] for rs in results.values() for r in rs):.2f}, max {max(r['load_1min'] for rs in results.values() for r in rs):.2f}")


if __name__ == "__main__":
    main()
