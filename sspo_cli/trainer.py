"""A training run, top to bottom.

    recipe -> task, policy, objective, output dir and MLflow store checked -> (cached) warm start
    -> run folder + MLflow run -> for each step: `algorithm.rl_step` -> metrics to MLflow,
    periodic eval, checkpoints -> summary.json

`run_training` starts a run; `resume_training` continues one from its last checkpoint;
`rl_loop` repeats the algorithm's step. Nothing here knows about the terminal: progress and
warnings go to a `TrainingObserver`.

Bad input (recipe, data, model, output dir, tracking store, run folder, checkpoint) raises
before any run folder or MLflow run exists, or before a resumed run is touched.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.recipe import Recipe, to_yaml

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sspo_cli.checkpoint import LoadedCheckpoint
    from sspo_cli.rollout import EvalResult
    from sspo_cli.signals import StopRequest
    from sspo_cli.tasks import Task
    from sspo_cli.tracking import Tracker
    from sspo_cli.warm_start import WarmStartResult


class OutputError(ValueError):
    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class TrainingObserver:
    """Receives progress; the CLI renders it, tests ignore it. Warnings go to stderr unless overridden."""

    def on_phase(self, message: str) -> None: ...
    def on_warm_start(self, step: int, total: int, dev_accuracy: float | None) -> None: ...
    def on_start(self, total_steps: int, run_name: str, run_dir: Path) -> None: ...
    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_warning(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)


@dataclass
class Policy:
    model: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerBase"
    reference: "PreTrainedModel | None" = None


@dataclass
class TrainState:
    """Everything about a run's progress that is not a tensor; saved as trainer_state.json."""

    step: int = 0
    skipped_updates: int = 0
    consecutive_skips: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    elapsed_seconds: float = 0.0  # training time of earlier sessions of this run (resumes add up)
    resumed_from: list[int] = field(default_factory=list)  # steps this run was resumed from

    @classmethod
    def from_json(cls, data: dict[str, Any], source: Path) -> "TrainState":
        from sspo_cli.checkpoint import CheckpointError

        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        checks = {"step": int, "skipped_updates": int, "consecutive_skips": int, "history": list, "evals": list, "elapsed_seconds": (int, float), "resumed_from": list}
        wrong = [name for name, kind in checks.items() if name in data and not isinstance(data[name], kind)]
        if unknown or wrong:
            raise CheckpointError("--resume", f"{source} is not a trainer state ({'unknown keys ' + str(unknown) if unknown else 'wrong types for ' + str(wrong)})")
        return cls(**data)


@dataclass
class Prepared:
    """A recipe's task, policy and objective, and a checked output dir and MLflow store."""

    recipe: Recipe
    task: "Task"
    policy: Policy
    objective: Any
    output_dir: Path
    tracking_uri: str
    warm_result: "WarmStartResult | None"


# --------------------------------------------------------------------------- set-up


