"""Typer commands `eval`, `compare`, `sweep`: parse, call, render. `register(app)` adds them to `sspo`.

Nothing heavy is imported at module level (torch, mlflow, matplotlib load inside the commands).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import typer

from sspo_cli.cli.guard import EXIT_FAILED, guarded

SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a recipe key: dotted.key=value (repeatable; applies to every run)."),
]
OutputOpt = Annotated[
    Path,
    typer.Option(
        "--output-dir", "-o", help="Where run folders, the warm-start cache, reports and the default MLflow store go."
    ),
]
TrackingOpt = Annotated[
    Optional[str],
    typer.Option("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<output-dir>/mlflow.db)."),
]
JobsOpt = Annotated[
    int,
    typer.Option("--jobs", "-j", help="Runs trained in parallel processes (torch threads per process: cores // jobs)."),
]
PopulationOpt = Annotated[
    str,
    typer.Option(
        "--population",
        help="Seeds of one recipe trained together in one process, each still its own run: auto (for completions of "
        "up to 16 tokens, up to 8 seeds as memory allows, where the recipe can), off, or the most per population.",
    ),
]
ThresholdOpt = Annotated[
    Optional[float],
    typer.Option(
        "--threshold",
        help="Accuracy for 'steps to threshold' (default: halfway from the start to the best final mean).",
    ),
]
ReportDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--report-dir", help="Folder for the table files, figure and report.md (default: under --output-dir)."
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")]
IntervalOpt = Annotated[
    str,
    typer.Option(
        "--interval",
        help="Intervals of the main table: t (Student-t over seeds) or bootstrap (stratified bootstrap over runs).",
    ),
]
SearchOpt = Annotated[str | None, typer.Option("--search", help="An Optuna search, not the grid: tpe, random or grid.")]
TrialsOpt = Annotated[int | None, typer.Option("--trials", help="Trials (default: sweep.trials, grid size, else 20).")]
SpaceOpt = Annotated[list[str] | None, typer.Option("--space", help="A searched range: key=low:high[:log].")]
PrunerOpt = Annotated[str | None, typer.Option("--pruner", help="Pruning on the eval accuracy: median, halving, none.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show Python tracebacks.")]

INTERRUPTED_HINT = (
    "re-run the same command to continue (finished runs are reused; interrupted and missing ones are trained)"
)


def register(app: typer.Typer) -> None:
    """Add `eval`, `compare` and `sweep` to the `sspo` app."""
    app.command("eval")(eval_command)
    app.command("compare")(compare_command)
    app.command("sweep")(sweep_command)


# --------------------------------------------------------------------------- eval


def eval_command(
    target: Annotated[
        str, typer.Argument(help="A run folder, a checkpoint folder, or an MLflow run id.", show_default=False)
    ],
    split: Annotated[str, typer.Option(help="Task split: eval (held out), dev or train.")] = "eval",
    size: Annotated[
        Optional[int], typer.Option(help="Evaluate the first N examples of the split (default: all).")
    ] = None,
    samples: Annotated[
        int, typer.Option("--samples", "-n", help="Samples per prompt; above 1 reports pass@k (unbiased estimator).")
    ] = 1,
    k: Annotated[
        Optional[str],
        typer.Option("--k", help="pass@k values to report, e.g. 1,4 (default: 1, powers of two, and --samples)."),
    ] = None,
    temperature: Annotated[
        Optional[float],
        typer.Option(
            help="Sample at this temperature (default: greedy; with --samples, the recipe's rollout temperature)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    task: Annotated[
        Optional[str],
        typer.Option(help="Evaluate on another task: a task name or a YAML file (a task mapping or a recipe)."),
    ] = None,
    set_: SetOpt = None,
    recipe: Annotated[
        Optional[Path], typer.Option(help="Recipe for a checkpoint folder that is not inside a run folder.")
    ] = None,
    batch_size: Annotated[
        Optional[int], typer.Option(help="Completions per generation batch (default: recipe eval.batch_size).")
    ] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option(help="Longest completion (default: the recipe's).")] = None,
    device: Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:1 ... (default: the recipe's).")] = None,
    output_dir: OutputOpt = Path("runs"),
    tracking_uri: TrackingOpt = None,
    no_track: Annotated[bool, typer.Option("--no-track", help="Do not log to MLflow.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Evaluate a trained policy: greedy accuracy, or pass@k from sampled completions."""

    def action() -> None:
        from rich.markup import escape

        from sspo_cli.research.execution.evaluation import (
            EvalOptions,
            eval_recipe,
            evaluate_target,
            report_rows,
            resolve_target,
            save_and_log,
        )
        from sspo_cli.research.reporting.tables import eval_table, print_table
        from sspo_cli.run.report import console

        options = EvalOptions(
            split, size, samples, temperature, _int_list(k, "--k"), seed, batch_size, max_new_tokens, device
        )
        resolved_target = resolve_target(target, tracking_uri, output_dir)
        resolved_recipe = eval_recipe(resolved_target, recipe, task, set_ or [])
        report = evaluate_target(target, resolved_target, resolved_recipe, options)
        report = save_and_log(
            report, resolved_target, resolved_recipe, options, output_dir, tracking_uri, track=not no_track
        )
        rows = report_rows(report)
        print_table(console, eval_table(rows))
        console.print(f"[dim]{escape(rows['caption'])}[/dim]")
        if report.eval_run_id:
            parent = f", nested under the trained run {report.run_id}" if report.run_id else ""
            console.print(f"MLflow run {report.eval_run_id}{parent}", soft_wrap=True)
        console.print(f"results: {report.file}", soft_wrap=True)

    guarded(debug, action, interrupted_hint=INTERRUPTED_HINT)


