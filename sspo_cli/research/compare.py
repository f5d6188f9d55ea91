"""`sspo compare`: train methods x seeds from one recipe (reusing finished runs), or compare runs
that exist; then the table, the figure, compare.csv/json and report.md, grouped in MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sspo_cli.objectives.config import objective_names
from sspo_cli.recipe import COMPARE_SECTION, Recipe, RecipeError, recipe_from_dict, stable_hash
from sspo_cli.research import ResearchError
from sspo_cli.research.analysis.conclusions import Inference, infer
from sspo_cli.research.analysis.measures import (
    GroupSummary,
    RunRecord,
    Threshold,
    auto_threshold,
    failed_record,
    summarize,
)
from sspo_cli.research.analysis.stats import INTERVAL_METHODS, T_METHOD
from sspo_cli.research.execution.execute import ExecutionContext, Outcome, WorkflowObserver, check_execution, execute
from sspo_cli.research.execution.problems import load_problem_scores
from sspo_cli.research.execution.readback import record_from_mlflow, records_of_outcomes, task_label
from sspo_cli.research.execution.store import (
    MEMBERSHIP_TAG,
    add_membership,
    close_group_run,
    failed_runs_of_experiment,
    membership_filter,
    open_group_run,
    runs_by_id,
    training_runs_of_experiment,
)
from sspo_cli.research.execution.timing import PhaseTimer
from sspo_cli.research.planning.plan import METHOD_TAG, POINT_TAG, PlannedRun
from sspo_cli.research.planning.recipe_files import deep_merge, read_recipe_file, read_variants
from sspo_cli.research.planning.space import pydantic_problem, recipe_for_point
from sspo_cli.research.reporting.outputs import (
    Findings,
    comparison_document,
    write_csv,
    write_json,
    write_pairs_csv,
    write_report,
)
from sspo_cli.research.reporting.plots import comparison_figure, statistics_figure
from sspo_cli.run.tracking import default_tracking_uri, failure_marked, open_client

if TYPE_CHECKING:
    from sspo_cli.run.tracking import Tracker

DEFAULT_OBJECTIVE = "sspo"  # the Recipe's default objective when a recipe has no objective section
VARIANTS_FILE = "variants.yaml"


class CompareSection(BaseModel):
    """The optional `compare:` section of a recipe file: what `sspo compare RECIPE` runs without options
    (--methods, --seeds and --grid override it; a --grid key replaces the section's values for that key)."""

    model_config = ConfigDict(extra="forbid")
    methods: list[str] | None = Field(None, min_length=1, description="Methods: objectives or variant names")
    seeds: int = Field(3, ge=1, description="Seeds per method (at each grid point)")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted.key -> values: a study, the comparison at every point"
    )


def read_compare_section(recipe_path: Path) -> CompareSection:
    _, section = read_recipe_file(recipe_path, COMPARE_SECTION)
    try:
        return CompareSection.model_validate(section or {})
    except ValidationError as exc:
        problems = [f"{COMPARE_SECTION}.{pydantic_problem(err)}" for err in exc.errors()]
        raise RecipeError(str(recipe_path), problems) from None


@dataclass(frozen=True)
class Method:
    name: str
    patch: dict[str, Any]  # recipe sections merged over the base recipe


@dataclass(frozen=True)
class Analysis:
    """How the numbers of a comparison are made, and where they go."""

    out_dir: Path  # the report folder
    output_dir: Path  # the runs folder (per-problem results of runs without a folder are cached there)
    tracking_uri: str
    threshold: float | None = None
    interval: str = T_METHOD  # of the main table: "t" or "bootstrap"


def check_workflow(jobs: int, interval: str, output_dir: Path, tracking_uri: str | None) -> str:
    """The options every training workflow shares, checked before planning; the tracking URI to use."""
    check_interval(interval)
    return check_execution(jobs, output_dir, tracking_uri)


def check_interval(method: str) -> str:
    if method not in INTERVAL_METHODS:
        raise ResearchError("--interval", f"unknown interval {method!r} (choose from {', '.join(INTERVAL_METHODS)})")
    return method


