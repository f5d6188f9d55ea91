"""`sspo compare RECIPE --grid key=v1,v2`: the comparison of methods x seeds repeated at every grid point.

Every run of every point trains in one pool (so `--jobs` keeps its workers busy across points) under
one study run in MLflow; each point then gets the full comparison of `compare.py` (table, statistics,
figures, report.md) as a nested run of its own, and the study adds the table of all points, with
collapse counts, and one figure of accuracy, importance-weight variance and gate saturation against
the grid.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.research.analysis.conclusions import HEADLINE_METRIC
from sspo_cli.research.analysis.measures import COLLAPSE_RULE, FAILED_RULE, METRICS, metric_spec
from sspo_cli.research.analysis.stats import T_METHOD, Interval
from sspo_cli.research.compare import (
    CompareOptions,
    ComparisonResult,
    default_variants_file,
    finish_comparison,
    plan_comparison,
)
from sspo_cli.research.execution.execute import Outcome
from sspo_cli.research.execution.store import MEMBERSHIP_TAG, add_membership, membership_filter
from sspo_cli.research.planning.grid import (
    grid_axis,
    grid_points,
    merge_axes,
    parse_grid_option,
    point_label,
    short_keys,
)
from sspo_cli.research.planning.plan import POINT_TAG, PlannedRun
from sspo_cli.research.planning.space import GridAxis
from sspo_cli.research.reporting.formatting import format_interval, format_value, interval_caption
from sspo_cli.research.reporting.outputs import WorkflowResult
from sspo_cli.research.reporting.plots import study_figure
from sspo_cli.research.reporting.statistics_text import TextTable, headline_name
from sspo_cli.research.workflow import (
    GroupRun,
    Session,
    Workflow,
    WorkflowOptions,
    group_id_of,
    open_group,
    run_workflow,
)
from sspo_cli.run.tracking import failure_marked

if TYPE_CHECKING:
    from sspo_cli.recipe import Recipe

SEPARATION_LEVEL = 0.05  # a rank test (Mann-Whitney U, two-sided) below this counts as a separation


@dataclass
class StudyPlan:
    base: Recipe
    axes: list[GridAxis]
    labels: list[str]  # one per point, in grid order
    points: list[dict[str, Any]]
    methods: list[str]
    seeds: int
    runs: dict[str, list[PlannedRun]]  # point label -> its methods x seeds
    variants: Path | None = None
    metric: str = HEADLINE_METRIC  # what each point's statistics lead with

    @property
    def every_run(self) -> list[PlannedRun]:
        return [run for label in self.labels for run in self.runs[label]]


@dataclass(kw_only=True)
class StudyResult(WorkflowResult):
    plan: StudyPlan
    points: dict[str, ComparisonResult]  # point label -> its comparison
    separations: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for result in self.points.values() for outcome in result.failed]


def plan_study(
    recipe_path: Path, overrides: Sequence[str], compare: CompareOptions, axes: Sequence[GridAxis]
) -> StudyPlan:
    """Every (point, method, seed) run, each recipe validated before anything trains."""
    variants = compare.variants or default_variants_file(recipe_path)
    names = short_keys([axis.key for axis in axes])
    points = grid_points(axes)
    labels = [point_label(point, names) for point in points]
    runs: dict[str, list[PlannedRun]] = {}
    base = None
    for point, label in zip(points, labels):
        spec = (compare.methods, compare.seeds, variants, point, label)
        runs[label], base = plan_comparison(recipe_path, overrides, *spec)
    assert base is not None  # grid_points of at least one axis has at least one point
    methods = list(dict.fromkeys(p.group for p in runs[labels[0]]))
    return StudyPlan(base, list(axes), labels, points, methods, compare.seeds, runs, variants, compare.metric)


def study_axes(grid_options: Sequence[str], section_grid: dict[str, list[Any]]) -> list[GridAxis]:
    from_file = [grid_axis(key, values, "compare.grid") for key, values in section_grid.items()]
    return merge_axes(from_file, [parse_grid_option(text) for text in grid_options])


@dataclass(frozen=True)
class Study(Workflow[StudyPlan, StudyResult]):
    recipe: Path
    overrides: Sequence[str]
    compare: CompareOptions
    axes: Sequence[GridAxis]

    def plan(self, options: WorkflowOptions) -> StudyPlan:
        return plan_study(self.recipe, self.overrides, self.compare, self.axes)

    def group(self, plan: StudyPlan, options: WorkflowOptions) -> GroupRun:
        group_id, name = group_id_of("study", plan.every_run), plan.base.name
        grid_text = " x ".join(f"{a.key} ({', '.join(json.dumps(v) for v in a.values)})" for a in plan.axes)
        params = {
            "recipe": str(self.recipe),
            "methods": ",".join(plan.methods),
            "seeds": plan.seeds,
            "grid": json.dumps({a.key: list(a.values) for a in plan.axes}),
            "overrides": " ".join(self.overrides),
        }
        title = f"{name}: {', '.join(plan.methods)} x {plan.seeds} seeds at {grid_text}"
        out_dir = options.report_folder(f"study-{name}-{group_id}")
        experiment = plan.base.tracking.experiment
        return GroupRun("study", group_id, experiment, f"study-{name}-{group_id[:6]}", params, title, out_dir)

    def conclude(self, plan: StudyPlan, session: Session) -> StudyResult:
        """Every run of every point in one pool, then each point's comparison, then the study's table and figure."""
        outcomes = session.execute(plan.every_run)
        results = {}
        start = 0
        for label in plan.labels:
            point_outcomes = outcomes[start : start + len(plan.runs[label])]
            start += len(point_outcomes)
            results[label] = finish_point(plan, label, point_outcomes, session)
        return finish_study(plan, results, session)


def run_study(
    recipe_path: Path,
    overrides: Sequence[str],
    compare: CompareOptions,
    axes: Sequence[GridAxis],
    options: WorkflowOptions,
) -> StudyResult:
    """The comparison of methods x seeds at every point of the grid, under one study run."""
    return run_workflow(Study(recipe_path, overrides, compare, axes), options)


def slug(label: str) -> str:
    return label.replace(" ", "-")


def finish_point(plan: StudyPlan, label: str, outcomes: list[Outcome], study: Session) -> ComparisonResult:
    """The point's own comparison, as a run nested in the study; its training runs join its group."""
    records = study.records(outcomes)
    name = plan.base.name
    group = GroupRun(
        "comparison",
        group_id_of("comparison", plan.runs[label]),
        plan.base.tracking.experiment,
        f"compare-{name}-{slug(label)}",
        {"point": label, "methods": ",".join(plan.methods), "seeds": plan.seeds},
        f"{name} at {label}: {', '.join(plan.methods)} x {plan.seeds} seeds",
        study.group.out_dir / f"point-{slug(label)}",
        parent_run_id=study.tracker.run_id,
    )
    tracker = open_group(group, study.tracking_uri, study.options.output_dir)
    for outcome in outcomes:
        if outcome.run_id:
            run = tracker.client.get_run(outcome.run_id)
            add_membership(tracker.client, outcome.run_id, run.data.tags.get(MEMBERSHIP_TAG), group.group_id)
    with failure_marked(tracker):
        point = Session(study.options, study.tracking_uri, group, tracker)
        return finish_comparison(point, records, outcomes, plan.methods, plan.metric)


