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
# Issue 16: the defaults and each of their switches off in turn, on either workload.
ISSUE16_VARIANTS: dict[str, list[str]] = {
    "defaults": [],
    "autocast_bf16 false": ["--autocast-bf16", "false"],
    "update_attention same": ["--update-attention", "same"],
    "length_buckets auto": ["--length-buckets", "auto"],
    "reserve_kv_cache false": ["--no-reserve-kv-cache"],
    "compact_finished_rows false": ["--no-compact-finished-rows"],
    "every switch off": ["--baseline"],
}


def run_json(command: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    lines = subprocess.run(command, check=True, capture_output=True, text=True, env=env).stdout.strip().splitlines()
    result = json.loads(lines[-1])
    details = next((json.loads(line[len("details ") :]) for line in lines if line.startswith("details ")), {})
    return {
        **result,
        "load_1min": details.get("load_1min", os.getloadavg()[0]),
        "others_cpu_share": details.get("others_cpu_share"),
        "cpu": details.get("cpu"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--objective", nargs="+", default=["grpo"], help="One or more objectives; each variant runs with each."
    )
    parser.add_argument("--steps", type=int, default=None, help="Timed steps (default: the workload's).")
    parser.add_argument(
        "--trl-python", default=None, help="Python of a scratch environment with TRL (leave out to skip TRL)."
    )
    parser.add_argument("--only", nargs="*", default=None, help="Run only these variant names (substring match).")
    parser.add_argument("--workload", default=None, help="rl_step.py's --workload, for ours and TRL.")
    parser.add_argument("--issue16", action="store_true", help="The defaults and each switch off (ISSUE16_VARIANTS).")
    parser.add_argument("--log", default=str(HERE / "results" / "ablation.jsonl"))
    parser.add_argument("--summarize", action="store_true", help="Only print the table of every run in --log.")
    parser.add_argument(
        "--max-others",
        type=float,
        default=0.15,
        help="Leave out runs during which other processes kept more than this share of the cores busy.",
    )
    args = parser.parse_args(argv)
    if args.summarize:
        summarize(Path(args.log), args.max_others)
        return

    table = ISSUE16_VARIANTS if args.issue16 else VARIANTS
    variants = {name: extra for name, extra in table.items() if not args.only or any(o in name for o in args.only)}
    workload = ["--workload", args.workload] if args.workload else []
    commands = {
        f"{name} [{objective}]": [
            sys.executable,
            str(HERE / "rl_step.py"),
            "--objective",
            objective,
            *(["--steps", str(args.steps)] if args.steps else []),
            *workload,
            *extra,
        ]
        for name, extra in variants.items()
        for objective in args.objective
    }
    if args.trl_python:
        steps = ["--steps", str(args.steps)] if args.steps else []
        commands["TRL GRPOTrainer"] = [args.trl_python, str(HERE / "trl_grpo_baseline.py"), *steps, *workload]
    log = Path(args.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {name: [] for name in commands}
    for round_index in range(args.rounds):
        for name, command in commands.items():
            result = run_json(command)
            results[name].append(result)
            with log.open("a") as out:
                row = {"variant": name.split(" [")[0], "round": round_index, "workload": args.workload or "standard"}
                out.write(json.dumps({**row, **result}) + "\n")
            print(
                f"round {round_index} {name:34s} {result['step_s_median'] * 1000:7.1f} ms  load {result['load_1min']:.2f}  others {result['others_cpu_share']:.2f}",
                file=sys.stderr,
            )

    print_table(results, args.max_others)


def print_table(results: dict[str, list[dict]], max_others: float = 1.0) -> None:
    """Medians over runs; runs during which other processes kept more than `max_others` of the cores busy are left out."""
    dropped = {
        name: sum(1 for r in rows if (r.get("others_cpu_share") or 0.0) > max_others) for name, rows in results.items()
    }
    results = {
        name: [r for r in rows if (r.get("others_cpu_share") or 0.0) <= max_others] for name, rows in results.items()
    }
    results = {name: rows for name, rows in results.items() if rows}
    trl = (
        statistics.median(r["step_s_median"] for r in results["TRL GRPOTrainer"])
        if results.get("TRL GRPOTrainer")
        else None
    )
    width = max(len(name) for name in results) + 1
    print(
        f"{'variant':{width}s} {'runs':>4s} {'step ms':>8s} {'compl/s':>8s} {'tok/s':>6s} {'RSS MB':>7s} {'gen':>5s} {'obj':>6s} {'vs TRL':>7s}"
    )
    for name, rows in results.items():
        step = statistics.median(r["step_s_median"] for r in rows)
        print(
            f"{name:{width}s} {len(rows):4d} {step * 1000:8.1f} {statistics.median(r['completions_per_s'] for r in rows):8.0f} "
            f"{statistics.median(r['tokens_per_s'] for r in rows):6.0f} {max(r['peak_rss_mb'] for r in rows):7.0f} "
            f"{statistics.median(r['generate_frac'] for r in rows):5.2f} {statistics.median(r['objective_frac'] for r in rows):6.3f} "
            f"{'' if trl is None else f'{trl / step:6.2f}x':>7s}"
        )
    loads = [r["load_1min"] for rows in results.values() for r in rows]
    print(
        f"load average (1 min) at the end of each run: min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}"
    )
    others = [r["others_cpu_share"] for rows in results.values() for r in rows if r.get("others_cpu_share") is not None]
    if others:
        print(
            f"cores kept busy by other processes during the timed steps: median {statistics.median(others):.2f}, max {max(others):.2f}"
        )
    if any(dropped.values()):
        print(
            f"left out (others above {max_others:.2f} of the cores): "
            + ", ".join(f"{name}: {count}" for name, count in dropped.items() if count)
        )


def summarize(log: Path, max_others: float) -> None:
    """The table over every run recorded in `log` (several sessions of rounds together)."""
    results: dict[str, list[dict]] = {}
    for line in log.read_text().splitlines():
        row = json.loads(line)
        results.setdefault(row_name(row), []).append(row)
    print_table(results, max_others)


def row_name(row: dict) -> str:
    return row["variant"] if "TRL" in row["variant"] else f"{row['variant']} [{row['objective']}]"


if __name__ == "__main__":
    main()
