"""What a search leaves behind: the trials table (terminal and report.md), Optuna's figures, trials.csv,
search.json and report.md."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.research.analysis.measures import metric_spec
from sspo_cli.research.planning.grid import short_keys
from sspo_cli.research.planning.search_plan import SearchPlan
from sspo_cli.research.reporting.formatting import MISSING, format_duration, format_value
from sspo_cli.research.reporting.outputs import WorkflowResult, clean, write_json
from sspo_cli.research.reporting.plots import agg_pyplot
from sspo_cli.research.reporting.statistics_text import TextTable

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial


@dataclass(kw_only=True)
class SearchResult(WorkflowResult):
    """What a search found, as its report shows it."""

    plan: SearchPlan
    trials: list[Any]  # optuna FrozenTrials, by number
    best: Any | None
    failed_now: list[Any]  # trials of this invocation that failed
    storage: str  # the study's SQLite URL
    notes: list[str] = field(default_factory=list)


STATE_ORDER = {"COMPLETE": 0, "PRUNED": 1, "FAIL": 2, "RUNNING": 3, "WAITING": 4}


def ranked_trials(result: SearchResult) -> list[FrozenTrial]:
    """Finished trials best first, then pruned ones by their last reported accuracy, then the rest."""
    sign = 1 if result.plan.direction == "minimize" else -1

    def key(trial: FrozenTrial) -> tuple[int, float, int]:
        value = trial.value if trial.value is not None else last_report(trial)[1]
        value = value if value is not None and math.isfinite(value) else math.inf * -sign
        return STATE_ORDER.get(trial.state.name, 5), sign * value, trial.number

    return sorted(result.trials, key=key)


def last_report(trial: FrozenTrial) -> tuple[int | None, float | None]:
    if not trial.intermediate_values:
        return None, None
    step = max(trial.intermediate_values)
    return step, trial.intermediate_values[step]


def duration_seconds(trial: FrozenTrial) -> float:
    if trial.datetime_start is None or trial.datetime_complete is None:
        return math.nan
    return (trial.datetime_complete - trial.datetime_start).total_seconds()


def trial_outcome(trial: FrozenTrial, kind: str) -> str:
    """The value of a finished trial, where a pruned one stopped, why a failed one failed."""
    if trial.state.name == "COMPLETE":
        return format_value(kind, trial.value)
    if trial.state.name == "PRUNED":
        step, accuracy = last_report(trial)
        return f"pruned at step {step} ({format_value('percent', accuracy)})" if step is not None else "pruned"
    return trial.user_attrs.get("error") or trial.state.name.lower()


def trials_table(result: SearchResult) -> TextTable:
    plan = result.plan
    names = short_keys(list(plan.space))
    spec = metric_spec(plan.metric)
    rows = []
    for trial in ranked_trials(result):
        params = (format_param(trial.params.get(key)) for key in plan.space)
        outcome = trial_outcome(trial, spec.kind)
        best = "*" if result.best is not None and trial.number == result.best.number else ""
        rows.append(
            (
                f"{trial.number}{best}",
                trial.state.name.lower(),
                *params,
                outcome,
                format_duration(duration_seconds(trial)),
            )
        )
    caption = (
        f"{plan.metric} ({spec.better} is better), mean over {plan.seeds} seed(s) per trial; * best; "
        f"pruner {plan.pruner} "
        f"on the held-out accuracy at each eval"
    )
    headers = ("trial", "state", *(names[key] for key in plan.space), spec.label, "time")
    return TextTable(f"{result.title}", headers, rows, caption, left_columns=2)


def format_param(value: Any) -> str:
    if value is None:
        return MISSING
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------- figures


def search_figures(study: optuna.Study, out_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Optuna's optimisation history, parameter importances and intermediate values (matplotlib versions)."""
    import optuna.visualization.matplotlib as optuna_plots

    figures: dict[str, Callable[[Any], Any]] = {
        "history": optuna_plots.plot_optimization_history,
        "importance": optuna_plots.plot_param_importances,
        "intermediate": optuna_plots.plot_intermediate_values,
    }
    written, notes = {}, []
    for name, plot in figures.items():
        try:
            written[name] = save_optuna_figure(plot, study, out_dir / f"{name}.png")
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. too few finished trials for importances
            notes.append(f"no {name} figure: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    return written, notes


def save_optuna_figure(plot: Callable[[Any], Any], study: optuna.Study, path: Path) -> Path:
    import warnings

    plt = agg_pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ExperimentalWarning, and PED-ANOVA's notes on small studies
        axes = plot(study)
    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
    figure.set_size_inches(9, 5.5)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# --------------------------------------------------------------------------- files


def trial_record(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
        "intermediate": {str(step): value for step, value in sorted(trial.intermediate_values.items())},
        "label": trial.user_attrs.get("label"),
        "runs": trial.user_attrs.get("runs", []),
        "error": trial.user_attrs.get("error"),
        "retry_of": trial.system_attrs.get("failed_trial"),
        "seconds": duration_seconds(trial),
    }


def write_trials_csv(path: Path, result: SearchResult) -> Path:
    keys = list(result.plan.space)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["trial", "state", *keys, result.plan.metric, "pruned_at_step", "seconds", "run_ids", "error"])
        for trial in sorted(result.trials, key=lambda t: t.number):
            record = trial_record(trial)
            step = last_report(trial)[0] if trial.state.name == "PRUNED" else None
            run_ids = " ".join(r.get("run_id") or "" for r in record["runs"]).strip()
            values = [record["value"], step, round(record["seconds"], 1) if math.isfinite(record["seconds"]) else None]
            writer.writerow(
                [
                    trial.number,
                    trial.state.name,
                    *(trial.params.get(k) for k in keys),
                    *("" if v is None else v for v in values),
                    run_ids,
                    record["error"] or "",
                ]
            )
    return path


