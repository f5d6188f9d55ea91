"""Runs per hour of a whole `sspo compare`, with and without populations, and whether the two give the same answers.

Each round trains the same comparison once per configuration, in turn, each into a fresh output folder holding a
copy of the cached warm start (so every configuration trains every run and none trains the warm start), as a real
subprocess of the CLI; the figures are each configuration's wall seconds and runs per hour (median over rounds), and
its ratio to the first configuration round by round. Then, over the runs of the last round, each seed's final
held-out accuracy with populations against without: a paired t-test of the difference and its 95% interval (the
members of a population are the runs of their seeds; the same seed must end within noise of its standalone run).

    .venv/bin/python benchmarks/population_compare.py --seeds 8 --steps 40 --rounds 2 \\
        --config "--jobs 2 --population off" --config "--jobs 2 --population auto"

`--cache DIR`: an output folder of an earlier `sspo compare` of the recipe, whose `.cache/warm_start` is copied
(default: trained once into a scratch folder first, not timed). A configuration that starts with `@DIR ` runs the
code of the checkout DIR, e.g. `--config "@/tmp/before --jobs 2"` for the code before populations.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scipy import stats

REPO = Path(__file__).resolve().parents[1]


def compare_command(recipe: Path, seeds: int, steps: int, method: str, out: Path, config: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sspo_cli.cli.main",
        "compare",
        str(recipe),
        "--methods",
        method,
        "--seeds",
        str(seeds),
        "--set",
        f"train.steps={steps}",
        "-o",
        str(out),
        "-q",
        *config.split(),
    ]


def split_config(config: str) -> tuple[str, Path]:
    """A configuration's `sspo compare` options and the checkout whose code runs them (`@DIR`: DIR; `python -m`
    puts the working folder first on the path, so the command runs there)."""
    if config.startswith("@"):
        tree, _, config = config[1:].partition(" ")
        return config, Path(tree)
    return config, REPO


def final_accuracies(out: Path) -> dict[int, float]:
    """Seed -> final held-out accuracy, from the run folders' summaries."""
    found = {}
    for summary in out.glob("*/summary.json"):
        data = json.loads(summary.read_text())
        found[data["seed"]] = data["eval_after"]["accuracy"]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "quickstart.yaml")
    parser.add_argument("--method", default="sspo")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--config", action="append", required=True, help="extra `sspo compare` options, as a string")
    parser.add_argument("--cache", type=Path, help="an output folder holding .cache/warm_start")
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()) / "population_compare")
    args = parser.parse_args()

    shutil.rmtree(args.scratch, ignore_errors=True)
    args.scratch.mkdir(parents=True)
    cache = args.cache
    if cache is None:  # the warm start, once, untimed: one short run of the recipe trains and caches it
        cache = args.scratch / "cache"
        subprocess.run(compare_command(args.recipe, 1, 1, args.method, cache, "--population off"), check=True)
    seconds: dict[str, list[float]] = {config: [] for config in args.config}
    outs: dict[str, Path] = {}
    for round_index in range(args.rounds):
        for k, config in enumerate(args.config):
            out = args.scratch / f"round{round_index}-config{k}"
            shutil.copytree(cache / ".cache", out / ".cache")
            options, tree = split_config(config)
            command = compare_command(args.recipe.resolve(), args.seeds, args.steps, args.method, out, options)
            started = time.perf_counter()
            subprocess.run(command, check=True, cwd=tree)
            seconds[config].append(time.perf_counter() - started)
            outs[config] = out
            print(f"round {round_index} {config!r}: {seconds[config][-1]:.1f} s", flush=True)

    first = args.config[0]
    print(f"\n{args.seeds} seeds x {args.steps} steps of {args.method} ({args.recipe.name}), {args.rounds} rounds")
    for config in args.config:
        median = statistics.median(seconds[config])
        ratios = [a / b for a, b in zip(seconds[first], seconds[config])]
        print(
            f"{config:40s} {median:7.1f} s  {3600 * args.seeds / median:6.0f} runs/h  "
            f"x{statistics.median(ratios):.2f} of {first!r} (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
        )
    if len(args.config) > 1:
        base = final_accuracies(outs[first])
        for config in args.config[1:]:
            other = final_accuracies(outs[config])
            seeds = sorted(set(base) & set(other))
            differences = [100 * (other[s] - base[s]) for s in seeds]
            mean = statistics.fmean(differences)
            if len(seeds) > 1 and statistics.stdev(differences) > 0:
                test = stats.ttest_1samp(differences, 0.0)
                low, high = test.confidence_interval(0.95)
                verdict = f"paired t-test p = {test.pvalue:.2f}, 95% CI [{low:+.1f}, {high:+.1f}] points"
            else:
                verdict = "every seed equal" if not any(differences) else "too few seeds for a test"
            print(
                f"final accuracy, {config!r} minus {first!r}: mean {mean:+.1f} points over {len(seeds)} seeds ({verdict})"
            )
            print("  per seed: " + ", ".join(f"s{s} {base[s]:.3f}->{other[s]:.3f}" for s in seeds))


if __name__ == "__main__":
    main()