SEPARATION_RULE = (
    "a separation: the paired bootstrap over problems and seeds and the Student-t interval over the per-seed "
    "differences both exclude 0 on the same side, or the two methods' 95% t intervals over seeds do not overlap, "
    f"or a two-sided Mann-Whitney U test over their runs gives p < {SEPARATION_LEVEL} (which 3 runs a side can "
    "never reach: its smallest p is 0.1)"
)


def separations(plan: StudyPlan, results: dict[str, ComparisonResult]) -> list[str]:
    """Every pair the study tells apart at some point by SEPARATION_RULE. One line each; empty: none did."""
    lines = []
    for label in plan.labels:
        inference = results[label].inference
        if inference is None:
            continue
        kind = metric_spec(inference.metric).kind
        scores = {s.name: [run[inference.metric] for run in s.per_run] for s in results[label].summaries}
        for pair in inference.paired:
            reasons = []
            if pair.separated:
                reasons.append(
                    f"paired difference in {inference.metric} {signed_interval(kind, pair.difference)}, "
                    f"over seeds {signed_interval(kind, pair.over_seeds)}"
                )
            if not pair.unpaired_overlap:
                reasons.append("95% t intervals over seeds do not overlap")
            p = rank_test_p(scores.get(pair.first, []), scores.get(pair.second, []))
            if p < SEPARATION_LEVEL:
                reasons.append(f"Mann-Whitney p = {p:.3f}")
            if reasons:
                lines.append(f"{label}: {pair.first} vs {pair.second}: {'; '.join(reasons)}")
    return lines


def rank_test_p(first: list[float], second: list[float]) -> float:
    """Two-sided Mann-Whitney U over the runs' scores (scipy: exact for small samples without ties); 1 when
    a side has no finite score."""
    from scipy import stats

    first, second = [v for v in first if math.isfinite(v)], [v for v in second if math.isfinite(v)]
    if not first or not second:
        return 1.0
    p = float(stats.mannwhitneyu(first, second, alternative="two-sided").pvalue)
    return p if math.isfinite(p) else 1.0


