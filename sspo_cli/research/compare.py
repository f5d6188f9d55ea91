"""`sspo compare`: train methods x seeds from one recipe (reusing finished runs), or compare runs
that exist; then the table, the figure, compare.csv/json and report.md, grouped in MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sspo_cli.objectives.config import objective_names
from sspo_cli.recipe import COMPARE_SECTION, Recipe, RecipeError, recipe_from_dict, stable_hash
from sspo_cli.research import ResearchError
from sspo_cli.research.analysis.conclusions import HEADLINE_METRIC, Inference, infer
from sspo_cli.research.analysis.measures import HEADLINE_METRICS, RunRecord, failed_record, metric_spec
from sspo_cli.research.execution.execute import Outcome
from sspo_cli.research.execution.problems import load_problem_scores
from sspo_cli.research.execution.readback import record_from_mlflow, task_label
from sspo_cli.research.execution.store import (
    MEMBERSHIP_TAG,
    add_membership,
    failed_runs_of_experiment,
    membership_filter,
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
from sspo_cli.research.reporting.statistics_text import headline_name
from sspo_cli.research.workflow import (
    GroupRun,
    GroupsResult,
    Session,
    Workflow,
    WorkflowOptions,
    check_interval,
    group_id_of,
    open_group,
    run_workflow,
    seeds_text,
)
from sspo_cli.run.tracking import default_tracking_uri, failure_marked, open_client

DEFAULT_OBJECTIVE = "sspo"  # the Recipe's default objective when a recipe has no objective section
VARIANTS_FILE = "variants.yaml"


Headline = Literal[HEADLINE_METRICS]  # what `compare.metric` accepts


class CompareSection(BaseModel):
    """The optional `compare:` section of a recipe file: what `sspo compare RECIPE` runs without options
    (--methods, --seeds and --grid override it; a --grid key replaces the section's values for that key)."""

    model_config = ConfigDict(extra="forbid")
    methods: list[str] | None = Field(None, min_length=1, description="Methods: objectives or variant names")
    seeds: int = Field(3, ge=1, description="Seeds per method (at each grid point)")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict, description="dotted.key -> values: a study, the comparison at every point"
    )
    metric: Headline = Field(HEADLINE_METRIC, description="What the statistics lead with (decide before the runs)")


def check_headline(metric: str) -> str:
    if metric not in HEADLINE_METRICS:
        raise ResearchError(
            "--metric", f"unknown headline metric {metric!r} (choose from {', '.join(HEADLINE_METRICS)})"
        )
    return metric


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
class CompareOptions:
    """What a comparison trains, besides its recipe: methods x seeds (a study: at every grid point)."""

    methods: str | None = None  # `grpo,sspo-arctan`: objectives or variant names; None: every objective
    seeds: int = 3  # per method: the recipe's seed, +1, ...
    variants: Path | None = None  # None: variants.yaml next to the recipe, if there is one
    metric: str = HEADLINE_METRIC  # what the statistics lead with: one of measures.HEADLINE_METRICS


@dataclass(kw_only=True)
class ComparisonResult(GroupsResult):
    kind: str = "comparison"
    inference: Inference | None = None


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


# --------------------------------------------------------------------------- running


@dataclass
class ComparisonPlan:
    runs: list[PlannedRun]
    base: Recipe
    methods: list[str]
    variants: Path | None


@dataclass(frozen=True)
class Comparison(Workflow[ComparisonPlan, ComparisonResult]):
    recipe: Path
    overrides: Sequence[str]
    compare: CompareOptions

    def plan(self, options: WorkflowOptions) -> ComparisonPlan:
        variants = self.compare.variants or default_variants_file(self.recipe)
        spec = (self.compare.methods, self.compare.seeds, variants)
        runs, base = plan_comparison(self.recipe, self.overrides, *spec)
        return ComparisonPlan(runs, base, list(dict.fromkeys(p.group for p in runs)), variants)

    def group(self, plan: ComparisonPlan, options: WorkflowOptions) -> GroupRun:
        group_id, name = group_id_of("comparison", plan.runs), plan.base.name
        params = {
            "recipe": str(self.recipe),
            "methods": ",".join(plan.methods),
            "seeds": self.compare.seeds,
            "overrides": " ".join(self.overrides),
            "variants": str(plan.variants or ""),
        }
        title = f"{name}: {', '.join(plan.methods)} x {seeds_text(self.compare.seeds)}"
        out_dir = options.report_folder(f"compare-{name}-{group_id}")
        return GroupRun(
            "comparison",
            group_id,
            plan.base.tracking.experiment,
            f"compare-{name}-{group_id[:6]}",
            params,
            title,
            out_dir,
        )

    def conclude(self, plan: ComparisonPlan, session: Session) -> ComparisonResult:
        outcomes = session.execute(plan.runs)
        return finish_comparison(session, session.records(outcomes), outcomes, plan.methods, self.compare.metric)


def run_comparison(
    recipe_path: Path, overrides: Sequence[str], compare: CompareOptions, options: WorkflowOptions
) -> ComparisonResult:
    """Train (or reuse) methods x seeds from one recipe, then the comparison's table, statistics and files."""
    return run_workflow(Comparison(recipe_path, overrides, compare), options)