def _int_list(text: str | None, option: str) -> list[int] | None:
    from sspo_cli.research import ResearchError

    if not text:
        return None
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ResearchError(option, f"{text!r}: expected integers separated by commas") from None


# --------------------------------------------------------------------------- compare


def compare_command(
    args: Annotated[
        Optional[list[str]],
        typer.Argument(
            help="RECIPE to train and compare, or with --runs: the MLflow run ids to compare.",
            metavar="RECIPE | RUN_ID...",
            show_default=False,
        ),
    ] = None,
    methods: Annotated[
        Optional[str],
        typer.Option(
            help="Comma-separated objectives or named variants (from --variants); default: every objective.",
            show_default=False,
        ),
    ] = None,
    seeds: Annotated[
        Optional[int],
        typer.Option(help="Seeds per method: the recipe's seed, +1, ... (default: the compare section's, else 3)."),
    ] = None,
    grid: Annotated[
        Optional[list[str]],
        typer.Option(
            "--grid",
            "-g",
            help="dotted.key=v1,v2,... (repeatable): a study, the whole comparison at every point of the grid.",
        ),
    ] = None,
    variants: Annotated[
        Optional[Path],
        typer.Option(help="YAML of named method variants (default: variants.yaml next to the recipe, if any)."),
    ] = None,
    set_: SetOpt = None,
    experiment: Annotated[
        Optional[str], typer.Option(help="Compare the FINISHED runs of this MLflow experiment instead of training.")
    ] = None,
    runs: Annotated[
        bool, typer.Option("--runs", help="The arguments are MLflow run ids to compare (nothing is trained).")
    ] = False,
    group_by: Annotated[
        Optional[str], typer.Option(help="Tag that groups existing runs (default: sspo.method, else sspo.objective).")
    ] = None,
    metric: Annotated[
        Optional[str],
        typer.Option(
            help="What the statistics lead with: final_accuracy (exact answers) or final_reward (the task's held-out "
            "mean reward, which moves before exact answers do). Default: the compare section's, else final_accuracy.",
            show_default=False,
        ),
    ] = None,
    jobs: JobsOpt = 1,
    population: PopulationOpt = "auto",
    threshold: ThresholdOpt = None,
    interval: IntervalOpt = "t",
    output_dir: OutputOpt = Path("runs"),
    tracking_uri: TrackingOpt = None,
    report_dir: ReportDirOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Compare methods over seeds: a table with 95% CIs, IQM and probability of improvement with bootstrap CIs,
    paired differences over the held-out problems, learning curves, CSV/JSON and report.md. With --grid (or a
    `compare: {grid: ...}` section in the recipe): the comparison at every grid point, and a study table and
    figure against the grid.

    Runs whose resolved recipe matches a FINISHED run are reused, not trained again.
    """

    def action() -> None:
        from sspo_cli.research import ResearchError
        from sspo_cli.research.analysis.conclusions import HEADLINE_METRIC
        from sspo_cli.research.compare import (
            CompareOptions,
            check_headline,
            compare_existing,
            read_compare_section,
            run_comparison,
        )
        from sspo_cli.research.reporting.progress import RichWorkflowProgress
        from sspo_cli.research.study import run_study, study_axes
        from sspo_cli.research.workflow import WorkflowOptions
        from sspo_cli.run.report import console

        positional = args or []
        from sspo_cli.research.execution.units import parse_population

        members = parse_population(population)
        options = WorkflowOptions(output_dir, tracking_uri, jobs, threshold, report_dir, interval, population=members)
        if runs or experiment:
            if experiment and (runs or positional):
                raise ResearchError("--experiment", "give either --experiment NAME or --runs ID ..., not both")
            if runs and not positional:
                raise ResearchError("--runs", "name at least one run id")
            if grid:
                raise ResearchError("--grid", "a study trains its runs: give a RECIPE, not --experiment or --runs")
            headline = check_headline(metric or HEADLINE_METRIC)
            _render_comparison(compare_existing(experiment, positional, options, group_by, headline))
            return
        if len(positional) != 1:
            raise ResearchError("RECIPE", "give one recipe file (or --experiment NAME, or --runs ID ...)")
        recipe = Path(positional[0])
        section = read_compare_section(recipe)
        methods_spec = methods or (",".join(section.methods) if section.methods else None)
        headline = check_headline(metric or section.metric)
        compare = CompareOptions(methods_spec, seeds if seeds is not None else section.seeds, variants, headline)
        axes = study_axes(grid or [], section.grid)
        with RichWorkflowProgress(console, quiet) as progress:
            options = replace(options, observer=progress)
            if axes:
                study = run_study(recipe, set_ or [], compare, axes, options)
            else:
                result = run_comparison(recipe, set_ or [], compare, options)
        if axes:
            _render_study(study)
        else:
            _render_comparison(result)

    guarded(debug, action, interrupted_hint=INTERRUPTED_HINT)


def _render_comparison(result) -> None:
    from sspo_cli.research.reporting.statistics_text import statistics_tables
    from sspo_cli.research.reporting.tables import comparison_table, print_table, text_table
    from sspo_cli.run.report import console

    print_table(console, comparison_table(result.summaries, result.threshold, result.title, method=result.interval))
    if result.inference is not None:
        for table in statistics_tables(result.inference):
            print_table(console, text_table(table))
        for note in result.inference.notes:
            console.print(f"[yellow]note[/yellow] {note}", highlight=False, soft_wrap=True)
    _render_footer(result)


def _render_study(study) -> None:
    """The table of every point, the separations found, where each point's comparison is."""
    from rich.markup import escape

    from sspo_cli.research.reporting.tables import print_table, text_table
    from sspo_cli.research.study import study_table
    from sspo_cli.run.report import console

    table = study_table(study.plan, study.points)
    print_table(console, text_table(table))
    for line in study.separations or ["no pair of methods separated at any point (see report.md for the rules)"]:
        console.print(f"[yellow]separation[/yellow] {escape(line)}", highlight=False, soft_wrap=True)
    _render_failures(study.failed)
    console.print(f"outputs: {study.out_dir}  ({', '.join(p.name for p in study.files.values())})", soft_wrap=True)
    console.print(f"MLflow study run {study.parent_run_id}; each point is a nested comparison run", highlight=False)
    _render_timing(study.timing)
    _exit_if_failed(study.failed)


def _render_footer(result) -> None:
    _render_failures(result.failed)
    _render_where(result)
    _exit_if_failed(result.failed)


def _exit_if_failed(failed) -> None:
    from sspo_cli.run.report import console

    if failed:
        console.print("[yellow]re-run the same command to retry the failed runs; finished ones are reused[/yellow]")
        raise typer.Exit(EXIT_FAILED)


def _render_where(result) -> None:
    """Where the outputs and the MLflow runs are, and where the time went."""
    from sspo_cli.research.execution.store import membership_filter
    from sspo_cli.run.report import console

    console.print(f"outputs: {result.out_dir}  ({', '.join(p.name for p in result.files.values())})", soft_wrap=True)
    console.print(
        f"MLflow parent run {result.parent_run_id}; runs side by side: {membership_filter(result.group_id)}",
        highlight=False,
        soft_wrap=True,
    )
    _render_timing(result.timing)


def _render_failures(outcomes) -> None:
    from rich.markup import escape

    from sspo_cli.run.report import console

    for outcome in outcomes:
        console.print(
            f"[red]{outcome.state}[/red] {outcome.planned.display_name}: {escape(outcome.error or '')}",
            highlight=False,
            soft_wrap=True,
        )


def _render_timing(timing) -> None:
    from sspo_cli.research.execution.timing import SHARED_WARM_START
    from sspo_cli.run.report import console

    shared = timing["phases"].get(SHARED_WARM_START)
    runs = timing.get("runs_trained")
    console.print(
        f"[dim]time {timing['total_seconds']:.1f}s: training {timing['training_seconds']:.1f}s"
        + (f" (of which the shared warm start {shared:.1f}s)" if shared else "")
        + f", workflow overhead {timing['overhead_seconds']:.2f}s ({timing['overhead_fraction']:.1%})"
        + (f"; {runs} runs trained, {timing['runs_per_hour']:.1f} per hour" if runs is not None else "")
        + "[/dim]"
    )


# --------------------------------------------------------------------------- sweep


def sweep_command(
    recipe: Annotated[
        Path,
        typer.Argument(
            help="Recipe YAML file (may hold a `sweep:` section with grid, seeds, metric).", show_default=False
        ),
    ],
    grid: Annotated[
        Optional[list[str]],
        typer.Option("--grid", "-g", help="dotted.key=v1,v2,... (repeatable; the cartesian product is swept)."),
    ] = None,
    search: SearchOpt = None,
    trials: TrialsOpt = None,
    space: SpaceOpt = None,
    pruner: PrunerOpt = None,
    seeds: Annotated[
        Optional[int], typer.Option(help="Seeds per grid point (default: the sweep section's, else 1).")
    ] = None,
    metric: Annotated[
        Optional[str], typer.Option(help="Leaderboard and heatmap metric (default: final_accuracy).")
    ] = None,
    set_: SetOpt = None,
    jobs: JobsOpt = 1,
    population: PopulationOpt = "auto",
    threshold: ThresholdOpt = None,
    interval: IntervalOpt = "t",
    output_dir: OutputOpt = Path("runs"),
    tracking_uri: TrackingOpt = None,
    report_dir: ReportDirOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Sweep a grid of recipe values over seeds (finished points are skipped), with a leaderboard and heatmap; or,
    with --search, an Optuna study (TPE, random or grid) pruned on the eval accuracy, resumable from its SQLite."""

    def action() -> None:
        from sspo_cli.research.execution.units import parse_population
        from sspo_cli.research.reporting.progress import RichWorkflowProgress
        from sspo_cli.research.workflow import WorkflowOptions
        from sspo_cli.run.report import console

        members = parse_population(population)
        options = WorkflowOptions(output_dir, tracking_uri, jobs, threshold, report_dir, interval, population=members)
        if search is None and not section_searches(recipe):
            from sspo_cli.research.reporting.tables import leaderboard_table, print_table
            from sspo_cli.research.sweep import SweepOptions, run_sweep

            check_grid_only(space, trials, pruner)
            with RichWorkflowProgress(console, quiet) as progress:
                sweep = SweepOptions(grid or (), seeds, metric)
                result = run_sweep(recipe, set_ or [], sweep, replace(options, observer=progress))
            table = leaderboard_table(result.ranked, result.metric, result.title, result.failures, result.interval)
            print_table(console, table)
            _render_footer(result)
            return
        from sspo_cli.research.search import SearchOptions, run_search

        with RichWorkflowProgress(console, quiet) as progress:
            search_options = SearchOptions(search, trials, space or (), grid or (), seeds, metric, pruner)
            result = run_search(recipe, set_ or [], search_options, replace(options, observer=progress))
        _render_search(result)

    guarded(debug, action, interrupted_hint=INTERRUPTED_HINT)


def section_searches(recipe: Path) -> bool:
    """Whether the recipe's sweep section asks for a search (unreadable files are left for the sweep to report)."""
    from sspo_cli.recipe import RecipeError
    from sspo_cli.research.planning.recipe_files import read_recipe_file

    try:
        _, section = read_recipe_file(recipe)
    except RecipeError:
        return False
    return isinstance(section, dict) and section.get("search") is not None


def check_grid_only(space: list[str] | None, trials: int | None, pruner: str | None) -> None:
    from sspo_cli.research import ResearchError

    for option, value in (("--space", space), ("--trials", trials), ("--pruner", pruner)):
        if value:
            raise ResearchError(option, "belongs to a search: add --search tpe, random or grid")


def _render_search(result) -> None:
    from rich.markup import escape

    from sspo_cli.research.reporting.search_report import trials_table
    from sspo_cli.research.reporting.tables import print_table, text_table
    from sspo_cli.run.report import console

    print_table(console, text_table(trials_table(result)))
    for note in result.notes:
        console.print(f"[yellow]note[/yellow] {escape(note)}", highlight=False, soft_wrap=True)
    for trial in result.failed_now:
        console.print(
            f"[red]failed[/red] trial {trial.number}: {escape(trial.user_attrs.get('error') or 'failed')}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(f"Optuna study {result.plan.study_name} in {result.storage}", highlight=False, soft_wrap=True)
    _render_where(result)
    if result.failed_now:
        console.print(
            "[yellow]re-run the same command to retry the failed trials; finished ones stay in the study[/yellow]"
        )
        raise typer.Exit(EXIT_FAILED)
