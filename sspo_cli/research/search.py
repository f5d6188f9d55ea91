"""`sspo sweep --search tpe|random|grid`: an Optuna study over recipe keys, pruned on the held-out accuracy.

The study lives in the output folder's SQLite (`<output-dir>/optuna.db`), so a search that stops
(Ctrl-C, a killed process) continues where it was when the same command runs again: finished and
pruned trials stay, an interrupted one is queued again with its parameters, and a run
that had already finished is reused by its recipe fingerprint, never trained twice. Each trial
trains its seeds one after the other, reporting every eval's accuracy to the trial; a pruned trial
stops its run at that eval (the MLflow run ends KILLED, tagged `sspo.trial_state=PRUNED`). Every
run is nested under the search's MLflow parent run. With `--jobs N`, N trials run at once, each in
its own process, and report to the study through its SQLite store.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.engines.dispatch import run_training
from sspo_cli.recipe import Recipe, recipe_from_dict
from sspo_cli.research import ResearchError
from sspo_cli.research.analysis.measures import metric_spec, run_metrics
from sspo_cli.research.execution.execute import (
    Outcome,
    WorkflowObserver,
    describe_failure,
    init_worker,
    interrupt_workers,
    prewarm,
    quiet_library_progress_bars,
    run_tags,
    threads_per_job,
)
from sspo_cli.research.execution.readback import record_from_mlflow, record_from_run_dir
from sspo_cli.research.execution.store import finished_runs_by_fingerprint
from sspo_cli.research.execution.timing import TRAINING, PhaseTimer
from sspo_cli.research.planning.grid import grid_axis, parse_grid_option
from sspo_cli.research.planning.plan import PlannedRun
from sspo_cli.research.planning.recipe_files import read_recipe_file
from sspo_cli.research.planning.search_plan import SearchPlan
from sspo_cli.research.planning.space import (
    SpaceParam,
    merge_space,
    parse_space_option,
    validated_space,
)
from sspo_cli.research.reporting.search_report import SearchResult, search_figures, write_search_files
from sspo_cli.research.sweep import read_sweep_section
from sspo_cli.research.workflow import GroupRun, Session, Workflow, WorkflowOptions, run_workflow
from sspo_cli.run.folder import CheckpointError, RunLock, read_run_folder
from sspo_cli.run.state import RunOptions, TrainingObserver
from sspo_cli.run.tracking import open_client

if TYPE_CHECKING:
    import optuna

SEARCH_STRATEGIES = ("tpe", "random", "grid")
PRUNERS = ("median", "halving", "none")
DEFAULT_PRUNER = "median"
DEFAULT_TRIALS = 20
PRUNABLE_METRICS = ("final_accuracy", "best_accuracy")  # what the reported eval accuracy stands for
STUDY_FILE = "optuna.db"
TRIAL_STATE_TAG = "sspo.trial_state"
HALVING_REDUCTION = 3
SQLITE_TIMEOUT_S = 120


@dataclass(frozen=True)
class SearchOptions:
    """What the command line sets on top of the recipe's sweep section (None or empty: the section's value)."""

    strategy: str | None = None
    trials: int | None = None
    space: Sequence[str] = ()  # --space key=low:high[:log]
    grid: Sequence[str] = ()  # --grid key=v1,v2: choices
    seeds: int | None = None
    metric: str | None = None
    pruner: str | None = None


def plan_search(
    recipe_path: Path, overrides: Sequence[str], options: SearchOptions, threshold: float | None = None
) -> SearchPlan:
    """The study's settings from the recipe's sweep section and the options (options win), all checked;
    `threshold` (--threshold) is what steps_to_threshold counts to."""
    base_data, section_data = read_recipe_file(recipe_path)
    section = read_sweep_section(section_data, str(recipe_path))
    strategy = choose("--search", options.strategy or section.search, SEARCH_STRATEGIES)
    pruner = choose("--pruner", options.pruner or section.pruner or DEFAULT_PRUNER, PRUNERS)
    file_grid = [grid_axis(key, values, "sweep.grid") for key, values in section.grid.items()]
    cli_space = [parse_space_option(text) for text in options.space]
    space = merge_space(section.space, file_grid, [parse_grid_option(text) for text in options.grid], cli_space)
    if not space:
        raise ResearchError(
            "--space", "no search space: give --space key=low:high, --grid key=v1,v2 or a `sweep: {space: ...}` section"
        )
    if strategy == "grid":
        ranges = [key for key, param in space.items() if param.choices is None]
        if ranges:
            raise ResearchError(
                "--search",
                f"grid search needs values, not ranges ({', '.join(ranges)}): "
                "give them with --grid, or use tpe or random",
            )
    metric = options.metric or section.metric
    check_metric(metric, pruner, threshold)
    seeds = options.seeds if options.seeds is not None else section.seeds
    if seeds < 1:
        raise ResearchError("--seeds", f"must be at least 1, got {seeds}")
    base = recipe_from_data(base_data, overrides, recipe_path)
    space = validated_space(space, base_data, overrides, base.seed, recipe_path)
    default_trials = section.trials or (grid_size(space) if strategy == "grid" else DEFAULT_TRIALS)
    trials = options.trials if options.trials is not None else default_trials
    if trials < 1:
        raise ResearchError("--trials", f"must be at least 1, got {trials}")
    return SearchPlan(
        recipe_path,
        list(overrides),
        base_data,
        base,
        space,
        strategy,
        pruner,
        trials,
        seeds,
        metric,
        math.nan if threshold is None else threshold,
    )


def choose(option: str, value: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ResearchError(option, f"unknown value {value!r} (choose from {', '.join(allowed)})")
    return value


def check_metric(metric: str, pruner: str, threshold: float | None) -> None:
    spec = metric_spec(metric)
    if spec.better is None:
        raise ResearchError(
            "--metric", f"{metric} has no direction (neither higher nor lower is better): it cannot be optimised"
        )
    if pruner != "none" and metric not in PRUNABLE_METRICS:
        raise ResearchError(
            "--pruner",
            f"pruning compares the eval accuracy during training, so it needs --metric "
            f"{' or '.join(PRUNABLE_METRICS)}; give --pruner none to search {metric}",
        )
    if metric == "steps_to_threshold" and threshold is None:
        raise ResearchError("--threshold", "searching steps_to_threshold needs --threshold (the accuracy to reach)")


def recipe_from_data(base_data: dict[str, Any], overrides: Sequence[str], recipe_path: Path) -> Recipe:
    return recipe_from_dict(base_data, list(overrides), str(recipe_path))


def grid_size(space: dict[str, SpaceParam]) -> int:
    return math.prod(len(param.choices or ()) for param in space.values())


# --------------------------------------------------------------------------- Optuna pieces


def study_storage(output_dir: Path) -> optuna.storages.RDBStorage:
    """The output folder's SQLite; writers wait for each other (workers report from several processes)."""
    import threading

    import optuna

    class SerialStateStorage(optuna.storages.RDBStorage):
        """SQLite has no SELECT ... FOR UPDATE: two threads popping the same WAITING trial could both take it
        (optuna/optuna#4621). The search's threads change trial states one at a time."""

        lock = threading.Lock()

        def set_trial_state_values(self, trial_id: int, state: Any, values: Any = None) -> bool:
            with self.lock:
                return super().set_trial_state_values(trial_id, state, values)

    url = f"sqlite:///{(output_dir / STUDY_FILE).resolve()}"
    return SerialStateStorage(url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})