def finish_study(plan: StudyPlan, results: dict[str, ComparisonResult], session: Session) -> StudyResult:
    found = separations(plan, results)
    out_dir, title = session.group.out_dir, session.group.title
    with session.timer.phase("writing outputs"):
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {"csv": write_study_csv(out_dir / "study.csv", plan, results)}
        if any(not r.failed for result in results.values() for r in result.records):
            summaries = {label: result.summaries for label, result in results.items()}
            interval = table_interval(results)
            figure_path = out_dir / "study.png"
            files["figure"] = study_figure(
                plan.axes, plan.labels, plan.points, plan.methods, summaries, figure_path, title, interval
            )
        files["report"] = write_study_report(out_dir / "report.md", plan, results, found, files, session)
    ok = all(not result.failed for result in results.values())
    timing = session.close(files, ok)
    return StudyResult(**session.where(files, timing), plan=plan, points=results, separations=found)


def signed_interval(kind: str, interval: Interval) -> str:
    estimate, low, high = (format_value(kind, v, sign="+") for v in (interval.estimate, interval.low, interval.high))
    return f"{estimate} [{low}, {high}]"


STUDY_COLUMNS = ("final_accuracy", "final_reward", "best_accuracy", "seq_var", "saturated_frac", "reward_auc")


def study_rows(plan: StudyPlan, results: dict[str, ComparisonResult]) -> list[dict[str, Any]]:
    """One row per (point, method): the point's values, runs, failed and collapsed counts, each metric's interval."""
    rows = []
    for label, point in zip(plan.labels, plan.points):
        for summary in results[label].summaries:
            row: dict[str, Any] = {**point, "method": summary.name, "runs": len(summary.run_ids)}
            row |= {"failed": summary.failed, "collapsed": summary.collapsed}
            for key in STUDY_COLUMNS:
                interval = summary.metrics[key]
                row |= {key: interval.estimate, f"{key}_low": interval.low, f"{key}_high": interval.high}
            rows.append(row)
    return rows


def table_interval(results: dict[str, ComparisonResult]) -> str:
    return next(iter(results.values())).interval if results else T_METHOD


def write_study_csv(path: Path, plan: StudyPlan, results: dict[str, ComparisonResult]) -> Path:
    import csv

    rows = study_rows(plan, results)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["method"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def study_table(plan: StudyPlan, results: dict[str, ComparisonResult]) -> TextTable:
    """Every method at every point, with its collapsed and failed runs: one source for the terminal and report.md."""
    specs = {spec.key: spec for spec in METRICS}
    rows = []
    for label in plan.labels:
        for summary in results[label].summaries:
            runs = len(summary.run_ids)
            cells = [format_interval(specs[key].kind, summary.metrics[key]) for key in STUDY_COLUMNS[:5]]
            rows.append((label, summary.name, *cells, f"{summary.collapsed}/{runs}", f"{summary.failed}/{runs}"))
    interval = table_interval(results)
    headers = ("point", "method", *(specs[key].label for key in STUDY_COLUMNS[:5]), "collapsed", "failed")
    caption = f"{interval_caption(interval)}; collapsed: final held-out accuracy below half its start"
    return TextTable(title="", headers=headers, rows=rows, caption=caption, left_columns=2)


def write_study_report(
    path: Path,
    plan: StudyPlan,
    results: dict[str, ComparisonResult],
    found: list[str],
    files: dict[str, Path],
    session: Session,
) -> Path:
    title, tracking_uri, parent_run_id, group_id = (
        session.group.title,
        session.tracking_uri,
        session.tracker.run_id,
        session.group.group_id,
    )
    table = study_table(plan, results)
    lines = [f"# {title}", "", "| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    lines += [
        "",
        f"Each cell: {interval_caption(table_interval(results))}. {COLLAPSE_RULE[0].upper() + COLLAPSE_RULE[1:]}; "
        f"{FAILED_RULE}.",
        "",
        "## Separations",
        "",
        f"Judged on the {headline_name(metric_spec(plan.metric))} (the recipe's `compare.metric`, or `--metric`).",
        "",
    ]
    lines += [f"- {line}" for line in found] or ["None: at no point did a pair of methods separate."]
    lines += ["", f"Rule: {SEPARATION_RULE}."]
    lines += ["", "Uncorrected for the number of pairs and points: read a separation as a lead, not a ranking.", ""]
    if "figure" in files:
        lines += [f"![study]({files['figure'].name})", ""]
    lines += ["## Points", ""]
    for label in plan.labels:
        report = results[label].files.get("report")
        if report is not None:
            lines.append(f"- {label}: [{report.parent.name}/report.md]({report.parent.name}/report.md)")
    lines += [
        "",
        "## Where",
        "",
        f"MLflow store `{tracking_uri}`, study run `{parent_run_id}`; each point's comparison is a nested run, every "
        f"training run is nested under the study; search ``{membership_filter(group_id)}`` in the MLflow UI.",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


__all__ = ["POINT_TAG", "StudyPlan", "StudyResult", "plan_study", "run_study", "separations", "study_axes"]
