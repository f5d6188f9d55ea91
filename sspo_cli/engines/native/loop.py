"""The native engine: a single-process training run, top to bottom.

    recipe -> task, policy, objective, output dir and MLflow store checked -> (cached) warm start
    -> run folder + MLflow run -> for each step: `step.rl_step` -> metrics to MLflow,
    periodic eval, checkpoints -> summary.json

`run_training_native` starts a run; `resume_training_native` continues one from its last
checkpoint; `rl_loop` repeats the algorithm's step. The run's records, state types and summary
are the engine-neutral run layer's (`sspo_cli.run`); `sspo_cli.engines.dispatch` chooses this engine.
Nothing here knows about the terminal: progress and warnings go to a `TrainingObserver`.

Bad input (recipe, data, model, output dir, tracking store, run folder, checkpoint) raises
before any run folder or MLflow run exists, or before a resumed run is touched.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.engines.native.checkpoint import (
    OPTIMIZER_FILE,
    CheckpointError,
    apply_policy_weights,
    lagged_weights_of,
    latest_checkpoint,
    load_checkpoint,
    recover_interrupted_writes,
    restore_rng,
    save_checkpoint,
    step_folder_name,
    train_state_of,
)
from sspo_cli.engines.native.learner import Learner
from sspo_cli.engines.native.step import rl_step
from sspo_cli.engines.native.tuning import native_bf16
from sspo_cli.models import check_generation_tokens, load_policy, set_offline_defaults, trainable_parameters
from sspo_cli.models.lora import attach_lora, check_targets
from sspo_cli.recipe import Recipe
from sspo_cli.rollout.prompts import text_format
from sspo_cli.run.folder import (
    CHECKPOINTS,
    HISTORY_FILE,
    RunLock,
    check_output_dir,
    default_run_name,
    final_checkpoint,
    new_run_dir,
    write_text_atomic,
)
from sspo_cli.run.records import PROBLEMS_FILE, RunRecords, eval_metrics, open_run
from sspo_cli.run.schedule import lr_multiplier
from sspo_cli.run.state import Policy, RunOptions, TooManySkips, TrainingObserver, TrainState
from sspo_cli.run.tracking import (
    Tracker,
    check_store_writable,
    check_tracking_uri,
    default_tracking_uri,
    failure_marked,
    find_run,
    open_client,
)
from sspo_cli.run.warm_start import cached_warm_start, check_target
from sspo_cli.signals import RunInterrupted, StopRequest
from sspo_cli.tasks import build_task

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

    from sspo_cli.engines.native.checkpoint import LoadedCheckpoint
    from sspo_cli.run.folder import RunInfo
    from sspo_cli.run.warm_start import WarmStartResult
    from sspo_cli.tasks import Task


@dataclass
class Prepared:
    """A recipe's task, policy and objective, and a checked output dir and MLflow store."""

    recipe: Recipe
    task: Task
    policy: Policy
    objective: Any
    output_dir: Path
    tracking_uri: str
    warm_result: WarmStartResult | None


# --------------------------------------------------------------------------- set-up


def run_training_native(recipe: Recipe, options: RunOptions) -> dict[str, Any]:
    """Train one recipe end to end and return its summary (also written to summary.json)."""
    observer = options.observer_or_default
    prepared = prepare(recipe, options.output_dir, options.tracking_uri, observer)
    learner = Learner(prepared.policy, *make_optimizer(recipe, prepared.policy.model))

    run_dir = new_run_dir(prepared.output_dir, recipe.tracking.run_name or default_run_name(recipe))
    with RunLock(run_dir):
        tracker = open_run(
            recipe,
            run_dir,
            prepared.output_dir,
            prepared.tracking_uri,
            options.parent_run_id,
            options.extra_tags,
            prepared.warm_result,
        )
        return execute(prepared, learner, run_dir, tracker, TrainState(), observer, first_session=True)