def make_pruner(name: str, first_eval_step: int) -> optuna.pruners.BasePruner:
    """median: Optuna's MedianPruner (its defaults: no pruning in the first 5 trials); halving: successive
    halving with rungs at the first eval step times 3^k; none: never prune."""
    import optuna

    pruners = {
        "median": lambda: optuna.pruners.MedianPruner(),
        "halving": lambda: optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first_eval_step, reduction_factor=HALVING_REDUCTION
        ),
        "none": lambda: optuna.pruners.NopPruner(),
    }
    return pruners[name]()


def make_sampler(plan: SearchPlan, existing_trials: int) -> optuna.samplers.BaseSampler:
    """Seeded from the recipe's seed, plus the trials the study already has (a resumed random search
    does not draw its first points again); the grid keeps its order whatever has run."""
    import optuna

    seed = plan.base.seed + existing_trials
    samplers = {
        # Random points first, then TPE: a third of the budget (Optuna's 10 at most) guides small searches too.
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, plan.trials // 3))),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "grid": lambda: optuna.samplers.GridSampler(
            {key: list(p.choices or ()) for key, p in plan.space.items()}, seed=plan.base.seed
        ),
    }
    return samplers[plan.strategy]()


def open_study(plan: SearchPlan, output_dir: Path) -> optuna.Study:
    import optuna

    storage = study_storage(output_dir)
    study = optuna.create_study(
        storage=storage, study_name=plan.study_name, direction=plan.direction, load_if_exists=True
    )
    study.sampler = make_sampler(plan, len(study.trials))
    study.pruner = make_pruner(plan.pruner, plan.base.eval.every)
    return study


