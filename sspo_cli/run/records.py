"""A run's records, whichever engine trains it: opened, written step by step, summarised, finished.

    open_run           recipe.yaml, the MLflow run (params, tags) and run.json; nothing left behind if that fails
    RunRecords.begin   warm-start metrics, the recipe artifact
    RunRecords.record_step / record_eval   history.jsonl, MLflow, the observer, the skipped-update warning
    RunRecords.finish  summary.json, the artifacts, FINISHED

An engine wraps its run in `tracking.failure_marked(tracker)`: an error marks the run KILLED or FAILED.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.recipe import Recipe, to_yaml
from sspo_cli.rollout.evaluate import ProblemResult, evaluate
from sspo_cli.rollout.prompts import text_format
from sspo_cli.run.folder import (
    HISTORY_FILE,
    RECIPE_FILE,
    SUMMARY_FILE,
    RunInfo,
    final_checkpoint,
    model_files,
    write_text_atomic,
)
from sspo_cli.run.metrics import diagnostics_summary
from sspo_cli.run.state import TrainingObserver, TrainState
from sspo_cli.run.tracking import Tracker, absolute_uri, failure_status, flatten

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sspo_cli.run.warm_start import WarmStartResult
    from sspo_cli.tasks import Task


def run_tags(
    recipe: Recipe, run_dir: Path, extra_tags: dict[str, str] | None = None, warm_start: WarmStartResult | None = None
) -> dict[str, str]:
    """The MLflow tags every run carries, whatever its engine: how compare and sweep find runs again."""
    warm_tags = {} if warm_start is None else {"sspo.warm_start.reached_target": str(warm_start.reached_target).lower()}
    return {
        **warm_tags,
        "sspo.recipe": recipe.name,
        "sspo.objective": recipe.objective.name,
        "sspo.seed": str(recipe.seed),
        "sspo.fingerprint": recipe.fingerprint(),
        "sspo.run_dir": str(run_dir.resolve()),
        "sspo.engine": recipe.engine,
        **recipe.tracking.tags,
        **(extra_tags or {}),
    }


def open_run(
    recipe: Recipe,
    run_dir: Path,
    output_dir: Path,
    tracking_uri: str,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
    warm_start: WarmStartResult | None = None,
) -> Tracker:
    """Write recipe.yaml, start the MLflow run, write run.json. If any of it fails, the MLflow run is
    marked as ended and the run folder removed: no run folder without its run.json."""
    tracker = None
    try:
        (run_dir / RECIPE_FILE).write_text(to_yaml(recipe))
        tags = run_tags(recipe, run_dir, extra_tags, warm_start)
        params = flatten(recipe.resolved())
        experiment = recipe.tracking.experiment
        tracker = Tracker.start(
            tracking_uri, experiment, run_dir.name, params, tags, output_dir / "mlartifacts", parent_run_id
        )
        RunInfo(tracker.run_id, absolute_uri(tracking_uri), experiment, run_dir.name).write(run_dir)
    except BaseException as exc:
        if tracker is not None:
            tracker.finish_quietly(failure_status(exc))
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return tracker


@dataclass
class RunRecords:
    """Where an open run's records go. Under a multi-process engine only the main process has one."""

    recipe: Recipe
    run_dir: Path
    tracker: Tracker
    tracking_uri: str
    observer: TrainingObserver
    state: TrainState
    warm_start: WarmStartResult | None = None
    skip_cause: str = "a non-finite loss or gradient"  # what the engine's skip check looks at
    _skips_reported: int = field(init=False)

    def __post_init__(self) -> None:
        self._skips_reported = self.state.skipped_updates

    def begin(self, first_session: bool = True) -> None:
        """The warm start's numbers (once per run) and the recipe file in MLflow; the observer hears of the start."""
        if first_session and self.warm_start is not None:
            warm = {"warm_start/steps": self.warm_start.steps, "warm_start/dev_accuracy": self.warm_start.dev_accuracy}
            self.tracker.log_metrics(warm, step=0)
        self.tracker.log_artifact(self.run_dir / RECIPE_FILE)
        self.observer.on_start(self.recipe.train.steps, self.run_dir.name, self.run_dir)

    def record_step(self, metrics: dict[str, float]) -> None:
        """The metrics of step `state.step`: history, MLflow, observer, and a warning if updates were skipped."""
        state = self.state
        row = {"step": state.step, **metrics}
        state.history.append(row)
        self.tracker.log_metrics(metrics, state.step)
        with (self.run_dir / HISTORY_FILE).open("a") as history:
            history.write(json.dumps(row) + "\n")
        self.observer.on_step(state.step, metrics)
        skipped = state.skipped_updates - self._skips_reported
        if skipped:
            self.observer.on_warning(
                f"step {state.step}: skipped {skipped} update(s) with {self.skip_cause} "
                f"({state.skipped_updates} in all; "
                f"the run stops after {self.recipe.train.max_skipped} in a row, train.max_skipped)"
            )
        self._skips_reported = state.skipped_updates

    def record_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.state.evals.append({"step": step, **metrics})
        self.tracker.log_metrics(metrics, step)
        self.observer.on_eval(step, metrics)

    def finish(self, **extra: Any) -> dict[str, Any]:
        """summary.json (with `extra` keys), the summary and (`tracking.log_checkpoint`) the final model as artifacts,
        status FINISHED."""
        summary = {**build_summary(self), **extra}
        write_text_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
        self.tracker.log_artifact(self.run_dir / SUMMARY_FILE)
        if self.recipe.tracking.log_checkpoint:
            for path in model_files(final_checkpoint(self.run_dir)):
                self.tracker.log_artifact(path, "final_checkpoint")
        self.tracker.finish("FINISHED")
        return summary


