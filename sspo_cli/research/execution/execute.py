"""Train a planned set of runs: reuse finished ones, train the rest in-process or in parallel processes.

A run is identified by its resolved recipe's fingerprint. A FINISHED MLflow run with the same
fingerprint is reused as is; anything else (never started, FAILED, KILLED, still marked
RUNNING after a crash) is trained again. One failing run is recorded and the others go on.
The runs to train go in units (`units.py`): the seeds of one recipe as a population where the engine
can train them together, each still an ordinary run; a population that fails trains its runs one by one.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sspo_cli.engines.dispatch import run_population, run_training
from sspo_cli.models import load_policy, set_offline_defaults
from sspo_cli.recipe import Recipe, stable_hash
from sspo_cli.research import ResearchError
from sspo_cli.research.execution.store import MEMBERSHIP_TAG, add_membership, finished_runs_by_fingerprint
from sspo_cli.research.execution.timing import SHARED_WARM_START, TRAINING, PhaseTimer
from sspo_cli.research.execution.units import training_units
from sspo_cli.research.planning.plan import PlannedRun
from sspo_cli.run.folder import ensure_writable
from sspo_cli.run.state import RunOptions, TrainingObserver
from sspo_cli.run.tracking import default_tracking_uri, open_client
from sspo_cli.run.warm_start import cached_warm_start, is_cached, warm_start_key
from sspo_cli.tasks import build_task

State = Literal["reused", "trained", "failed", "cancelled", "pruned"]


@dataclass
class Outcome:
    planned: PlannedRun
    state: State
    run_id: str | None = None
    run_dir: str | None = None
    error: str | None = None
    seconds: float = 0.0
    run_name: str | None = None

    @property
    def ok(self) -> bool:
        return self.state in ("reused", "trained")


class WorkflowObserver:
    """Receives the progress of a set of runs; the CLI renders it, tests ignore it."""

    def on_plan(self, total: int, reused: int, to_train: int, jobs: int) -> None: ...
    def on_populations(self, sizes: list[int]) -> None:
        """The runs to train go in populations of these sizes (the others one by one)."""

    def on_run_start(self, planned: PlannedRun) -> None: ...
    def on_run_end(self, outcome: Outcome) -> None: ...
    def on_run_progress(self, fingerprint: str, step: int, total: int) -> None:
        """RL steps done of a run training in a worker process (in-process runs report to `training_observer`)."""

    def training_observer(self) -> TrainingObserver | None:
        return None


@dataclass
class ExecutionContext:
    output_dir: Path
    tracking_uri: str
    group_id: str
    parent_run_id: str | None
    jobs: int = 1
    observer: WorkflowObserver = field(default_factory=WorkflowObserver)
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    population: int | None = None  # most members per population; None: auto (`units.auto_members`), 1: off


def check_jobs(jobs: int) -> None:
    """`--jobs`, checked before anything is planned or trained."""
    if jobs < 1:
        raise ResearchError("--jobs", f"must be at least 1, got {jobs}")


def tracking_store(output_dir: Path, tracking_uri: str | None) -> str:
    """The output dir (created here, once the plan holds); the tracking URI to use."""
    ensure_writable(output_dir)
    return tracking_uri or default_tracking_uri(output_dir)


def threads_per_job(jobs: int) -> int:
    """Torch threads per worker so that `jobs` workers do not oversubscribe the cores."""
    return max(1, available_cores() // max(jobs, 1))


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def execute(plan: Sequence[PlannedRun], ctx: ExecutionContext) -> list[Outcome]:
    """One outcome per planned run, in plan order."""
    with ctx.timer.phase("reuse check"):
        client = open_client(ctx.tracking_uri)
        finished = finished_runs_by_fingerprint(client, {p.recipe.tracking.experiment for p in plan})
    outcomes: dict[str, Outcome] = {}  # by fingerprint: identical recipes are trained once
    with ctx.timer.phase("membership tags"):
        for planned in plan:
            run = finished.get(planned.fingerprint)
            if run is not None and planned.fingerprint not in outcomes:
                outcomes[planned.fingerprint] = Outcome(
                    planned, "reused", run.info.run_id, run.data.tags.get("sspo.run_dir"), run_name=run.info.run_name
                )
                add_membership(client, run.info.run_id, run.data.tags.get(MEMBERSHIP_TAG), ctx.group_id)
    to_train = unique_by_fingerprint([p for p in plan if p.fingerprint not in outcomes])
    ctx.observer.on_plan(len(plan), len(outcomes), len(to_train), ctx.jobs)
    for outcome in outcomes.values():
        ctx.observer.on_run_end(outcome)
    try:
        if to_train:
            with ctx.timer.phase(TRAINING):
                units = training_units(to_train, ctx.population, ctx.jobs)
                populations = [len(unit) for unit in units if len(unit) > 1]
                if populations:
                    ctx.observer.on_populations(populations)
                if ctx.jobs <= 1 or len(units) <= 1:
                    run_sequentially(units, ctx, outcomes)
                else:
                    run_in_processes(units, ctx, outcomes)
    finally:
        for planned in to_train:
            outcomes.setdefault(planned.fingerprint, Outcome(planned, "cancelled"))
    ctx.timer.runs_trained = (ctx.timer.runs_trained or 0) + sum(o.state == "trained" for o in outcomes.values())
    with ctx.timer.phase("naming runs"):
        for outcome in outcomes.values():
            if outcome.state == "trained" and outcome.run_id:
                client.update_run(outcome.run_id, name=outcome.planned.display_name)
                outcome.run_name = outcome.planned.display_name
    return [_for_plan(outcomes[p.fingerprint], p) for p in plan]


def _for_plan(outcome: Outcome, planned: PlannedRun) -> Outcome:
    """The shared outcome, seen from a planned run that happened to have an identical recipe."""
    if outcome.planned is planned:
        return outcome
    return Outcome(
        planned, outcome.state, outcome.run_id, outcome.run_dir, outcome.error, outcome.seconds, outcome.run_name
    )


def unique_by_fingerprint(plan: Sequence[PlannedRun]) -> list[PlannedRun]:
    seen: set[str] = set()
    out = []
    for planned in plan:
        if planned.fingerprint not in seen:
            seen.add(planned.fingerprint)
            out.append(planned)
    return out


def run_tags(planned: PlannedRun, group_id: str) -> dict[str, str]:
    return {**planned.tags, MEMBERSHIP_TAG: group_id}


# --------------------------------------------------------------------------- one unit of work


def train_unit(recipes: list[Recipe], options: list[RunOptions]) -> list[dict[str, Any]]:
    """Train one run, or several seeds of one recipe as a population; each run's result: its `run_id` and `run_dir`,
    or an `error`. A population that fails (a member's update not finite, say) leaves its runs FAILED, and they train
    again one by one. A stop request (KeyboardInterrupt) goes on up."""
    if len(recipes) > 1:
        try:
            return [result_of(summary) for summary in run_population(recipes, options)]
        except Exception as exc:
            seeds = ", ".join(str(recipe.seed) for recipe in recipes)
            options[0].observer_or_default.on_warning(
                f"the population of seeds {seeds} stopped ({describe_failure(exc)}); its runs train one by one"
            )
    return [train_one(recipe, own) for recipe, own in zip(recipes, options)]


def train_one(recipe: Recipe, options: RunOptions) -> dict[str, Any]:
    try:
        return result_of(run_training(recipe, options))
    except Exception as exc:  # one failing run is reported, not fatal for the others
        return {"error": describe_failure(exc)}


def result_of(summary: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": summary["run_id"], "run_dir": summary["run_dir"]}


def outcome_of_result(planned: PlannedRun, result: dict[str, Any], seconds: float) -> Outcome:
    if result.get("error"):
        state: State = "cancelled" if result.get("interrupted") else "failed"
        return Outcome(planned, state, error=result["error"], seconds=seconds)
    return Outcome(planned, "trained", result["run_id"], result["run_dir"], seconds=seconds)


def interrupted_results(count: int, exc: BaseException) -> list[dict[str, Any]]:
    return [{"error": f"interrupted ({describe_failure(exc)})", "interrupted": True}] * count


# --------------------------------------------------------------------------- in-process


def run_sequentially(units: Sequence[list[PlannedRun]], ctx: ExecutionContext, outcomes: dict[str, Outcome]) -> None:
    quiet_library_progress_bars()
    for unit in units:
        for planned in unit:
            ctx.observer.on_run_start(planned)
        begin = time.perf_counter()
        observer = ctx.observer.training_observer()
        options = [
            RunOptions(ctx.output_dir, ctx.tracking_uri, observer, ctx.parent_run_id, run_tags(planned, ctx.group_id))
            for planned in unit
        ]
        results = train_unit([planned.recipe for planned in unit], options)
        seconds = (time.perf_counter() - begin) / len(unit)  # a population's time, shared by its runs
        for planned, result in zip(unit, results):
            outcome = outcome_of_result(planned, result, seconds)
            outcomes[planned.fingerprint] = outcome
            ctx.observer.on_run_end(outcome)


def describe_failure(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def quiet_library_progress_bars() -> None:
    """transformers prints a tqdm bar per checkpoint save, which would tear through our live display."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


# --------------------------------------------------------------------------- parallel processes


def run_in_processes(units: Sequence[list[PlannedRun]], ctx: ExecutionContext, outcomes: dict[str, Outcome]) -> None:
    """`ctx.jobs` spawned worker processes, each with cores // jobs torch threads, each training a unit at a time.

    Workers live in their own process group, so a Ctrl-C reaches this process only; it then
    forwards one SIGINT to each worker (finish the step, checkpoint, stop) and waits for them.
    A second Ctrl-C forwards a second SIGINT, which ends the workers at once.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ctx.timer.phase(SHARED_WARM_START):  # inside `training`: the workers wait on it
        prewarm([planned for unit in units for planned in unit], ctx.output_dir, ctx.observer.training_observer())
    threads = threads_per_job(ctx.jobs)
    pending = list(units)
    running: dict[Any, tuple[list[PlannedRun], float]] = {}
    spawn = multiprocessing.get_context("spawn")
    progress = spawn.SimpleQueue()
    relay = threading.Thread(target=relay_progress, args=(progress, ctx.observer), daemon=True)
    relay.start()
    pool = ProcessPoolExecutor(
        max_workers=ctx.jobs, mp_context=spawn, initializer=init_worker, initargs=(threads, progress)
    )
    try:
        while pending or running:
            while pending and len(running) < ctx.jobs:
                unit = pending.pop(0)
                args = (
                    [planned.recipe.resolved() for planned in unit],
                    str(ctx.output_dir),
                    ctx.tracking_uri,
                    ctx.parent_run_id,
                    [run_tags(planned, ctx.group_id) for planned in unit],
                    [planned.fingerprint for planned in unit],
                )
                running[pool.submit(_train_in_worker, *args)] = (unit, time.perf_counter())
                for planned in unit:
                    ctx.observer.on_run_start(planned)
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in done:
                unit, begin = running.pop(future)
                seconds = (time.perf_counter() - begin) / len(unit)  # a population's time, shared by its runs
                for planned, result in zip(unit, _results_of(future, len(unit))):
                    outcome = outcome_of_result(planned, result, seconds)
                    outcomes[planned.fingerprint] = outcome
                    ctx.observer.on_run_end(outcome)
    except BaseException:
        interrupt_workers(pool)
        try:
            pool.shutdown(wait=True, cancel_futures=True)
        except KeyboardInterrupt:  # asked twice: do not wait for the checkpoints
            interrupt_workers(pool)
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        progress.put(None)  # ends the relay once the workers' last messages are read
    pool.shutdown(wait=True)
    relay.join(timeout=5)


def interrupt_workers(pool: Any) -> None:
    import signal

    for process in list(getattr(pool, "_processes", {}).values()):
        try:
            os.kill(process.pid, signal.SIGINT)
        except (OSError, AttributeError):
            continue


def _results_of(future: Any, count: int) -> list[dict[str, Any]]:
    try:
        return future.result()
    except Exception as exc:  # the worker process died (killed, out of memory): only this unit's runs fail
        return [{"error": describe_failure(exc)}] * count


def relay_progress(queue: Any, observer: WorkflowObserver) -> None:
    """In the parent: the workers' (fingerprint, step, total) messages to the observer, until None."""
    while (message := queue.get()) is not None:
        try:
            observer.on_run_progress(*message)
        except Exception:  # a display error must not stop the relay (and with it the workers' queue)
            continue


class _WorkerProgress(TrainingObserver):
    """In a worker: the run's RL steps to the parent, at most a few messages a second."""

    def __init__(self, queue: Any, fingerprint: str, min_interval_s: float = 0.5):
        self.queue, self.fingerprint, self.min_interval_s = queue, fingerprint, min_interval_s
        self.total, self.sent_at = 1, 0.0

    def on_start(self, total_steps: int, run_name: str, run_dir: Any) -> None:
        self.total = total_steps
        self.queue.put((self.fingerprint, 0, total_steps))

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if step >= self.total or now - self.sent_at >= self.min_interval_s:
            self.sent_at = now
            self.queue.put((self.fingerprint, step, self.total))


_progress_queue: Any = None  # set in each worker by init_worker


def init_worker(threads: int, progress: Any = None) -> None:
    import signal

    global _progress_queue
    _progress_queue = progress

    # Own process group: the terminal's Ctrl-C goes to the parent, which forwards it (see run_in_processes).
    # An idle worker ignores SIGINT; while training, the trainer's own handler takes it (checkpoint, stop).
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    torch.set_num_threads(threads)
    quiet_library_progress_bars()


def _train_in_worker(
    recipes_data: list[dict[str, Any]],
    output_dir: str,
    tracking_uri: str,
    parent_run_id: str | None,
    tags: list[dict[str, str]],
    fingerprints: list[str],
) -> list[dict[str, Any]]:
    """Runs in a worker process: one unit (a run, or a population). Errors come back as text: some exception types
    do not survive pickling (and one that fails to unpickle breaks the whole pool)."""
    try:
        options = [
            RunOptions(
                output_dir,
                tracking_uri,
                None if _progress_queue is None else _WorkerProgress(_progress_queue, fingerprint),
                parent_run_id,
                own_tags,
            )
            for own_tags, fingerprint in zip(tags, fingerprints)
        ]
        return train_unit([Recipe.model_validate(data) for data in recipes_data], options)
    except KeyboardInterrupt as exc:  # stopped on a forwarded SIGINT, after a checkpoint
        return interrupted_results(len(recipes_data), exc)
    except Exception as exc:
        return [{"error": describe_failure(exc)}] * len(recipes_data)


def prewarm(plan: Sequence[PlannedRun], output_dir: Path, observer: TrainingObserver | None = None) -> None:
    """Compute each distinct warm start once, before the workers start, so they never race to train it;
    its steps go to `observer.on_warm_start`, so the wait shows. Distinct by the cache's own key, each task
    built once; a cached one is found by its folder alone (nothing loaded, not even torch).

    A failure here is left for the run itself to report.
    """
    cache_root = Path(output_dir) / ".cache" / "warm_start"
    tasks: dict[str, Any] = {}
    seen: set[str] = set()
    for planned in plan:
        recipe = planned.recipe
        if not recipe.train.warm_start.enabled:
            continue
        try:
            task_id = stable_hash(recipe.task.model_dump(mode="json"))
            if task_id not in tasks:
                tasks[task_id] = build_task(recipe.task)
            key = warm_start_key(recipe, tasks[task_id])
            if key in seen or is_cached(cache_root / key):
                continue
            seen.add(key)
            _train_warm_start(recipe, tasks[task_id], cache_root, observer)
        except Exception:
            continue


def _train_warm_start(recipe: Recipe, task: Any, cache_root: Path, observer: TrainingObserver | None) -> None:
    set_offline_defaults()
    model, tokenizer = load_policy(recipe.model, task.alphabet, recipe.train.warm_start.seed)
    on_progress = None if observer is None else observer.on_warm_start
    result = cached_warm_start(recipe, model, tokenizer, task, cache_root, on_progress)
    if observer is not None:  # the bar ends where the warm start ended (often before max_steps)
        observer.on_warm_start(result.steps, result.steps, result.dev_accuracy)


def eta_seconds(durations: Sequence[float], remaining: int, jobs: int) -> float:
    """Remaining runs times the mean duration so far, shared by `jobs` workers; NaN before any run ends."""
    if not durations:
        return math.nan
    return sum(durations) / len(durations) * math.ceil(remaining / max(jobs, 1))