def resume_training_native(
    run_dir: Path,
    info: RunInfo,
    recipe: Recipe,
    options: RunOptions,
) -> dict[str, Any]:
    """Continue an interrupted run from its last complete checkpoint, in the same MLflow run.

    The recipe is the run folder's own recipe.yaml, so the run ends exactly as it would have
    without the interruption. Without any checkpoint yet, the run starts again from step 0.
    """
    observer = options.observer_or_default
    with RunLock(run_dir):
        recover_interrupted_writes(run_dir / CHECKPOINTS)
        folder = latest_checkpoint(run_dir / CHECKPOINTS)
        loaded = load_checkpoint(folder) if folder is not None else None
        state = train_state_of(loaded) if loaded is not None else TrainState()
        if state.step > recipe.train.steps:
            raise CheckpointError(
                "--resume",
                f"checkpoint {folder} is at step {state.step}, past the recipe's train.steps {recipe.train.steps}",
            )
        tracking_uri = options.tracking_uri or info.tracking_uri
        prepared = prepare(recipe, run_dir.parent, tracking_uri, observer, run_id=info.run_id)
        learner = Learner(prepared.policy, *make_optimizer(recipe, prepared.policy.model))
        if loaded is not None:
            restore_from_checkpoint(loaded, learner)
            restore_rng(loaded.rng)
        tracker = Tracker.resume(prepared.tracking_uri, info.run_id, skip_logged_steps=True)
        state.resumed_from.append(state.step)
        tracker.set_tags({"sspo.resumed_from": " ".join(str(step) for step in state.resumed_from)})
        # Steps after the checkpoint are trained again; their old lines go.
        write_text_atomic(
            run_dir / HISTORY_FILE,
            "".join(json.dumps({"step": i + 1, **row}) + "\n" for i, row in enumerate(state.history)),
        )
        observer.on_phase(
            f"resuming {run_dir.name} from step {state.step}"
            + (f" ({folder.name})" if folder else " (no checkpoint yet: from the start)")
        )
        return execute(prepared, learner, run_dir, tracker, state, observer, first_session=loaded is None)


def prepare(
    recipe: Recipe, output_dir: Path, tracking_uri: str | None, observer: TrainingObserver, run_id: str | None = None
) -> Prepared:
    """Load and check everything a run needs; bad input raises here, having written nothing.

    Cheap checks of the output dir and tracking store come first, so a wrong path fails in
    a second; the store is created only once the task and model have loaded.
    """
    check_output_dir(output_dir)
    if tracking_uri is not None:
        check_tracking_uri(tracking_uri)

    set_offline_defaults()
    observer.on_phase("loading task and model")
    task = build_task(recipe.task)

    import torch

    from sspo_cli.objectives import build_objective  # its lazy attribute imports torch

    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    warm = recipe.train.warm_start
    model, tokenizer = load_policy(recipe.model, task.alphabet, warm.seed if warm.enabled else recipe.seed)
    check_generation_tokens(tokenizer)
    if recipe.model.lora is not None:
        check_targets(recipe.model.lora, model)  # now: the adapters themselves come after the warm start
    text_format(recipe, tokenizer)  # a prompt option the tokenizer cannot honour fails before anything is written
    warn_if_emulated_bf16(recipe, next(model.parameters()).device, observer)
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
        warm_result = cached_warm_start(
            recipe, model, tokenizer, task, output_dir / ".cache" / "warm_start", observer.on_warm_start
        )
        check_target(warm_result, warm, observer.on_warning)
    policy = build_policy(recipe, model, tokenizer)
    return Prepared(recipe, task, policy, objective, output_dir, tracking_uri, warm_result)


def warn_if_emulated_bf16(recipe: Recipe, device: torch.device, observer: TrainingObserver) -> None:
    """`autocast_bf16: true` where bf16 is not native still runs, only several times slower: say so."""
    if recipe.performance.autocast_bf16 is True and not native_bf16(device):
        observer.on_warning(
            f"performance.autocast_bf16 is true but {device.type} here has no native bfloat16 "
            "(AVX-512-BF16 or AMX on a CPU): the updates run emulated bf16, several times slower than float32; "
            "'auto' leaves it off on this machine"
        )