def build_summary(records: RunRecords) -> dict[str, Any]:
    recipe, state, run_dir, warm = records.recipe, records.state, records.run_dir, records.warm_start
    evals = state.evals

    def eval_dict(row: dict[str, float]) -> dict[str, float]:
        return {
            "step": row["step"],
            "accuracy": row["eval/accuracy"],
            "mean_reward": row["eval/mean_reward"],
            "mean_length": row["eval/mean_length"],
        }

    return {
        "run_id": records.tracker.run_id,
        "run_name": run_dir.name,
        "run_dir": str(run_dir.resolve()),
        "tracking_uri": records.tracking_uri,
        "experiment": recipe.tracking.experiment,
        "experiment_id": records.tracker.experiment_id,
        "recipe": recipe.name,
        "fingerprint": recipe.fingerprint(),
        "objective": recipe.objective.name,
        "seed": recipe.seed,
        "steps": state.step,
        "wall_seconds": state.elapsed_seconds,
        "skipped_updates": state.skipped_updates,
        "resumed_from": state.resumed_from,
        "warm_start": None if warm is None else warm.as_summary(),
        "eval_before": eval_dict(evals[0]),
        "eval_after": eval_dict(evals[-1]),
        "evals": [eval_dict(row) for row in evals],
        "diagnostics": diagnostics_summary(state.history),
    }


PROBLEMS_FILE = "eval_problems.jsonl"  # the final eval's answer to each held-out problem: what `compare` pairs


def eval_metrics(
    recipe: Recipe,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    problems_file: Path | None = None,
) -> dict[str, float]:
    """Greedy accuracy, mean reward and length on the held-out split, with the recipe's eval settings; with
    `problems_file`, which problems were answered correctly too (the final eval writes it, so a comparison
    need not evaluate each run again)."""
    max_new = recipe.eval.max_new_tokens or recipe.rollout.max_new_tokens
    text = text_format(recipe, tokenizer)
    result = evaluate(model, tokenizer, task, task.eval, max_new, recipe.eval.batch_size, text=text)
    if problems_file is not None:
        write_problems(problems_file, result.problems)
    return result.as_metrics("eval")


def problem_row(problem: ProblemResult) -> dict[str, Any]:
    row: dict[str, Any] = {"prompt": problem.prompt, "correct": int(problem.correct)}
    return row if problem.reward is None else row | {"reward": float(problem.reward)}


def write_problems(path: Path, problems: Sequence[ProblemResult]) -> None:
    """One JSON line per problem: `{"prompt": ..., "correct": 0 or 1, "reward": ...}`, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (json.dumps(problem_row(p)) + "\n" for p in problems)
    write_text_atomic(path, "".join(lines))
