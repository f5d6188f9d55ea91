"""Which held-out problems each run solves at its end: what the paired comparison resamples.

A run's final eval writes `eval_problems.jsonl` next to it, one line per held-out problem. For a run
without it (trained by an older version, or whose folder is elsewhere) the research layer evaluates
the final checkpoint once more on the eval split, greedily and in the trainer's batches (so with the
trainer's answers: the accuracies are checked to agree), and keeps the result there; later
comparisons read the file instead of evaluating again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from sspo_cli.research.analysis.conclusions import HEADLINE_METRIC, ProblemScores
from sspo_cli.research.analysis.measures import RunRecord
from sspo_cli.research.execution.evaluation import EvalOptions, eval_recipe, evaluate_target, resolve_target
from sspo_cli.research.execution.execute import describe_failure
from sspo_cli.rollout.evaluate import ProblemResult
from sspo_cli.run.folder import final_checkpoint
from sspo_cli.run.records import PROBLEMS_FILE, write_problems


def read_problem_scores(path: Path) -> ProblemScores | None:
    """The file's scores (rewards only if every line has one: older files kept correctness alone)."""
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rewards = tuple(float(r["reward"]) for r in rows) if all("reward" in r for r in rows) else ()
        return ProblemScores(tuple(str(r["prompt"]) for r in rows), tuple(float(r["correct"]) for r in rows), rewards)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_problem_scores(path: Path, scores: ProblemScores) -> None:
    rewards = scores.reward if scores.has("final_reward") else (None,) * len(scores.prompts)
    rows = zip(scores.prompts, scores.correct, rewards)
    write_problems(path, [ProblemResult(prompt, bool(correct), reward) for prompt, correct, reward in rows])


def problems_file(record: RunRecord, output_dir: Path) -> Path:
    """In the run folder when the run has one here, else in the eval cache of the output dir."""
    if record.run_dir and final_checkpoint(Path(record.run_dir)).is_dir():
        return Path(record.run_dir) / PROBLEMS_FILE
    return output_dir / ".cache" / "eval" / record.run_id / PROBLEMS_FILE


def evaluate_problems(record: RunRecord, output_dir: Path, tracking_uri: str | None) -> ProblemScores:
    """The final checkpoint's greedy answers on the eval split (the checkpoint is downloaded from MLflow if
    its folder is not on this machine)."""
    where = record.run_dir if record.run_dir and Path(record.run_dir).is_dir() else record.run_id
    target = resolve_target(where, tracking_uri, output_dir)
    report = evaluate_target(where, target, eval_recipe(target, None, None, []), EvalOptions(split="eval"))
    return ProblemScores(
        tuple(report.prompts or ()),
        tuple(float(c) for c in report.correct_per_prompt or ()),
        tuple(report.reward_per_prompt or ()),
    )


def load_problem_scores(
    records: Sequence[RunRecord], output_dir: Path, tracking_uri: str | None, metric: str = HEADLINE_METRIC
) -> tuple[dict[str, ProblemScores], list[str]]:
    """Per-problem results of each finished run, by run id, and a note for each run without them. A file
    without the per-problem values of `metric` (rewards, in files older than them) is evaluated again.

    A run that cannot be evaluated again (its checkpoint is gone) is left out of the paired
    comparison, with a note; it is never a reason to fail the whole comparison.
    """
    found: dict[str, ProblemScores] = {}
    notes: list[str] = []
    for record in records:
        if record.failed or record.run_id in found:
            continue
        path = problems_file(record, output_dir)
        scores = read_problem_scores(path)
        if scores is None or not scores.has(metric):
            try:
                scores = evaluate_problems(record, output_dir, tracking_uri)
            except Exception as exc:  # noqa: BLE001 - any reason the checkpoint cannot be evaluated: note it, carry on
                notes.append(f"{record.run_name}: no per-problem results ({describe_failure(exc)})")
                continue
            write_problem_scores(path, scores)
        logged = record.curves.eval_accuracy[-1] if record.curves.eval_accuracy else math.nan
        if math.isfinite(logged) and abs(scores.accuracy - logged) > 1e-9:
            notes.append(
                f"{record.run_name}: the per-problem re-evaluation gives {scores.accuracy:.2%}, "
                f"the run logged {logged:.2%}"
            )
        found[record.run_id] = scores
    return found, notes
