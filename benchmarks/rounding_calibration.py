"""Calibrate the paired comparison on pairs that should never separate: every method of one study against
itself in a second run of the same study that changed only rounding (e.g. `--set
performance.autocast_bf16=false`), same seeds, same warm start.

    python benchmarks/rounding_calibration.py STUDY_DIR_A STUDY_DIR_B [--metric final_reward]

STUDY_DIR: a study's report folder (its `point-*/compare.json` list each run's group, seed and folder). For
each (point, method) it prints the paired difference, the bootstrap interval, the interval over seeds and the
verdict; last, how many of the cells the bootstrap alone and the two-interval rule call different. Every such
call is a false positive of the design.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sspo_cli.research.analysis.conclusions import HEADLINE_METRIC, infer  # noqa: E402
from sspo_cli.research.execution.problems import read_problem_scores  # noqa: E402
from sspo_cli.research.execution.readback import record_from_run_dir  # noqa: E402


def study_runs(study: Path) -> dict[tuple[str, str, int], str]:
    """(point, method, seed) -> run folder, from each point's compare.json."""
    runs = {}
    for document in sorted(study.glob("point-*/compare.json")):
        point = document.parent.name.removeprefix("point-")
        for run in json.loads(document.read_text())["runs"]:
            runs[(point, run["group"], run["seed"])] = run["run_dir"]
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs=2, type=Path, metavar="STUDY_DIR")
    parser.add_argument("--metric", default=HEADLINE_METRIC, help="final_accuracy or final_reward")
    args = parser.parse_args(argv)
    first, second = (study_runs(study) for study in args.studies)
    cells = sorted({(point, method) for point, method, _ in first} & {(point, method) for point, method, _ in second})
    bootstrap_calls = rule_calls = 0
    for point, method in cells:
        records, problems = [], {}
        seeds = sorted(
            {s for p, m, s in first if (p, m) == (point, method)}
            & {s for p, m, s in second if (p, m) == (point, method)}
        )
        for tag, runs in (("a", first), ("b", second)):
            for seed in seeds:
                run_dir = runs[(point, method, seed)]
                record = record_from_run_dir(run_dir, f"{method}-{tag}")
                record.run_id, record.task = f"{tag}-{record.run_id}", point
                records.append(record)
                problems[record.run_id] = read_problem_scores(Path(run_dir) / "eval_problems.jsonl")
        (pair,) = infer(records, [f"{method}-a", f"{method}-b"], problems, metric=args.metric).paired
        d, s = pair.difference, pair.over_seeds
        bootstrap_calls += d is not None and d.excludes(0.0)
        rule_calls += pair.separated
        print(
            f"{point} {method}: {d.estimate:+.4f} bootstrap [{d.low:+.4f}, {d.high:+.4f}] "
            f"over seeds [{s.low:+.4f}, {s.high:+.4f}]: {pair.verdict}"
        )
    print(
        f"{len(cells)} self-comparisons ({args.metric}): the bootstrap alone calls {bootstrap_calls} different, "
        f"the two-interval rule {rule_calls}"
    )


if __name__ == "__main__":
    main()