def recover_interrupted_trials(study: optuna.Study) -> int:
    """Trials still RUNNING belong to a process that died (this search holds the study's lock): FAIL them.
    Every FAIL trial not retried yet gets a WAITING copy with its parameters, which runs first.
    Returns how many were queued again."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    for trial in failed:
        requeue(study, trial)
    return len(failed)


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """A WAITING copy of a trial, with its parameters and sampler bookkeeping (a grid point keeps its id);
    `retry_history` lists the trials it retries, as Optuna's own retry callbacks record it."""
    import optuna

    history = [*trial.system_attrs.get("retry_history", []), trial.number]
    system_attrs = {**trial.system_attrs, "failed_trial": trial.number, "retry_history": history}
    label = {"label": trial.user_attrs["label"]} if "label" in trial.user_attrs else {}
    waiting = optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING,
        params=trial.params,
        distributions=trial.distributions,
        user_attrs=label,
        system_attrs=system_attrs,
    )
    study.add_trial(waiting)


def finished_count(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


# --------------------------------------------------------------------------- one trial


class TrialStopped(KeyboardInterrupt):
    """Raised from the eval callback when the trial is pruned; the trainer ends the run KILLED, like a stop."""

    def __init__(self, step: int):
        self.step = step
        super().__init__(f"pruned at step {step}")


class PruningObserver(TrainingObserver):
    """Forwards the training's progress and reports each eval's accuracy to the trial; stops a pruned trial.

    Reports go at `offset + step`, so that the seeds of one trial follow each other on one axis and
    each seed is compared with the same seed of the other trials.
    """

    def __init__(self, trial: optuna.Trial, offset: int, inner: TrainingObserver | None):
        self.trial = trial
        self.offset = offset
        self.inner = inner or TrainingObserver()
        self.run_dir: Path | None = None

    def on_phase(self, message: str) -> None:
        self.inner.on_phase(message)

    def on_warm_start(self, step: int, total: int, dev_accuracy: float | None) -> None:
        self.inner.on_warm_start(step, total, dev_accuracy)

    def on_start(self, total_steps: int, run_name: str, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.inner.on_start(total_steps, run_name, run_dir)

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.on_step(step, metrics)

    def on_warning(self, message: str) -> None:
        self.inner.on_warning(message)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.inner.on_eval(step, metrics)
        if step == 0:  # the eval before RL says nothing about the searched settings
            return
        self.trial.report(metrics["eval/accuracy"], self.offset + step)
        if self.trial.should_prune():
            raise TrialStopped(step)


@dataclass(frozen=True)
class TrialSetting:
    """What a trial needs to train its runs, in a form a worker process can receive."""

    output_dir: str
    tracking_uri: str
    parent_run_id: str
    group_id: str
    metric: str
    threshold: float
    steps: int


@dataclass
class TrialRun:
    """One run of a trial, as the trial reports it (plain data: it crosses process boundaries)."""

    display_name: str
    group: str
    seed: int
    state: str  # reused, trained, pruned, failed
    run_id: str | None = None
    run_dir: str | None = None
    error: str | None = None
    seconds: float = 0.0
    value: float = math.nan


@dataclass
class TrialResult:
    runs: list[TrialRun] = field(default_factory=list)
    pruned_at: int | None = None
    error: str | None = None
    interrupted: bool = False

    def value(self) -> float:
        values = [r.value for r in self.runs if math.isfinite(r.value)]
        return sum(values) / len(values) if values else math.nan


def train_trial(
    trial: optuna.Trial, runs: Sequence[PlannedRun], setting: TrialSetting, observer: TrainingObserver | None
) -> TrialResult:
    """Train (or reuse) the trial's runs one after the other, reporting every eval; stop at a prune or a failure."""
    client = open_client(setting.tracking_uri)
    finished = finished_runs_by_fingerprint(client, {runs[0].recipe.tracking.experiment})
    result = TrialResult()
    for index, planned in enumerate(runs):
        offset = index * setting.steps
        begin = time.perf_counter()
        reused = finished.get(planned.fingerprint)
        if reused is not None:
            result.runs.append(reused_run(client, reused, planned, trial, offset, setting))
            continue
        pruning = PruningObserver(trial, offset, observer)
        tags = {**run_tags(planned, setting.group_id), TRIAL_STATE_TAG: "RUNNING"}
        try:
            options = RunOptions(setting.output_dir, setting.tracking_uri, pruning, setting.parent_run_id, tags)
            summary = run_training(planned.recipe, options)
        except TrialStopped as stop:
            result.runs.append(pruned_run(client, planned, pruning.run_dir, stop.step, time.perf_counter() - begin))
            result.pruned_at = offset + stop.step
            return result
        except Exception as exc:  # noqa: BLE001 - a failing run fails its trial, not the search
            result.runs.append(
                TrialRun(planned.display_name, planned.group, planned.seed, "failed", error=describe_failure(exc))
            )
            result.error = describe_failure(exc)
            return result
        client.update_run(summary["run_id"], name=planned.display_name)
        value = run_value(summary["run_dir"], planned, setting)
        seconds = time.perf_counter() - begin
        result.runs.append(
            TrialRun(
                planned.display_name,
                planned.group,
                planned.seed,
                "trained",
                summary["run_id"],
                summary["run_dir"],
                None,
                seconds,
                value,
            )
        )
    for run in result.runs:
        if run.run_id:
            client.set_tag(run.run_id, TRIAL_STATE_TAG, "COMPLETE")
    return result


def run_value(run_dir: str, planned: PlannedRun, setting: TrialSetting) -> float:
    return run_metrics(record_from_run_dir(run_dir, planned.group), setting.threshold)[setting.metric]


def reused_run(
    client: Any, run: Any, planned: PlannedRun, trial: optuna.Trial, offset: int, setting: TrialSetting
) -> TrialRun:
    """A run that finished before (same recipe): its evals are reported as if it had just trained."""
    record = record_from_mlflow(client, run, planned.group, reused=True)
    for step, accuracy in zip(record.curves.eval_steps, record.curves.eval_accuracy):
        if step > 0:
            trial.report(accuracy, offset + step)
    value = run_metrics(record, setting.threshold)[setting.metric]
    return TrialRun(
        planned.display_name, planned.group, planned.seed, "reused", run.info.run_id, record.run_dir, value=value
    )


def pruned_run(client: Any, planned: PlannedRun, run_dir: Path | None, step: int, seconds: float) -> TrialRun:
    """Tag the stopped run (the trainer has ended it KILLED) as pruned, and name it like the others."""
    run_id = read_run_folder(run_dir).run_id if run_dir is not None else None
    if run_id:
        client.set_tag(run_id, TRIAL_STATE_TAG, "PRUNED")
        client.set_tag(run_id, "sspo.pruned_at_step", str(step))
        client.update_run(run_id, name=planned.display_name)
    return TrialRun(
        planned.display_name,
        planned.group,
        planned.seed,
        "pruned",
        run_id,
        str(run_dir) if run_dir else None,
        f"pruned at step {step}",
        seconds,
    )


def train_trial_in_worker(
    study_name: str,
    output_dir: str,
    pruner: str,
    first_eval_step: int,
    trial_id: int,
    recipes: list[dict[str, Any]],
    planned: list[dict[str, Any]],
    setting: TrialSetting,
) -> TrialResult:
    """In a worker process: the trial, rebuilt from the study's SQLite, trains there; errors come back as text."""
    import optuna
    import optuna.trial

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(
        study_name=study_name, storage=study_storage(Path(output_dir)), pruner=make_pruner(pruner, first_eval_step)
    )
    trial = optuna.trial.Trial(study, trial_id)
    runs = [
        PlannedRun(p["group"], p["seed"], Recipe.model_validate(r), p["display_name"], p["tags"])
        for p, r in zip(planned, recipes)
    ]
    try:
        return train_trial(trial, runs, setting, None)
    except KeyboardInterrupt as exc:  # stopped on a forwarded SIGINT, after a checkpoint
        return TrialResult(error=f"interrupted ({describe_failure(exc)})", interrupted=True)
    except Exception as exc:  # noqa: BLE001 - the text crosses the process boundary, the exception may not
        return TrialResult(error=describe_failure(exc))


# --------------------------------------------------------------------------- the study


class TrialFailed(Exception):
    """A trial whose run failed: Optuna records it FAIL and the search goes on."""


@dataclass
class SearchContext:
    plan: SearchPlan
    setting: TrialSetting
    study_name: str
    output_dir: Path
    observer: WorkflowObserver
    pool: Any = None  # a process pool with --jobs > 1


def make_objective(ctx: SearchContext):
    import optuna

    def objective(trial: optuna.Trial) -> float:
        try:
            return trial_value(ctx, trial)
        except (TrialFailed, optuna.TrialPruned):
            raise
        except Exception as exc:  # anything else fails this trial only (and, with threads, would go unseen)
            trial.set_user_attr("error", describe_failure(exc))
            raise TrialFailed(describe_failure(exc)) from exc

    return objective


def trial_value(ctx: SearchContext, trial: optuna.Trial) -> float:
    """Train the trial's runs; its value, or TrialPruned, TrialFailed, KeyboardInterrupt."""
    import optuna

    params = {key: param.suggest(trial, key) for key, param in ctx.plan.space.items()}
    runs = ctx.plan.runs_for(params, trial.number)
    trial.set_user_attr("label", runs[0].group)
    for planned in runs:
        ctx.observer.on_run_start(planned)
    result = run_trial(ctx, trial, runs)
    for run, planned in zip(result.runs, runs):
        ctx.observer.on_run_end(
            Outcome(planned, run.state, run.run_id, run.run_dir, run.error, run.seconds, run.display_name)
        )
    trial.set_user_attr("runs", [asdict(run) for run in result.runs])
    if result.interrupted:
        raise KeyboardInterrupt
    if result.error:
        trial.set_user_attr("error", result.error)
        raise TrialFailed(result.error)
    if result.pruned_at is not None:
        raise optuna.TrialPruned(f"pruned at step {result.pruned_at}")
    value = result.value()
    if not math.isfinite(value):
        trial.set_user_attr("error", f"{ctx.plan.metric} is undefined for this trial's runs")
        raise TrialFailed(f"{ctx.plan.metric} undefined")
    return value


def run_trial(ctx: SearchContext, trial: optuna.Trial, runs: list[PlannedRun]) -> TrialResult:
    if ctx.pool is None:
        return train_trial(trial, runs, ctx.setting, ctx.observer.training_observer())
    planned = [{"group": p.group, "seed": p.seed, "display_name": p.display_name, "tags": p.tags} for p in runs]
    recipes = [p.recipe.resolved() for p in runs]
    args = (
        ctx.study_name,
        str(ctx.output_dir),
        ctx.plan.pruner,
        ctx.plan.base.eval.every,
        trial._trial_id,
        recipes,
        planned,
        ctx.setting,
    )
    try:
        return ctx.pool.submit(train_trial_in_worker, *args).result()
    except Exception as exc:  # noqa: BLE001 - the worker died (killed, out of memory): only this trial fails
        return TrialResult(error=describe_failure(exc))


@contextlib.contextmanager
def worker_pool(jobs: int) -> Iterator[Any]:
    """Spawned worker processes for --jobs > 1 (None for one job: trials then train in this process).

    Ctrl-C or SIGTERM reaches this process only (workers have their own process group): it forwards
    SIGINT to every worker (finish the step, checkpoint, stop) and stops the search; a second signal
    forwards a second SIGINT, which ends the workers at once.
    """
    if jobs <= 1:
        yield None
        return
    import multiprocessing
    import signal
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=init_worker,
        initargs=(threads_per_job(jobs),),
    )

    def forward(signum: int, frame: Any) -> None:
        interrupt_workers(pool)
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield pool
    finally:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@dataclass
class OpenStudy:
    """A search's study, open and locked for this process, before its remaining trials run."""

    plan: SearchPlan
    study: optuna.Study
    before: set[int]  # the trials it had already
    requeued: int  # interrupted or failed trials queued again
    remaining: int  # trials to run now


@dataclass(frozen=True)
class Search(Workflow[SearchPlan, SearchResult]):
    recipe: Path
    overrides: Sequence[str]
    search: SearchOptions

    def check(self, options: WorkflowOptions) -> None:
        """Nothing before planning: a search has no table intervals, and a bad plan leaves no folder behind."""

    def plan(self, options: WorkflowOptions) -> SearchPlan:
        return plan_search(self.recipe, self.overrides, self.search, options.threshold)

    def group(self, plan: SearchPlan, options: WorkflowOptions) -> GroupRun:
        out_dir = options.report_folder(plan.study_name)
        out_dir.mkdir(parents=True, exist_ok=True)
        params = {
            "recipe": str(self.recipe),
            "space": json.dumps({k: p.describe() for k, p in plan.space.items()}),
            "search": plan.strategy,
            "pruner": plan.pruner,
            "metric": plan.metric,
            "seeds": plan.seeds,
            "overrides": " ".join(self.overrides),
            "study": plan.study_name,
        }
        experiment, title = plan.base.tracking.experiment, search_title(plan)
        return GroupRun("search", plan.search_id, experiment, plan.study_name, params, title, out_dir)

    @contextlib.contextmanager
    def hold(self, plan: SearchPlan, options: WorkflowOptions, timer: PhaseTimer) -> Iterator[OpenStudy]:
        """The study, locked for this process before the group run opens, its interrupted trials queued again."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)  # the search reports trials itself
        with study_lock(options.report_folder(plan.study_name)):
            with timer.phase("study"):
                study = open_study(plan, options.output_dir)
                before = {t.number for t in study.trials}
                requeued = recover_interrupted_trials(study)
                remaining = max(0, plan.trials - finished_count(study))
            yield OpenStudy(plan, study, before, requeued, remaining)

    def conclude(self, held: OpenStudy, session: Session) -> SearchResult:
        run_trials(held, session)
        return finish_search(held, session)


def run_search(
    recipe_path: Path, overrides: Sequence[str], search: SearchOptions, options: WorkflowOptions
) -> SearchResult:
    """An Optuna study over the recipe's keys under one search run; resumes the study the same command left."""
    return run_workflow(Search(recipe_path, overrides, search), options)


def run_trials(held: OpenStudy, session: Session) -> None:
    """The remaining trials, `--jobs` at a time; each trial's runs nested under the search run."""
    plan, output_dir, jobs = held.plan, session.options.output_dir, session.options.jobs
    setting = TrialSetting(
        str(output_dir),
        session.tracking_uri,
        session.tracker.run_id,
        plan.search_id,
        plan.metric,
        plan.threshold,
        plan.base.train.steps,
    )
    observer = session.observer
    observer.on_plan(held.remaining * plan.seeds, 0, held.remaining * plan.seeds, jobs)
    if not held.remaining:
        return
    quiet_library_progress_bars()
    with session.timer.phase(TRAINING), worker_pool(jobs) as pool:
        if pool is not None:
            prewarm(plan.runs_for({}, 0)[:1], output_dir, observer.training_observer())
        ctx = SearchContext(plan, setting, plan.study_name, output_dir, observer, pool)
        held.study.optimize(make_objective(ctx), n_trials=held.remaining, n_jobs=jobs, catch=(TrialFailed,))


def search_title(plan: SearchPlan) -> str:
    space = ", ".join(f"{key} {param.describe()}" for key, param in plan.space.items())
    seeds = f"{plan.seeds} seed{'s' if plan.seeds > 1 else ''} per trial"
    settings = f"{plan.trials} trials, {seeds}, {plan.metric}, pruner {plan.pruner}"
    return f"{plan.strategy} search {plan.base.name}: {space}; {settings}"


@contextlib.contextmanager
def study_lock(out_dir: Path) -> Iterator[None]:
    """One process per study: a second would take the first one's running trials for dead ones."""
    try:
        with RunLock(out_dir):
            yield
    except CheckpointError:
        raise ResearchError(
            "--search", f"the search in {out_dir} is running in another process; stop it first or wait"
        ) from None


def finish_search(held: OpenStudy, session: Session) -> SearchResult:
    """The trials table, the figures, trials.csv, search.json and report.md; all logged on the parent run."""
    from optuna.trial import TrialState

    study, timer = held.study, session.timer
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = study.best_trial if complete else None
    failed_now = [t for t in trials if t.number not in held.before and t.state == TrialState.FAIL]
    requeued = held.requeued
    notes = [f"{requeued} interrupted or failed trial(s) queued again with the same parameters"] if requeued else []
    with timer.phase("plotting"):
        figures, figure_notes = search_figures(study, session.group.out_dir)
    result = SearchResult(
        **session.where({}, {}),
        plan=held.plan,
        trials=trials,
        best=best,
        failed_now=failed_now,
        storage=f"sqlite:///{(session.options.output_dir / STUDY_FILE).resolve()}",
        notes=notes + figure_notes,
    )
    with timer.phase("writing outputs"):
        result.files = write_search_files(result, figures, timer.report())
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    metrics = {f"search/{s.name.lower()}_trials": float(sum(t.state == s for t in trials)) for s in states}
    if best is not None:
        metrics["search/best_value"] = float(best.value)
    result.timing = session.close(result.files, not failed_now, metrics)
    return result