def finish_comparison(
    session: Session,
    records: list[RunRecord],
    outcomes: list[Outcome],
    order: Sequence[str],
    metric: str = HEADLINE_METRIC,
) -> ComparisonResult:
    """Table numbers, statistics, figures, compare.csv/json, pairs.csv and report.md; all logged on the parent run."""
    timer, group, interval = session.timer, session.group, session.options.interval
    summaries, threshold = session.summarize(records, order)
    inference = comparison_inference(records, order, session, metric)
    figures = comparison_figures(records, order, inference, session)
    mlflow_note = (
        f"MLflow store `{session.tracking_uri}`, parent run `{session.tracker.run_id}`; the runs side by side: "
        f"search ``{membership_filter(group.group_id)}`` in the MLflow UI."
    )
    with timer.phase("writing outputs"):
        out_dir = group.out_dir
        files = {"csv": write_csv(out_dir / "compare.csv", summaries, "method")}
        if inference is not None and inference.paired:
            files["pairs"] = write_pairs_csv(out_dir / "pairs.csv", inference)
        extra = {"mlflow": session.mlflow_links(), "timing": timer.report()}
        findings = Findings(group.title, summaries, records, outcomes, threshold, interval, inference)
        document = comparison_document(group.kind, group.group_id, findings, extra)
        files["json"] = write_json(out_dir / "compare.json", document)
        files["report"] = write_report(out_dir / "report.md", findings, figures, "method", mlflow_note, timer.report())
        files.update({figure.stem: figure for figure in figures})
    timing = session.close(files, all(o.ok for o in outcomes))
    return ComparisonResult(
        **session.where(files, timing),
        kind=group.kind,
        summaries=summaries,
        records=records,
        outcomes=outcomes,
        threshold=threshold,
        interval=interval,
        inference=inference,
    )


def comparison_figures(
    records: Sequence[RunRecord], order: Sequence[str], inference: Inference | None, session: Session
) -> list[Path]:
    """The learning curves and, with paired statistics, their figure; none without a finished run."""
    if not any(not r.failed for r in records):
        return []
    out_dir, title = session.group.out_dir, session.group.title
    with session.timer.phase("plotting"):
        figures = [comparison_figure(records, order, out_dir / "compare.png", title)]
        if inference is not None and inference.paired:
            path = out_dir / "statistics.png"
            figures.append(
                statistics_figure(inference, path, f"{title}: {headline_name(metric_spec(inference.metric))}")
            )
    return figures


def comparison_inference(
    records: Sequence[RunRecord], order: Sequence[str], session: Session, metric: str = HEADLINE_METRIC
) -> Inference | None:
    """The statistics of `metric`; with two methods or more, per-problem results for the paired comparison."""
    if not records:
        return None
    problems, notes = {}, []
    if len({r.group for r in records}) >= 2:
        with session.timer.phase("per-problem eval"):
            problems, notes = load_problem_scores(records, session.options.output_dir, session.tracking_uri, metric)
    with session.timer.phase("statistics"):
        return infer(records, order, problems, notes, metric=metric)


# --------------------------------------------------------------------------- existing runs


def compare_existing(
    experiment: str | None,
    run_ids: Sequence[str],
    options: WorkflowOptions,
    group_by: str | None = None,
    metric: str = HEADLINE_METRIC,
) -> ComparisonResult:
    """Compare finished runs as they are, grouped by the `sspo.method` tag (or `--group-by TAG`).

    --runs keeps the order given; an experiment's groups come in alphabetical order, each by seed.

    With --experiment, its FAILED training runs that were never retried successfully count too
    (measures.FAILED_RULE); KILLED runs were interrupted or pruned, not failed, and are left out.
    """
    timer = PhaseTimer()
    if bool(experiment) == bool(run_ids):
        raise ResearchError("--experiment", "give either RECIPE, --experiment NAME or --runs ID ...")
    check_interval(options.interval)
    tracking_uri = options.tracking_uri or default_tracking_uri(options.output_dir)
    with timer.phase("mlflow queries"):
        client = open_client(tracking_uri)
        runs = training_runs_of_experiment(client, experiment) if experiment else runs_by_id(client, run_ids)
        if not runs:
            raise ResearchError("--experiment", f"experiment {experiment!r} has no FINISHED sspo training runs")
        experiment_name = experiment or client.get_experiment(runs[0].info.experiment_id).name
        failed_runs = failed_runs_of_experiment(client, experiment) if experiment else []
    with timer.phase("loading records"):
        records = existing_records(client, runs, failed_runs, group_by)
    if experiment:  # parallel workers make start times a race: a report must not depend on which won
        records.sort(key=lambda r: (r.group, r.task, r.seed, r.run_id))
    order = list(dict.fromkeys(r.group for r in records))
    group_id = stable_hash({"kind": "comparison-of-runs", "runs": sorted(r.run_id for r in records)})[:12]
    params = {"experiment": experiment or "", "runs": " ".join(run_ids), "group_by": group_by or METHOD_TAG}
    title = f"{experiment_name}: {', '.join(order)} ({len(records)} runs)"
    out_dir = options.report_folder(f"compare-{experiment_name}-{group_id}")
    group = GroupRun("comparison", group_id, experiment_name, f"compare-runs-{group_id[:6]}", params, title, out_dir)
    with timer.phase("group run"):
        tracker = open_group(group, tracking_uri, options.output_dir)
        for run in runs:
            add_membership(client, run.info.run_id, run.data.tags.get(MEMBERSHIP_TAG), group_id)
    with failure_marked(tracker):
        return finish_comparison(Session(options, tracking_uri, group, tracker, timer), records, [], order, metric)


def existing_records(
    client: Any, runs: Sequence[Any], failed_runs: Sequence[Any], group_by: str | None
) -> list[RunRecord]:
    """The finished runs read back, and the failed ones as failed records."""
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
    return records


def group_label(run: Any, tag: str | None) -> str:
    tags = run.data.tags
    if tag:
        if tag not in tags:
            raise ResearchError("--group-by", f"run {run.info.run_id} has no tag {tag!r}")
        return tags[tag]
    return tags.get(METHOD_TAG) or tags.get("sspo.objective") or "unknown"