def run_training(
    recipe: Recipe,
    output_dir: str | Path = "runs",
    tracking_uri: str | None = None,
    observer: TrainingObserver | None = None,
    parent_run_id: str | None = None,
    extra_tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Train one recipe end to end and return its summary (also written to summary.json)."""
    if recipe.engine == "trl":
        from sspo_cli.engines.trl_engine import run_training_trl

        return run_training_trl(recipe, output_dir, tracking_uri, observer, parent_run_id, extra_tags)
    from sspo_cli.run_folder import RECIPE_FILE, RunInfo, RunLock
    from sspo_cli.tracking import Tracker, absolute_uri, flatten

    observer = observer or TrainingObserver()
    prepared = prepare(recipe, Path(output_dir), tracking_uri, observer)
    optimizer, scheduler = make_optimizer(recipe, prepared.policy.model)

    run_name = recipe.tracking.run_name or default_run_name(recipe)
    run_dir = new_run_dir(prepared.output_dir, run_name)
    with RunLock(run_dir):
        tags = run_tags(recipe, run_dir, extra_tags, prepared.warm_result)
        tracker = None
        try:
            (run_dir / RECIPE_FILE).write_text(to_yaml(recipe))
            tracker = Tracker.start(prepared.tracking_uri, recipe.tracking.experiment, run_dir.name, flatten(recipe.resolved()), tags, prepared.output_dir / "mlartifacts", parent_run_id)
            RunInfo(tracker.run_id, absolute_uri(prepared.tracking_uri), recipe.tracking.experiment, run_dir.name).write(run_dir)
        except BaseException as exc:
            if tracker is not None:
                _finish_quietly(tracker, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            shutil.rmtree(run_dir, ignore_errors=True)  # no run folder without its run.json
            raise
        return execute(prepared, run_dir, tracker, TrainState(), optimizer, scheduler, observer, first_session=True)


def resume_training(run_dir: str | Path, tracking_uri: str | None = None, observer: TrainingObserver | None = None) -> dict[str, Any]:
    """Continue an interrupted run from its last complete checkpoint, in the same MLflow run.

    The recipe is the run folder's own recipe.yaml, so the run ends exactly as it would have
    without the interruption. Without any checkpoint yet, the run starts again from step 0.
    """
    from sspo_cli.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, recover_interrupted_writes, restore_rng
    from sspo_cli.recipe import load_recipe
    from sspo_cli.run_folder import CHECKPOINTS, HISTORY_FILE, RECIPE_FILE, RunLock, read_run_folder, write_text_atomic
    from sspo_cli.tracking import Tracker

    observer = observer or TrainingObserver()
    run_dir = Path(run_dir)
    info = read_run_folder(run_dir)
    recipe = load_recipe(run_dir / RECIPE_FILE)
    if getattr(recipe, "engine", "native") != "native":
        raise CheckpointError("--resume", f"{run_dir / RECIPE_FILE} trains with engine {recipe.engine!r}; only the native engine's runs can be resumed")
    with RunLock(run_dir):
        recover_interrupted_writes(run_dir / CHECKPOINTS)
        folder = latest_checkpoint(run_dir / CHECKPOINTS)
        loaded = load_checkpoint(folder) if folder is not None else None
        state = TrainState.from_json(loaded.state, folder) if loaded is not None else TrainState()
        if state.step > recipe.train.steps:
            raise CheckpointError("--resume", f"checkpoint {folder} is at step {state.step}, past the recipe's train.steps {recipe.train.steps}")
        tracking_uri = tracking_uri or info.tracking_uri
        prepared = prepare(recipe, run_dir.parent, tracking_uri, observer, run_id=info.run_id)
        optimizer, scheduler = make_optimizer(recipe, prepared.policy.model)
        if loaded is not None:
            restore_from_checkpoint(loaded, prepared.policy, optimizer, scheduler)
            restore_rng(loaded.rng)
        tracker = Tracker.resume(prepared.tracking_uri, info.run_id, skip_logged_steps=True)
        state.resumed_from.append(state.step)
        tracker.set_tags({"sspo.resumed_from": " ".join(str(step) for step in state.resumed_from)})
        # Steps after the checkpoint are trained again; their old lines go.
        write_text_atomic(run_dir / HISTORY_FILE, "".join(json.dumps({"step": i + 1, **row}) + "\n" for i, row in enumerate(state.history)))
        observer.on_phase(f"resuming {run_dir.name} from step {state.step}" + (f" ({folder.name})" if folder else " (no checkpoint yet: from the start)"))
        return execute(prepared, run_dir, tracker, state, optimizer, scheduler, observer, first_session=loaded is None)


def prepare(recipe: Recipe, output_dir: Path, tracking_uri: str | None, observer: TrainingObserver, run_id: str | None = None) -> Prepared:
    """Load and check everything a run needs; bad input raises here, having written nothing.

    Cheap checks of the output dir and tracking store come first, so a wrong path fails in
    a second; the store is created only once the task and model have loaded.
    """
    from sspo_cli.tracking import check_store_writable, check_tracking_uri, default_tracking_uri, find_run, open_client

    check_output_dir(output_dir)
    if tracking_uri is not None:
        check_tracking_uri(tracking_uri)

    from sspo_cli.models import load_policy, set_offline_defaults
    from sspo_cli.tasks import build_task

    set_offline_defaults()
    observer.on_phase("loading task and model")
    task = build_task(recipe.task)

    import torch

    from sspo_cli.objectives import build_objective
    from sspo_cli.warm_start import cached_warm_start, check_target

    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    warm = recipe.train.warm_start
    model, tokenizer = load_policy(recipe.model, task.alphabet, warm.seed if warm.enabled else recipe.seed)
    check_generation_tokens(tokenizer)
    objective = build_objective(recipe.objective)

    if tracking_uri is None:
        tracking_uri = default_tracking_uri(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)  # the default store lives inside it
    client = open_client(tracking_uri)
    if run_id is not None:
        find_run(client, tracking_uri, run_id)
    else:
        check_store_writable(client, tracking_uri, recipe.tracking.experiment, output_dir / "mlartifacts")

    warm_result = None
    if warm.enabled:
        observer.on_phase("warm start")
        warm_result = cached_warm_start(recipe, model, tokenizer, task, output_dir / ".cache" / "warm_start", observer.on_warm_start)
        check_target(warm_result, warm, observer.on_warning)
    policy = Policy(model, tokenizer, reference=frozen_copy(model) if recipe.objective.beta > 0 else None)
    return Prepared(recipe, task, policy, objective, output_dir, tracking_uri, warm_result)


def check_generation_tokens(tokenizer: "PreTrainedTokenizerBase") -> None:
    """Sampling stops at the end-of-sequence token: a folder whose tokenizer has none is no causal LM we can train."""
    from sspo_cli.models import ModelError

    if tokenizer.eos_token_id is None:
        raise ModelError("model.path", f"the tokenizer ({type(tokenizer).__name__}) has no end-of-sequence token: not a causal language model with its tokenizer")


def check_output_dir(output_dir: Path) -> None:
    """The output dir, or the folder it would be created in, takes a file; nothing is left behind."""
    existing = output_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError("--output-dir", f"cannot create {str(output_dir)!r}: {str(existing)!r} is not a folder")
    probe = existing / f".sspo-write-test-{os.getpid()}-{time.time_ns()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError("--output-dir", f"cannot write to {str(existing)!r}: {exc.strerror or exc}") from None


def run_tags(recipe: Recipe, run_dir: Path, extra_tags: dict[str, str] | None = None, warm_result: "WarmStartResult | None" = None) -> dict[str, str]:
    """The MLflow tags every run carries, whatever its engine: how compare and sweep find runs again."""
    warm_tags = {} if warm_result is None else {"sspo.warm_start.reached_target": str(warm_result.reached_target).lower()}
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


def ensure_writable(output_dir: Path) -> None:
    """Create the output dir; OutputError if it cannot be written."""
    check_output_dir(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError("--output-dir", f"cannot create {str(output_dir)!r}: {exc.strerror or exc}") from None


def default_run_name(recipe: Recipe) -> str:
    return f"{recipe.name}-{recipe.objective.name}-s{recipe.seed}"


def new_run_dir(output_dir: Path, run_name: str) -> Path:
    ensure_writable(output_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        folder = output_dir / f"{run_name}-{stamp}{'' if attempt == 0 else f'-{attempt}'}"
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputError("--output-dir", f"cannot create a run folder in {str(output_dir)!r}: {exc.strerror or exc}") from None
    raise OutputError("--output-dir", f"cannot create a run folder for {run_name!r}")


def frozen_copy(model: "PreTrainedModel") -> "PreTrainedModel":
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def make_optimizer(recipe: Recipe, model: "PreTrainedModel") -> tuple["torch.optim.Optimizer", Any]:
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.train.lr, weight_decay=recipe.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(recipe))
    return optimizer, scheduler


def restore_from_checkpoint(loaded: "LoadedCheckpoint", policy: Policy, optimizer, scheduler) -> None:
    """Weights, optimiser and scheduler as they were when the checkpoint was written."""
    from sspo_cli.checkpoint import OPTIMIZER_FILE, CheckpointError, apply_weights

    apply_weights(policy.model, loaded.weights, loaded.folder)
    try:
        optimizer.load_state_dict(loaded.optimizer)
        scheduler.load_state_dict(loaded.scheduler)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise CheckpointError("--resume", f"{loaded.folder / OPTIMIZER_FILE} does not fit the recipe's model: {exc}") from None


# --------------------------------------------------------------------------- running and finishing


def execute(prepared: Prepared, run_dir: Path, tracker: "Tracker", state: TrainState, optimizer, scheduler, observer: TrainingObserver, first_session: bool) -> dict[str, Any]:
    """Run the loop under a stop request, then write the summary; the MLflow status says how it ended."""
    from sspo_cli.checkpoint import TooManySkips
    from sspo_cli.run_folder import SUMMARY_FILE, write_text_atomic
    from sspo_cli.signals import RunInterrupted, StopRequest

    recipe = prepared.recipe
    try:
        if first_session and prepared.warm_result:
            tracker.log_metrics({"warm_start/steps": prepared.warm_result.steps, "warm_start/dev_accuracy": prepared.warm_result.dev_accuracy}, step=0)
        tracker.log_artifact(run_dir / "recipe.yaml")
        observer.on_start(recipe.train.steps, run_dir.name, run_dir)
        with StopRequest(notify=observer.on_warning) as stop:
            rl_loop(recipe, prepared.policy, prepared.task, prepared.objective, state, tracker, run_dir, observer, optimizer, scheduler, stop)
        summary = build_summary(recipe, state, run_dir, tracker, prepared.tracking_uri, state.elapsed_seconds, prepared.warm_result)
        write_text_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
        tracker.log_artifact(run_dir / SUMMARY_FILE)
        tracker.log_artifact(run_dir / "checkpoints" / "final", "final_checkpoint")
        tracker.finish("FINISHED")
    except (RunInterrupted, KeyboardInterrupt):
        _finish_quietly(tracker, "KILLED")
        raise
    except TooManySkips:
        _finish_quietly(tracker, "FAILED")
        raise
    except BaseException:
        _finish_quietly(tracker, "FAILED")
        raise
    return summary


def _finish_quietly(tracker: "Tracker", status: str) -> None:
    """Record how the run ended without hiding the error that ended it."""
    try:
        tracker.finish(status)
    except Exception as exc:
        print(f"warning: could not mark MLflow run {tracker.run_id} {status}: {exc}", file=sys.stderr)


# --------------------------------------------------------------------------- the loop


def rl_loop(recipe, policy, task, objective, state, tracker, run_dir, observer, optimizer=None, scheduler=None, stop: "StopRequest | None" = None) -> None:
    """Steps from `state.step` to `train.steps`: record, evaluate and checkpoint on schedule.

    A stop request is honoured between steps: checkpoint, then RunInterrupted. Too many
    non-finite updates in a row: checkpoint of the last good state, then TooManySkips.
    """
    from sspo_cli.algorithm import rl_step
    from sspo_cli.checkpoint import TooManySkips, save_checkpoint
    from sspo_cli.signals import RunInterrupted

    if optimizer is None or scheduler is None:
        optimizer, scheduler = make_optimizer(recipe, policy.model)
    checkpoints = run_dir / "checkpoints"
    session_started, elapsed_before = time.perf_counter(), state.elapsed_seconds
    last_saved = state.step if state.step > 0 else None  # a run starts at step 0 or at its checkpoint's step

    def save(final: bool = False) -> Path:
        nonlocal last_saved
        state.elapsed_seconds = elapsed_before + time.perf_counter() - session_started
        path = save_checkpoint(checkpoints, policy, optimizer, scheduler, state, recipe.train.keep_checkpoints, final=final)
        last_saved = state.step
        return path

    def run_eval(step: int) -> None:
        metrics = evaluate_policy(recipe, policy, task).as_metrics("eval")
        state.evals.append({"step": step, **metrics})
        tracker.log_metrics(metrics, step)
        observer.on_eval(step, metrics)

    if not state.evals:
        run_eval(0)
    while state.step < recipe.train.steps:
        if stop is not None and stop.requested:
            path = checkpoints / f"step-{state.step:06d}" if last_saved == state.step else save()
            raise RunInterrupted(stop.signal_name or "signal", state.step, run_dir, path)
        state.step += 1
        skipped_before = state.skipped_updates
        try:
            metrics = rl_step(recipe, policy, task, objective, optimizer, scheduler, state)
        except TooManySkips as exc:
            exc.step, exc.run_dir, exc.checkpoint = state.step, run_dir, save()
            raise
        record_step(state, metrics, tracker, run_dir, observer)
        if state.skipped_updates > skipped_before:
            observer.on_warning(
                f"step {state.step}: skipped {state.skipped_updates - skipped_before} update(s) with a non-finite loss or gradient "
                f"({state.skipped_updates} in all; the run stops after {recipe.train.max_skipped} in a row, train.max_skipped)"
            )
        last = state.step == recipe.train.steps
        if state.step % recipe.eval.every == 0 or last:
            run_eval(state.step)
        if state.step % recipe.train.checkpoint_every == 0 or last:
            save(final=last)
    if last_saved != state.step or not (checkpoints / "final").is_dir():
        save(final=True)  # train.steps == 0, or a resume of a run killed while writing its final checkpoint


def record_step(state: TrainState, metrics: dict[str, float], tracker: "Tracker", run_dir: Path, observer: TrainingObserver) -> None:
    from sspo_cli.run_folder import HISTORY_FILE

    row = {"step": state.step, **metrics}
    state.history.append(row)
    tracker.log_metrics(metrics, state.step)
    with (run_dir / HISTORY_FILE).open("a") as history:
        history.write(json.dumps(row) + "\n")
    observer.on_step(state.step, metrics)


def evaluate_policy(recipe: Recipe, policy: Policy, task: "Task") -> "EvalResult":
    from sspo_cli.rollout import evaluate

    max_new = recipe.eval.max_new_tokens or recipe.rollout.max_new_tokens
    return evaluate(policy.model, policy.tokenizer, task, task.eval, max_new, recipe.eval.batch_size)


# --------------------------------------------------------------------------- schedule


def lr_multiplier(recipe: Recipe):
    total = max(recipe.train.steps * recipe.rollout.updates_per_rollout, 1)
    warmup = recipe.train.lr_warmup_steps
    schedule = recipe.train.lr_schedule

    def multiplier(update: int) -> float:
        if warmup and update < warmup:
            return (update + 1) / warmup
        progress = min(1.0, (update - warmup) / max(total - warmup, 1))
        return {"constant": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1 + math.cos(math.pi * progress))}[schedule]

    return multiplier


# --------------------------------------------------------------------------- summary

SUMMARY_KEYS = (
    "ratio/token_mean",
    "ratio/token_std",
    "ratio/token_max",
    "ratio/log_abs_mean",
    "ratio/seq_std",
    "ratio/seq_max",
    "weight/seq_mean",
    "weight/seq_var",
    "grad_weight/mean",
    "grad_weight/saturated_frac",
    "kl/k3",
    "train/entropy",
    "train/grad_norm",
)


def diagnostics_summary(history: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, 95th percentile and max over steps of the objective diagnostics."""
    out = {}
    for key in SUMMARY_KEYS:
        values = sorted(v for row in history if math.isfinite(v := row.get(key, math.nan)))
        if values:
            p95 = values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]
            out[key] = {"mean": sum(values) / len(values), "p95": p95, "max": values[-1]}
    return out


def build_summary(recipe, state, run_dir, tracker, tracking_uri, wall_seconds, warm_result) -> dict[str, Any]:
    evals = state.evals

    def eval_dict(row: dict[str, float]) -> dict[str, float]:
        return {"step": row["step"], "accuracy": row["eval/accuracy"], "mean_reward": row["eval/mean_reward"], "mean_length": row["eval/mean_length"]}

    return {
        "run_id": tracker.run_id,
        "run_name": run_dir.name,
        "run_dir": str(run_dir.resolve()),
        "tracking_uri": tracking_uri,
        "experiment": recipe.tracking.experiment,
        "recipe": recipe.name,
        "fingerprint": recipe.fingerprint(),
        "objective": recipe.objective.name,
        "seed": recipe.seed,
        "steps": state.step,
        "wall_seconds": wall_seconds,
        "skipped_updates": state.skipped_updates,
        "resumed_from": state.resumed_from,
        "warm_start": None if warm_result is None else warm_result.as_summary(),
        "eval_before": eval_dict(evals[0]),
        "eval_after": eval_dict(evals[-1]),
        "evals": [eval_dict(row) for row in evals],
        "diagnostics": diagnostics_summary(state.history),
    }
