"""A training run, top to bottom.

    recipe -> task, policy -> (cached) warm start -> MLflow run and run folder
    -> for each step: `algorithm.rl_step` -> metrics to MLflow, periodic eval, checkpoints
    -> summary.json

`run_training` sets a run up and tears it down; `rl_loop` repeats the algorithm's step.
Nothing here knows about the terminal: progress goes to a `TrainingObserver`.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.recipe import Recipe, to_yaml

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sspo_cli.rollout import EvalResult
    from sspo_cli.tasks import Task


class OutputError(ValueError):
    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


class TrainingObserver:
    """Receives progress; the CLI renders it, tests ignore it."""

    def on_phase(self, message: str) -> None: ...
    def on_warm_start(self, step: int, total: int, dev_accuracy: float | None) -> None: ...
    def on_start(self, total_steps: int, run_name: str, run_dir: Path) -> None: ...
    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...


@dataclass
class Policy:
    model: "PreTrainedModel"
    tokenizer: "PreTrainedTokenizerBase"
    reference: "PreTrainedModel | None" = None


@dataclass
class TrainState:
    step: int = 0
    skipped_updates: int = 0
    consecutive_skips: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)


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
    import torch

    from sspo_cli.models import load_policy, set_offline_defaults
    from sspo_cli.objectives import build_objective
    from sspo_cli.tasks import build_task
    from sspo_cli.tracking import Tracker, default_tracking_uri, flatten, open_client
    from sspo_cli.warm_start import cached_warm_start

    set_offline_defaults()
    observer = observer or TrainingObserver()
    output_dir = Path(output_dir)
    ensure_writable(output_dir)
    tracking_uri = tracking_uri or default_tracking_uri(output_dir)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)

    # Everything that can fail on bad input happens before a run folder or MLflow run exists.
    observer.on_phase("loading task and model")
    task = build_task(recipe.task)
    warm = recipe.train.warm_start
    init_seed = warm.seed if warm.enabled else recipe.seed
    model, tokenizer = load_policy(recipe.model, task.alphabet, init_seed)
    objective = build_objective(recipe.objective)
    open_client(tracking_uri)

    warm_result = None
    if warm.enabled:
        observer.on_phase("warm start")
        warm_result = cached_warm_start(recipe, model, tokenizer, task, output_dir / ".cache" / "warm_start", observer.on_warm_start)
    policy = Policy(model, tokenizer, reference=frozen_copy(model) if recipe.objective.beta > 0 else None)

    run_name = recipe.tracking.run_name or default_run_name(recipe)
    run_dir = new_run_dir(output_dir, run_name)
    (run_dir / "recipe.yaml").write_text(to_yaml(recipe))
    tags = {
        "sspo.recipe": recipe.name,
        "sspo.objective": recipe.objective.name,
        "sspo.seed": str(recipe.seed),
        "sspo.fingerprint": recipe.fingerprint(),
        "sspo.run_dir": str(run_dir.resolve()),
        **recipe.tracking.tags,
        **(extra_tags or {}),
    }
    tracker = Tracker.start(tracking_uri, recipe.tracking.experiment, run_dir.name, flatten(recipe.resolved()), tags, output_dir / "mlartifacts", parent_run_id)
    tracker.log_artifact(run_dir / "recipe.yaml")
    started = time.perf_counter()
    try:
        if warm_result:
            tracker.log_metrics({"warm_start/steps": warm_result.steps, "warm_start/dev_accuracy": warm_result.dev_accuracy}, step=0)
        state = TrainState()
        observer.on_start(recipe.train.steps, run_dir.name, run_dir)
        rl_loop(recipe, policy, task, objective, state, tracker, run_dir, observer)
        summary = build_summary(recipe, state, run_dir, tracker, tracking_uri, time.perf_counter() - started, warm_result)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        tracker.log_artifact(run_dir / "summary.json")
        tracker.log_artifact(run_dir / "checkpoints" / "final", "final_checkpoint")
        tracker.finish("FINISHED")
    except KeyboardInterrupt:
        tracker.finish("KILLED")
        raise
    except BaseException:
        tracker.finish("FAILED")
        raise
    return summary


def ensure_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{time.time_ns()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError("--output-dir", f"cannot write to {str(output_dir)!r}: {exc.strerror or exc}") from None


def default_run_name(recipe: Recipe) -> str:
    return f"{recipe.name}-{recipe.objective.name}-s{recipe.seed}"


def new_run_dir(output_dir: Path, run_name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        folder = output_dir / f"{run_name}-{stamp}{'' if attempt == 0 else f'-{attempt}'}"
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise OutputError("--output-dir", f"cannot create a run folder for {run_name!r}")


def frozen_copy(model: "PreTrainedModel") -> "PreTrainedModel":
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


# --------------------------------------------------------------------------- the loop


def rl_loop(recipe, policy, task, objective, state, tracker, run_dir, observer) -> None:
    import torch

    from sspo_cli.algorithm import rl_step
    from sspo_cli.checkpoint import save_checkpoint

    model = policy.model
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.train.lr, weight_decay=recipe.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(recipe))

    def run_eval(step: int) -> None:
        metrics = evaluate_policy(recipe, policy, task).as_metrics("eval")
        state.evals.append({"step": step, **metrics})
        tracker.log_metrics(metrics, step)
        observer.on_eval(step, metrics)

    if state.step == 0:
        run_eval(0)
    while state.step < recipe.train.steps:
        state.step += 1
        metrics = rl_step(recipe, policy, task, objective, optimizer, scheduler, state)
        state.history.append(metrics)
        tracker.log_metrics(metrics, state.step)
        with (run_dir / "history.jsonl").open("a") as history:
            history.write(json.dumps({"step": state.step, **metrics}) + "\n")
        observer.on_step(state.step, metrics)
        last = state.step == recipe.train.steps
        if state.step % recipe.eval.every == 0 or last:
            run_eval(state.step)
        if state.step % recipe.train.checkpoint_every == 0 or last:
            save_checkpoint(run_dir / "checkpoints", policy, optimizer, scheduler, state, recipe.train.keep_checkpoints, final=last)
    if recipe.train.steps == 0:
        save_checkpoint(run_dir / "checkpoints", policy, optimizer, scheduler, state, recipe.train.keep_checkpoints, final=True)


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
        "warm_start": None if warm_result is None else {"steps": warm_result.steps, "dev_accuracy": warm_result.dev_accuracy, "cached": warm_result.cached},
        "eval_before": eval_dict(evals[0]),
        "eval_after": eval_dict(evals[-1]),
        "evals": [eval_dict(row) for row in evals],
        "diagnostics": diagnostics_summary(state.history),
    }
