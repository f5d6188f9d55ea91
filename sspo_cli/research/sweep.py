"""`sspo sweep`: a grid of recipe overrides x seeds, each point a nested MLflow run; resumable;
a leaderboard with intervals over seeds and, for a 2-D grid, a heatmap. (`--search`: see search.py.)"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sspo_cli.recipe import Recipe, RecipeError, recipe_from_dict
from sspo_cli.research import ResearchError
from sspo_cli.research.analysis.measures import (
    METRIC_KEYS,
    GroupSummary,
    RunRecord,
    metric_spec,
    rank,
)
from sspo_cli.research.analysis.stats import T_METHOD
from sspo_cli.research.execution.execute import Outcome
from sspo_cli.research.execution.store import membership_filter
from sspo_cli.research.planning.grid import (
    grid_axis,
    grid_points,
    merge_axes,
    parse_grid_option,
    point_label,
    short_keys,
    show_value,
)
from sspo_cli.research.planning.plan import POINT_TAG, PlannedRun
from sspo_cli.research.planning.recipe_files import SWEEP_SECTION, read_recipe_file
from sspo_cli.research.planning.space import GridAxis, SpaceParam, pydantic_problem, recipe_for_point
from sspo_cli.research.reporting.formatting import format_spread, format_value, interval_caption
from sspo_cli.research.reporting.outputs import Findings, comparison_document, write_csv, write_json, write_report
from sspo_cli.research.reporting.plots import heatmap_figure
from sspo_cli.research.workflow import (
    GroupRun,
    GroupsResult,
    Session,
    Workflow,
    WorkflowOptions,
    group_id_of,
    run_workflow,
    seeds_text,
)

DEFAULT_METRIC = "final_accuracy"


class SweepSection(BaseModel):
    """The optional `sweep:` section of a recipe file (removed before the recipe is validated)."""

    model_config = ConfigDict(extra="forbid")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted.key -> list of values")
    seeds: int = Field(1, ge=1, description="Seeds per grid point (per trial of a search)")
    metric: str = Field(DEFAULT_METRIC, description="Metric of the leaderboard and heatmap (the objective of a search)")
    space: dict[str, SpaceParam] = Field(
        default_factory=dict, description="dotted.key -> {low, high, log, step} or {choices}"
    )
    search: Literal["tpe", "random", "grid"] | None = Field(
        None, description="Search with Optuna instead of sweeping the grid"
    )
    trials: int | None = Field(None, ge=1, description="Trials of a search (default: the grid's size, else 20)")
    pruner: Literal["median", "halving", "none"] | None = Field(
        None, description="Pruning of a search (default: median)"
    )


@dataclass
class SweepPlan:
    runs: list[PlannedRun]
    base: Recipe
    axes: list[GridAxis]
    points: list[dict[str, Any]]
    labels: list[str]
    seeds: int
    metric: str


@dataclass(frozen=True)
class SweepOptions:
    """What a sweep trains, besides its recipe (None or empty: the recipe's sweep section's)."""

    grid: Sequence[str] = ()  # --grid dotted.key=v1,v2,...: added to the section's grid, or replacing a key's values
    seeds: int | None = None  # per grid point
    metric: str | None = None  # of the leaderboard and the heatmap


@dataclass(kw_only=True)
class SweepResult(GroupsResult):
    """A sweep's points, best first by its metric, next to every summary in grid order."""

    ranked: list[GroupSummary]  # best first by `metric`
    metric: str
    failures: dict[str, int]  # grid point label -> its failed runs


# --------------------------------------------------------------------------- grid


def read_sweep_section(section: dict[str, Any] | None, source: str) -> SweepSection:
    if section is None:
        return SweepSection()
    try:
        return SweepSection.model_validate(section)
    except ValidationError as exc:
        problems = [f"{SWEEP_SECTION}.{pydantic_problem(err)}" for err in exc.errors()]
        raise RecipeError(source, problems) from None


def plan_sweep(
    recipe_path: Path, overrides: Sequence[str], grid_options: Sequence[str], seeds: int | None, metric: str | None
) -> SweepPlan:
    """Every (grid point, seed) run, each recipe validated before anything trains."""
    base_data, section_data = read_recipe_file(recipe_path)
    section = read_sweep_section(section_data, str(recipe_path))
    file_axes = [grid_axis(key, values, f"{SWEEP_SECTION}.grid") for key, values in section.grid.items()]
    axes = merge_axes(file_axes, [parse_grid_option(text) for text in grid_options])
    if not axes:
        raise ResearchError(
            "--grid", f"no grid: give --grid key=v1,v2 or a `{SWEEP_SECTION}: {{grid: ...}}` section in the recipe"
        )
    seeds = seeds if seeds is not None else section.seeds
    if seeds < 1:
        raise ResearchError("--seeds", f"must be at least 1, got {seeds}")
    metric = metric or section.metric
    metric_spec(metric)
    base = recipe_from_dict(base_data, list(overrides), str(recipe_path))
    names = short_keys([a.key for a in axes])
    points = grid_points(axes)
    labels = [point_label(p, names) for p in points]
    runs = []
    for point, label in zip(points, labels):
        for seed in range(base.seed, base.seed + seeds):
            recipe = recipe_for_point(base_data, point, overrides, seed, f"{recipe_path} (grid point {label})")
            runs.append(
                PlannedRun(label, seed, recipe, f"{recipe.name}-{label.replace(' ', '-')}-s{seed}", {POINT_TAG: label})
            )
    return SweepPlan(runs, base, axes, points, labels, seeds, metric)


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class Sweep(Workflow[SweepPlan, SweepResult]):
    recipe: Path
    overrides: Sequence[str]
    sweep: SweepOptions

    def plan(self, options: WorkflowOptions) -> SweepPlan:
        return plan_sweep(self.recipe, self.overrides, self.sweep.grid, self.sweep.seeds, self.sweep.metric)

    def group(self, plan: SweepPlan, options: WorkflowOptions) -> GroupRun:
        group_id, name = group_id_of("sweep", plan.runs), plan.base.name
        axes_text = " x ".join(f"{a.key} ({len(a.values)})" for a in plan.axes)
        params = {
            "recipe": str(self.recipe),
            "grid": json.dumps({a.key: list(a.values) for a in plan.axes}),
            "seeds": plan.seeds,
            "metric": plan.metric,
            "overrides": " ".join(self.overrides),
        }
        title = f"sweep {name}: {axes_text}, {seeds_text(plan.seeds)} per point"
        out_dir = options.report_folder(f"sweep-{name}-{group_id}")
        experiment = plan.base.tracking.experiment
        return GroupRun("sweep", group_id, experiment, f"sweep-{name}-{group_id[:6]}", params, title, out_dir)

    def conclude(self, plan: SweepPlan, session: Session) -> SweepResult:
        outcomes = session.execute(plan.runs)
        records = session.records(outcomes)
        return finish_sweep(plan, session, records, outcomes)