@dataclass
class ComparisonResult:
    kind: str
    group_id: str
    title: str
    out_dir: Path
    summaries: list[GroupSummary]
    records: list[RunRecord]
    outcomes: list[Outcome]
    threshold: Threshold
    files: dict[str, Path]
    timing: dict[str, Any]
    parent_run_id: str
    tracking_uri: str
    extra: dict[str, Any] = field(default_factory=dict)
    interval: str = T_METHOD
    inference: Inference | None = None

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


# --------------------------------------------------------------------------- planning


def parse_methods(spec: str | None, variants: dict[str, dict[str, Any]]) -> list[Method]:
    """`grpo,gspo,sspo-arctan`: objective names, or variant names from the variants file; None: every objective."""
    names = list(objective_names()) if spec is None else [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise ResearchError("--methods", "name at least one method, e.g. --methods grpo,sspo")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ResearchError("--methods", f"{', '.join(duplicates)} named twice")
    methods = []
    for name in names:
        if name in variants:
            methods.append(Method(name, variants[name]))
        elif name in objective_names():
            methods.append(Method(name, {"objective": {"name": name}}))
        else:
            known = f"objectives: {', '.join(objective_names())}" + (
                f"; variants: {', '.join(variants)}" if variants else "; no variants file"
            )
            raise ResearchError("--methods", f"unknown method {name!r} ({known})")
    return methods


def recipe_data_for(base: dict[str, Any], method: Method) -> dict[str, Any]:
    """The base recipe with the method applied.

    A method that keeps the base's objective name refines the base's objective section (so
    `sspo` in an SSPO recipe keeps its temperatures); one that changes it replaces the section,
    since each objective has its own keys.
    """
    patch = dict(method.patch)
    objective = patch.pop("objective", None)
    data = deep_merge(base, patch)
    if isinstance(objective, dict):
        current = data.get("objective") or {}
        current_name = current.get("name", DEFAULT_OBJECTIVE) if isinstance(current, dict) else None
        wanted = objective.get("name", current_name)
        data["objective"] = deep_merge(current, objective) if wanted == current_name else dict(objective)
    elif objective is not None:
        data["objective"] = objective  # let recipe validation name the problem
    return data


def plan_comparison(
    recipe_path: Path,
    overrides: Sequence[str],
    methods_spec: str | None,
    seeds: int,
    variants_path: Path | None,
    point: dict[str, Any] | None = None,
    point_label: str = "",
) -> tuple[list[PlannedRun], Recipe]:
    """Every (method, seed) run, each recipe validated before anything trains; at a study's grid `point`
    (dotted key -> value, set after the method's patch), named and tagged with its label."""
    if seeds < 1:
        raise ResearchError("--seeds", f"must be at least 1, got {seeds}")
    base_data, _ = read_recipe_file(recipe_path)
    base = recipe_from_dict(base_data, list(overrides), str(recipe_path))
    variants = read_variants(variants_path) if variants_path else {}
    at_point = f", grid point {point_label}" if point_label else ""
    name_part = f"-{point_label.replace(' ', '-')}" if point_label else ""
    plan = []
    for method in parse_methods(methods_spec, variants):
        data = recipe_data_for(base_data, method)
        for seed in range(base.seed, base.seed + seeds):
            source = f"{recipe_path} (method {method.name}{at_point})"
            recipe = recipe_for_point(data, point or {}, overrides, seed, source)
            tags = {METHOD_TAG: method.name, **({POINT_TAG: point_label} if point_label else {})}
            display = f"{recipe.name}-{method.name}{name_part}-s{seed}"
            plan.append(PlannedRun(method.name, seed, recipe, display, tags))
    return plan, base


def default_variants_file(recipe_path: Path) -> Path | None:
    candidate = recipe_path.parent / VARIANTS_FILE
    return candidate if candidate.is_file() else None


def group_id_of(kind: str, plan: Sequence[PlannedRun]) -> str:
    """Same planned runs, same id: re-running a comparison finds its parent run again."""
    return stable_hash({"kind": kind, "runs": [[p.group, p.fingerprint] for p in plan]})[:12]


# --------------------------------------------------------------------------- running


def run_comparison(
    recipe_path: Path,
    overrides: Sequence[str],
    methods_spec: str | None,
    seeds: int,
    variants_path: Path | None,
    output_dir: Path,
    tracking_uri: str | None = None,
    jobs: int = 1,
    threshold: float | None = None,
    report_dir: Path | None = None,
    observer: WorkflowObserver | None = None,
    interval: str = T_METHOD,
) -> ComparisonResult:

    timer = PhaseTimer()
    with timer.phase("planning"):
        tracking_uri = check_workflow(jobs, interval, output_dir, tracking_uri)
        variants_path = variants_path or default_variants_file(recipe_path)
        plan, base = plan_comparison(recipe_path, overrides, methods_spec, seeds, variants_path)
        group_id = group_id_of("comparison", plan)
        methods = list(dict.fromkeys(p.group for p in plan))
        title = f"{base.name}: {', '.join(methods)} x {seeds} seed{'s' if seeds > 1 else ''}"
        out_dir = report_dir or output_dir / f"compare-{base.name}-{group_id}"
    with timer.phase("group run"):
        params = {
            "recipe": str(recipe_path),
            "methods": ",".join(methods),
            "seeds": seeds,
            "overrides": " ".join(overrides),
            "variants": str(variants_path or ""),
        }
        tracker = open_group_run(
            tracking_uri,
            base.tracking.experiment,
            "comparison",
            group_id,
            f"compare-{base.name}-{group_id[:6]}",
            params,
            output_dir / "mlartifacts",
        )
    analysis = Analysis(out_dir, output_dir, tracking_uri, threshold, interval)
    return _run_and_finish(plan, methods, "comparison", group_id, title, tracker, timer, analysis, jobs, observer)


def _run_and_finish(
    plan: list[PlannedRun],
    order: list[str],
    kind: str,
    group_id: str,
    title: str,
    tracker: Tracker,
    timer: PhaseTimer,
    analysis: Analysis,
    jobs: int,
    observer: WorkflowObserver | None,
) -> ComparisonResult:
    """Train (or reuse) the plan under the group run, then finish; the group run ends KILLED/FAILED if this does not."""
    with failure_marked(tracker):
        ctx = ExecutionContext(
            analysis.output_dir,
            analysis.tracking_uri,
            group_id,
            tracker.run_id,
            jobs,
            observer or WorkflowObserver(),
            timer,
        )
        outcomes = execute(plan, ctx)
        with timer.phase("loading records"):
            records = records_of_outcomes(tracker.client, outcomes)
        return finish_comparison(kind, group_id, title, records, outcomes, order, analysis, tracker, timer)


def finish_comparison(
    kind: str,
    group_id: str,
    title: str,
    records: list[RunRecord],
    outcomes: list[Outcome],
    order: Sequence[str],
    analysis: Analysis,
    tracker: Tracker,
    timer: PhaseTimer,
) -> ComparisonResult:
    """Table numbers, statistics, figures, compare.csv/json, pairs.csv and report.md; all logged on the parent run."""
    out_dir, tracking_uri = analysis.out_dir, analysis.tracking_uri
    with timer.phase("analysis"):
        out_dir.mkdir(parents=True, exist_ok=True)
        threshold = (
            Threshold(analysis.threshold, "--threshold") if analysis.threshold is not None else auto_threshold(records)
        )
        summaries = summarize(records, threshold.value, order, method=analysis.interval)
    inference = comparison_inference(records, order, analysis, timer)
    figures = []
    if any(not r.failed for r in records):
        with timer.phase("plotting"):
            figures.append(comparison_figure(records, order, out_dir / "compare.png", title))
            if inference is not None and inference.paired:
                figures.append(
                    statistics_figure(inference, out_dir / "statistics.png", f"{title}: final held-out accuracy")
                )
    mlflow_note = (
        f"MLflow store `{tracking_uri}`, parent run `{tracker.run_id}`; the runs side by side: "
        f"search ``{membership_filter(group_id)}`` in the MLflow UI."
    )
    with timer.phase("writing outputs"):
        files = {"csv": write_csv(out_dir / "compare.csv", summaries, "method")}
        if inference is not None and inference.paired:
            files["pairs"] = write_pairs_csv(out_dir / "pairs.csv", inference)
        extra = {
            "mlflow": {
                "tracking_uri": tracking_uri,
                "parent_run_id": tracker.run_id,
                "runs_filter": membership_filter(group_id),
            },
            "timing": timer.report(),
        }
        findings = Findings(title, summaries, records, outcomes, threshold, analysis.interval, inference)
        files["json"] = write_json(out_dir / "compare.json", comparison_document(kind, group_id, findings, extra))
        files["report"] = write_report(out_dir / "report.md", findings, figures, "method", mlflow_note, timer.report())
        files.update({figure.stem: figure for figure in figures})
    timing = close_group_run(tracker, files, timer, all(o.ok for o in outcomes))
    return ComparisonResult(
        kind=kind,
        group_id=group_id,
        title=title,
        out_dir=out_dir,
        summaries=summaries,
        records=records,
        outcomes=outcomes,
        threshold=threshold,
        files=files,
        timing=timing,
        parent_run_id=tracker.run_id,
        tracking_uri=tracking_uri,
        interval=analysis.interval,
        inference=inference,
    )


def comparison_inference(
    records: Sequence[RunRecord], order: Sequence[str], analysis: Analysis, timer: PhaseTimer
) -> Inference | None:
    """The statistics of the final accuracy; with two methods or more, per-problem results for the paired comparison."""
    if not records:
        return None
    problems, notes = {}, []
    if len({r.group for r in records}) >= 2:
        with timer.phase("per-problem eval"):
            problems, notes = load_problem_scores(records, analysis.output_dir, analysis.tracking_uri)
    with timer.phase("statistics"):
        return infer(records, order, problems, notes)


# --------------------------------------------------------------------------- existing runs


def compare_existing(
    experiment: str | None,
    run_ids: Sequence[str],
    output_dir: Path,
    tracking_uri: str | None = None,
    threshold: float | None = None,
    report_dir: Path | None = None,
    group_by: str | None = None,
    interval: str = T_METHOD,
) -> ComparisonResult:
    """Compare finished runs as they are, grouped by the `sspo.method` tag (or `--group-by TAG`).

    With --experiment, its FAILED training runs that were never retried successfully count too
    (measures.FAILED_RULE); KILLED runs were interrupted or pruned, not failed, and are left out.
    """
    timer = PhaseTimer()
    if bool(experiment) == bool(run_ids):
        raise ResearchError("--experiment", "give either RECIPE, --experiment NAME or --runs ID ...")
    check_interval(interval)
    tracking_uri = tracking_uri or default_tracking_uri(output_dir)
    with timer.phase("mlflow queries"):
        client = open_client(tracking_uri)
        runs = training_runs_of_experiment(client, experiment) if experiment else runs_by_id(client, run_ids)
        if not runs:
            raise ResearchError("--experiment", f"experiment {experiment!r} has no FINISHED sspo training runs")
        experiment_name = experiment or client.get_experiment(runs[0].info.experiment_id).name
        failed_runs = failed_runs_of_experiment(client, experiment) if experiment else []
    with timer.phase("loading records"):
        records = [record_from_mlflow(client, run, group_label(run, group_by), reused=True) for run in runs]
        records += [
            failed_record(
                group_label(run, group_by),
                int(run.data.tags.get("sspo.seed", 0)),
                task_label(run.data.params),
                "FAILED in MLflow",
                run.info.run_id,
            )
            for run in failed_runs
        ]
    order = list(dict.fromkeys(r.group for r in records))
    group_id = stable_hash({"kind": "comparison-of-runs", "runs": sorted(r.run_id for r in records)})[:12]
    title = f"{experiment_name}: {', '.join(order)} ({len(records)} runs)"
    with timer.phase("group run"):
        params = {"experiment": experiment or "", "runs": " ".join(run_ids), "group_by": group_by or METHOD_TAG}
        tracker = open_group_run(
            tracking_uri,
            experiment_name,
            "comparison",
            group_id,
            f"compare-runs-{group_id[:6]}",
            params,
            output_dir / "mlartifacts",
        )
        for run in runs:
            add_membership(client, run.info.run_id, run.data.tags.get(MEMBERSHIP_TAG), group_id)
    analysis = Analysis(
        report_dir or output_dir / f"compare-{experiment_name}-{group_id}",
        output_dir,
        tracking_uri,
        threshold,
        interval,
    )
    with failure_marked(tracker):
        return finish_comparison("comparison", group_id, title, records, [], order, analysis, tracker, timer)


def group_label(run: Any, tag: str | None) -> str:
    tags = run.data.tags
    if tag:
        if tag not in tags:
            raise ResearchError("--group-by", f"run {run.info.run_id} has no tag {tag!r}")
        return tags[tag]
    return tags.get(METHOD_TAG) or tags.get("sspo.objective") or "unknown"