def build_policy(recipe: Recipe, model: PreTrainedModel, tokenizer) -> Policy:
    """The policy RL trains: the whole model, or LoRA adapters on it; with a KL term, its reference
    (a frozen copy, or under LoRA the same model with its adapters off)."""
    kl = recipe.objective.beta > 0
    if recipe.model.lora is None:
        return Policy(model, tokenizer, reference=frozen_copy(model) if kl else None)

    adapter = attach_lora(recipe.model.lora, model, recipe.seed, base_in_checkpoint=recipe.model.path is None)
    return Policy(model, tokenizer, adapter=adapter, kl_to_base=kl)


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def make_optimizer(
    recipe: Recipe, model: PreTrainedModel, fused: bool | None = None
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable parameters and the recipe's schedule; `fused` None: the fused kernel where torch
    has one for these parameters."""
    return adamw_with_schedule(recipe, trainable_parameters(model), fused)


def adamw_with_schedule(
    recipe: Recipe, params: list[torch.Tensor], fused: bool | None = None
) -> tuple[torch.optim.Optimizer, Any]:
    """The recipe's AdamW over `params` (a model's, or a population's stacked weights) and its schedule."""
    import torch

    optimizer = torch.optim.AdamW(
        params,
        lr=recipe.train.lr,
        weight_decay=recipe.train.weight_decay,
        fused=fused_adamw_supported(params) if fused is None else fused,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(recipe))
    return optimizer, scheduler


def fused_adamw_supported(params: list[torch.Tensor]) -> bool:
    """Whether torch has a fused AdamW kernel for these parameters: one kernel per step instead of a dozen
    operators per tensor (on the 1M-parameter default, 0.4 ms instead of 2 ms per step). Its updates equal the
    per-tensor loop's up to float rounding."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    supported = _get_fused_kernels_supported_devices()
    return bool(params) and all(p.device.type in supported and p.is_floating_point() for p in params)


def restore_from_checkpoint(loaded: LoadedCheckpoint, learner: Learner) -> None:
    """Weights, lagged sampler weights, optimiser and scheduler as they were when the checkpoint was written."""
    apply_policy_weights(learner.policy, loaded)
    learner.lagged = lagged_weights_of(loaded, learner.policy.model)
    try:
        learner.optimizer.load_state_dict(loaded.optimizer)
        learner.scheduler.load_state_dict(loaded.scheduler)
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:
        raise CheckpointError(
            "--resume", f"{loaded.folder / OPTIMIZER_FILE} does not fit the recipe's model: {exc}"
        ) from None


# --------------------------------------------------------------------------- running and finishing


def execute(
    prepared: Prepared,
    learner: Learner,
    run_dir: Path,
    tracker: Tracker,
    state: TrainState,
    observer: TrainingObserver,
    first_session: bool,
) -> dict[str, Any]:
    """Run the loop under a stop request, then write the summary; the MLflow status says how it ended."""
    records = RunRecords(
        prepared.recipe, run_dir, tracker, prepared.tracking_uri, observer, state, prepared.warm_result
    )
    with failure_marked(tracker):
        records.begin(first_session)
        with StopRequest(notify=observer.on_warning) as stop:
            rl_loop(prepared, learner, records, stop)
        return records.finish()


# --------------------------------------------------------------------------- the loop


def rl_loop(prepared: Prepared, learner: Learner, records: RunRecords, stop: StopRequest | None = None) -> None:
    """Steps from `state.step` to `train.steps`: record, evaluate and checkpoint on schedule.

    A stop request is honoured between steps: checkpoint, then RunInterrupted. Too many
    non-finite updates in a row: checkpoint of the last good state, then TooManySkips.
    """
    recipe, policy, task, state, run_dir = (
        prepared.recipe,
        prepared.policy,
        prepared.task,
        records.state,
        records.run_dir,
    )
    checkpoints = run_dir / CHECKPOINTS
    session_started, elapsed_before = time.perf_counter(), state.elapsed_seconds
    last_saved = state.step if state.step > 0 else None  # a run starts at step 0 or at its checkpoint's step

    def save(final: bool = False) -> Path:
        nonlocal last_saved
        state.elapsed_seconds = elapsed_before + time.perf_counter() - session_started
        records.tracker.flush()  # a resumed run logs only the steps after its checkpoint
        path = save_checkpoint(checkpoints, learner, state, recipe.train.keep_checkpoints, final=final)
        last_saved = state.step
        return path

    def run_eval(step: int) -> None:
        problems = run_dir / PROBLEMS_FILE if step == recipe.train.steps else None  # the final weights' answers
        records.record_eval(step, eval_metrics(recipe, policy.model, policy.tokenizer, task, problems))

    if not state.evals:
        run_eval(0)
    while state.step < recipe.train.steps:
        if stop is not None and stop.requested:
            path = checkpoints / step_folder_name(state.step) if last_saved == state.step else save()
            raise RunInterrupted(stop.signal_name or "signal", state.step, run_dir, path)
        state.step += 1
        try:
            metrics = rl_step(recipe, learner, task, prepared.objective, state)
        except TooManySkips as exc:
            exc.step, exc.run_dir, exc.checkpoint = state.step, run_dir, save()
            raise
        records.record_step(metrics)
        if evaluates_at(recipe, state.step):
            run_eval(state.step)
        if checkpoints_at(recipe, state.step):
            save(final=state.step == recipe.train.steps)
    if last_saved != state.step or not final_checkpoint(run_dir).is_dir():
        save(final=True)  # train.steps == 0, or a resume of a run killed while writing its final checkpoint


def evaluates_at(recipe: Recipe, step: int) -> bool:
    """Whether a run evaluates after RL step `step`: every `eval.every` steps, and after the last."""
    return step % recipe.eval.every == 0 or step == recipe.train.steps


def checkpoints_at(recipe: Recipe, step: int) -> bool:
    """Whether a run checkpoints after RL step `step`: every `train.checkpoint_every` steps, and after the last."""
    return step % recipe.train.checkpoint_every == 0 or step == recipe.train.steps
