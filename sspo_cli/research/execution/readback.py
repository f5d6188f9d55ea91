"""Reading finished runs back: from their run folder (fast, local) or from MLflow (any store)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.research import ResearchError
from sspo_cli.research.analysis.measures import Curves, RunRecord, failed_record
from sspo_cli.run.tracking import flatten

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

    from sspo_cli.recipe import Recipe
    from sspo_cli.research.execution.execute import Outcome

CURVE_KEYS = {
    "reward": "train/reward",
    "seq_var": "weight/seq_var",
    "saturated_frac": "grad_weight/saturated_frac",
    "entropy": "train/entropy",
}
TASK_DETAIL_KEYS = ("task.dataset", "task.path")


def task_label(params: Any) -> str:
    """The stratum of a run: its task's name, and the reasoning-gym dataset or data file it reads.

    `params` are the run's flattened recipe keys (its MLflow params, or a flattened recipe).
    """
    details = [str(params[key]) for key in TASK_DETAIL_KEYS if params.get(key) not in (None, "", "null")]
    return ":".join([str(params.get("task.name", "")), *details])


def recipe_task_label(recipe: Recipe) -> str:
    return task_label(flatten({"task": recipe.task.model_dump(mode="json")}))


def has_run_files(run_dir: str | Path | None) -> bool:
    return bool(run_dir) and (Path(run_dir) / "summary.json").is_file() and (Path(run_dir) / "history.jsonl").is_file()


def record_from_run_dir(run_dir: str | Path, group: str, reused: bool = False) -> RunRecord:
    """summary.json gives the evals and wall time, history.jsonl the per-step curves."""
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        raise ResearchError("run", f"cannot read the run folder {str(run_dir)!r}: {exc}") from None
    curves = Curves(**summary_evals(summary["evals"]), steps=[int(row["step"]) for row in rows])
    for field_name, key in CURVE_KEYS.items():
        setattr(curves, field_name, [_number(row.get(key)) for row in rows])
    return RunRecord(
        run_id=summary.get("run_id", ""),
        group=group,
        seed=int(summary.get("seed", 0)),
        wall_seconds=float(summary.get("wall_seconds", math.nan)),
        curves=curves,
        run_name=summary.get("run_name", run_dir.name),
        run_dir=str(run_dir),
        reused=reused,
    )


def record_from_mlflow(client: MlflowClient, run: Run, group: str, reused: bool = False) -> RunRecord:
    """Prefer the run folder named by the `sspo.run_dir` tag; otherwise read the metric histories."""
    tags = run.data.tags
    run_dir = tags.get("sspo.run_dir")
    if has_run_files(run_dir):
        record = record_from_run_dir(run_dir, group, reused)
        record.run_id = run.info.run_id
        record.task = task_label(run.data.params)
        return record
    run_id = run.info.run_id
    evals = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "eval/accuracy"))
    rewards = {m.step: m.value for m in client.get_metric_history(run_id, "eval/mean_reward")}
    curves = Curves(
        eval_steps=[s for s, _ in evals],
        eval_accuracy=[v for _, v in evals],
        eval_reward=[rewards.get(s, math.nan) for s, _ in evals],
    )
    by_step: dict[int, dict[str, float]] = {}
    for field_name, key in CURVE_KEYS.items():
        for metric in client.get_metric_history(run_id, key):
            by_step.setdefault(metric.step, {})[field_name] = metric.value
    curves.steps = sorted(by_step)
    for field_name in CURVE_KEYS:
        setattr(curves, field_name, [by_step[s].get(field_name, math.nan) for s in curves.steps])
    summary = summary_artifact(client, run_id)
    if summary is not None:  # the trainer's own numbers: RL wall time without set-up, evals with steps
        wall = float(summary.get("wall_seconds", math.nan))
        for name, values in summary_evals(summary.get("evals", [])).items():
            setattr(curves, name, values or getattr(curves, name))
    else:
        wall = (
            (run.info.end_time - run.info.start_time) / 1000 if run.info.end_time and run.info.start_time else math.nan
        )
    return RunRecord(
        run_id=run_id,
        group=group,
        seed=int(tags.get("sspo.seed", 0)),
        wall_seconds=wall,
        curves=curves,
        run_name=run.info.run_name or run_id,
        run_dir=run_dir,
        reused=reused,
        task=task_label(run.data.params),
    )


def summary_artifact(client: MlflowClient, run_id: str) -> dict[str, Any] | None:
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run_id, "summary.json", tmp)
            return json.loads(Path(path).read_text())
    except Exception:  # no such artifact, or an artifact store we cannot reach: fall back to metrics
        return None


def summary_evals(evals: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """summary.json's evals as the Curves fields they fill (a run from before rewards were logged: NaN)."""
    return {
        "eval_steps": [int(e["step"]) for e in evals],
        "eval_accuracy": [float(e["accuracy"]) for e in evals],
        "eval_reward": [_number(e.get("mean_reward")) for e in evals],
    }


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def records_of_outcomes(client: MlflowClient, outcomes: Sequence[Outcome]) -> list[RunRecord]:
    """The successful outcomes' runs, read from their folders (or MLflow where a folder is gone), and the
    failed ones as failed records: they stay in the statistics (measures.FAILED_RULE)."""
    records = []
    for outcome in outcomes:
        task = recipe_task_label(outcome.planned.recipe)
        if outcome.state == "failed":
            records.append(failed_record(outcome.planned.group, outcome.planned.seed, task, outcome.error))
            continue
        if not outcome.ok:
            continue
        reused = outcome.state == "reused"
        if has_run_files(outcome.run_dir):
            record = record_from_run_dir(outcome.run_dir, outcome.planned.group, reused)
        else:
            record = record_from_mlflow(client, client.get_run(outcome.run_id), outcome.planned.group, reused)
        record.seed = outcome.planned.seed
        record.run_name = outcome.run_name or record.run_name
        record.task = task
        records.append(record)
    return records