def run_sweep(
    recipe_path: Path, overrides: Sequence[str], sweep: SweepOptions, options: WorkflowOptions
) -> SweepResult:
    """Train (or reuse) every grid point x seeds, then the leaderboard, its files and (2-D) the heatmap."""
    return run_workflow(Sweep(recipe_path, overrides, sweep), options)


def failures_by_point(outcomes: Sequence[Outcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        if not outcome.ok:
            counts[outcome.planned.group] = counts.get(outcome.planned.group, 0) + 1
    return counts


def finish_sweep(plan: SweepPlan, session: Session, records: list[RunRecord], outcomes: list[Outcome]) -> SweepResult:
    """Leaderboard (CSV, JSON, report.md), the heatmap for a 2-D grid; all logged on the sweep's parent run."""
    timer, group, interval = session.timer, session.group, session.options.interval
    summaries, threshold = session.summarize(records, plan.labels)
    ranked = rank(summaries, plan.metric)
    figures = []
    if len(plan.axes) == 2 and records:
        with timer.phase("plotting"):
            figures.append(sweep_heatmap(plan, summaries, group.out_dir / "heatmap.png", group.title, interval))
    names = short_keys([a.key for a in plan.axes])
    point_columns = {
        label: {names[k]: show_value(v) for k, v in point.items()} for label, point in zip(plan.labels, plan.points)
    }
    mlflow_note = f"MLflow store `{session.tracking_uri}`, parent run `{session.tracker.run_id}` (every point is a nested run); search ``{membership_filter(group.group_id)}`` in the MLflow UI."
    failures = failures_by_point(outcomes)
    with timer.phase("writing outputs"):
        files = {"csv": write_csv(group.out_dir / "leaderboard.csv", ranked, "point", point_columns)}
        extra = {
            "grid": {a.key: list(a.values) for a in plan.axes},
            "metric": plan.metric,
            "leaderboard": [s.name for s in ranked],
            "failures": failures,
            "mlflow": session.mlflow_links(),
            "timing": timer.report(),
        }
        findings = Findings(group.title, ranked, records, outcomes, threshold, interval)
        document = comparison_document("sweep", group.group_id, findings, extra)
        files["json"] = write_json(group.out_dir / "sweep.json", document)
        files["report"] = write_report(
            group.out_dir / "report.md", findings, figures, "point", mlflow_note, timer.report()
        )
        if figures:
            files["figure"] = figures[0]
    timing = session.close(files, all(o.ok for o in outcomes))
    return SweepResult(
        **session.where(files, timing),
        summaries=summaries,
        records=records,
        outcomes=outcomes,
        threshold=threshold,
        interval=interval,
        ranked=ranked,
        metric=plan.metric,
        failures=failures,
    )


def sweep_heatmap(
    plan: SweepPlan, summaries: Sequence[GroupSummary], path: Path, title: str, method: str = T_METHOD
) -> Path:
    spec = metric_spec(plan.metric)
    x_axis, y_axis = plan.axes
    by_label = {s.name: s for s in summaries}
    values, texts = [], []
    for y_value in y_axis.values:
        row, row_text = [], []
        for x_value in x_axis.values:
            label = plan.labels[plan.points.index({x_axis.key: x_value, y_axis.key: y_value})]
            interval = by_label[label].metrics[plan.metric] if label in by_label else None
            value = interval.estimate if interval is not None else math.nan
            row.append(value)
            if interval is None or interval.n == 0:
                row_text.append("missing")
            else:
                row_text.append(f"{format_value(spec.kind, value)}\n{format_spread(spec.kind, interval)}")
        values.append(row)
        texts.append(row_text)
    return heatmap_figure(
        values,
        x_axis.key,
        [show_value(v) for v in x_axis.values],
        y_axis.key,
        [show_value(v) for v in y_axis.values],
        spec.label,
        path,
        f"{title}\n{spec.label}: {interval_caption(method)}",
        texts,
    )


__all__ = ["METRIC_KEYS", "GridAxis", "SweepOptions", "SweepResult", "SweepSection", "plan_sweep", "run_sweep"]