def search_document(result: SearchResult, timing: dict[str, Any]) -> dict[str, Any]:
    plan = result.plan
    best = result.best
    return clean(
        {
            "kind": "search",
            "id": result.group_id,
            "title": result.title,
            "recipe": str(plan.recipe_path),
            "overrides": plan.overrides,
            "space": {key: {**param.model_dump(), "shown": param.describe()} for key, param in plan.space.items()},
            "search": plan.strategy,
            "pruner": plan.pruner,
            "trials_wanted": plan.trials,
            "seeds": plan.seeds,
            "metric": plan.metric,
            "direction": plan.direction,
            "study": {"name": plan.study_name, "storage": result.storage},
            "best": None if best is None else {"number": best.number, "value": best.value, "params": best.params},
            "trials": [trial_record(t) for t in sorted(result.trials, key=lambda t: t.number)],
            "mlflow": {"tracking_uri": result.tracking_uri, "parent_run_id": result.parent_run_id},
            "notes": result.notes,
            "timing": timing,
        }
    )


def write_search_report(path: Path, result: SearchResult, figures: dict[str, Path], timing: dict[str, Any]) -> Path:
    table = trials_table(result)
    best = result.best
    lines = [f"# {result.title}", ""]
    if best is not None:
        params = ", ".join(f"`{k}` = {format_param(v)}" for k, v in best.params.items())
        shown = format_value(metric_spec(result.plan.metric).kind, best.value)
        lines += [f"Best: trial {best.number}, {result.plan.metric} {shown} with {params}.", ""]
    lines += ["| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    lines += ["", table.caption + ".", ""]
    for name, figure in figures.items():
        lines += [f"![{name}]({figure.name})", ""]
    lines += [f"- {note}" for note in result.notes]
    lines += [
        "",
        "## Where",
        "",
        (
            f"Optuna study `{result.plan.study_name}` in `{result.storage}` (run the same command again to continue "
            f"or extend it with a larger `--trials`; `optuna-dashboard {result.storage}` shows it live). MLflow store "
            f"`{result.tracking_uri}`, parent run `{result.parent_run_id}`: every run of every trial is nested "
            "under it."
        ),
        "",
        (
            f"This invocation took {format_duration(timing['total_seconds'])}: training "
            f"{format_duration(timing['training_seconds'])}, workflow overhead {timing['overhead_seconds']:.1f}s "
            f"({timing['overhead_fraction']:.1%})."
        ),
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def write_search_files(result: SearchResult, figures: dict[str, Path], timing: dict[str, Any]) -> dict[str, Path]:
    out = result.out_dir
    files = {"csv": write_trials_csv(out / "trials.csv", result)}
    files["json"] = write_json(out / "search.json", search_document(result, timing))
    files["report"] = write_search_report(out / "report.md", result, figures, timing)
    return {**files, **figures}
