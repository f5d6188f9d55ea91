"""`engine: trl`: a training run on Hugging Face TRL's GRPOTrainer, recorded like a native run.

    recipe -> plan (TrlEngineError on what TRL cannot honour) -> task, policy -> (cached) warm start
    -> run folder and MLflow run -> eval before -> SspoGRPOTrainer.train() (our objective, our rows)
    -> final weights -> eval after, on the saved weights -> summary.json

Under `accelerate launch` every process runs this function: the main process alone writes the
run folder, MLflow and evals; the others train and return `{"run_dir": ..., "main_process": False}`.
Importing this module needs neither torch nor TRL.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from sspo_cli.engines.trl.mapping import TRL_INSTALL_HINT, TrlEngineError, TrlPlan, plan_trl_run, uses_cpu
from sspo_cli.models import check_generation_tokens, load_policy, load_pretrained, save_policy, set_offline_defaults
from sspo_cli.recipe import Recipe
from sspo_cli.rollout.prompts import text_format
from sspo_cli.run.folder import CHECKPOINTS, default_run_name, ensure_writable, final_checkpoint, new_run_dir
from sspo_cli.run.records import PROBLEMS_FILE, RunRecords, eval_metrics, open_run
from sspo_cli.run.state import RunOptions, TrainingObserver, TrainState
from sspo_cli.run.tracking import check_tracking_uri, default_tracking_uri, failure_marked, open_client
from sspo_cli.run.warm_start import cached_warm_start, check_target
from sspo_cli.tasks import build_task

SUPPORTED_TRL = ((1, 16), (1, 17))  # [from, to): the private GRPOTrainer methods we override are 1.16's


def require_trl() -> str:
    """TRL's version, or TrlEngineError('engine') saying how to install it."""
    try:
        import trl
    except ImportError as exc:
        raise TrlEngineError(
            "engine", f"'trl' needs Hugging Face TRL, which cannot be imported ({exc}); {TRL_INSTALL_HINT}"
        ) from None
    version = tuple(int(part) for part in trl.__version__.split(".")[:2] if part.isdigit())
    if not SUPPORTED_TRL[0] <= version < SUPPORTED_TRL[1]:
        raise TrlEngineError(
            "engine",
            f"TRL {trl.__version__} is installed, but the TRL engine is written for TRL 1.16; {TRL_INSTALL_HINT}",
        )
    return trl.__version__


def run_training_trl(recipe: Recipe, options: RunOptions) -> dict[str, Any]:
    """Train one recipe on TRL and return its summary (also written to summary.json), as `run_training` does."""
    set_offline_defaults()
    trl_version = require_trl()

    import torch
    from accelerate import PartialState

    cuda = torch.cuda.is_available()
    # Everything that can fail on bad input happens before a run folder or MLflow run exists.
    processes = PartialState(cpu=uses_cpu(recipe, cuda))  # the first PartialState fixes the backend for the process
    main = processes.is_main_process
    observer = options.observer_or_default if main else TrainingObserver()
    output_dir, tracking_uri = options.output_dir, options.tracking_uri
    if main:
        ensure_writable(output_dir)
        if tracking_uri is not None:
            check_tracking_uri(tracking_uri)
    tracking_uri = tracking_uri or default_tracking_uri(output_dir)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)

    plan = plan_trl_run(
        recipe, processes.num_processes, cuda_available=cuda, bf16_available=cuda and torch.cuda.is_bf16_supported()
    )
    args = grpo_config(plan, output_dir)
    observer.on_phase("loading task and model")
    task = build_task(recipe.task)
    warm = recipe.train.warm_start
    device = torch.device("cpu") if args.use_cpu else processes.device
    model, tokenizer = load_policy(
        recipe.model.model_copy(update={"device": "cpu"}), task.alphabet, warm.seed if warm.enabled else recipe.seed
    )
    model.to(device)
    check_generation_tokens(tokenizer)
    text_format(recipe, tokenizer)  # a prompt option the tokenizer cannot honour fails before anything is written
    if main:
        open_client(tracking_uri)

    warm_result = None
    if warm.enabled:
        observer.on_phase("warm start")
        with processes.main_process_first():  # the others then read the main process's cache
            warm_result = cached_warm_start(
                recipe, model, tokenizer, task, output_dir / ".cache" / "warm_start", observer.on_warm_start
            )
        check_target(warm_result, warm, observer.on_warning if main else lambda message: None)

    run_dir = shared_run_dir(output_dir, recipe.tracking.run_name or default_run_name(recipe), main)
    args.output_dir = str(run_dir / CHECKPOINTS)
    state = TrainState()
    tags = {"sspo.trl_version": trl_version, **options.extra_tags}
    tracker = (
        open_run(recipe, run_dir, output_dir, tracking_uri, options.parent_run_id, tags, warm_result) if main else None
    )
    # The main process alone keeps the records.
    records = (
        RunRecords(
            recipe, run_dir, tracker, tracking_uri, observer, state, warm_result, skip_cause="a non-finite gradient"
        )
        if tracker
        else None
    )
    started = time.perf_counter()
    with failure_marked(tracker):
        if records:
            records.begin()
        context = run_context(recipe, task, tokenizer, state, run_dir, records)
        if records:
            records.record_eval(0, context.evaluate(model))
        final = final_checkpoint(run_dir)
        if recipe.train.steps > 0:
            train_on_trl(recipe, plan, args, model, tokenizer, task, context, final)
            del model
            free_accelerator_memory()
            if records:
                final_policy = load_saved_policy(recipe, final).to(device)
                records.record_eval(recipe.train.steps, context.evaluate(final_policy, final_eval=True))
        elif main:
            save_policy(model, tokenizer, final)
        if not records:
            return {"run_dir": str(run_dir.resolve()), "main_process": False}
        state.elapsed_seconds = time.perf_counter() - started
        return records.finish(engine=recipe.engine)


def train_on_trl(recipe: Recipe, plan: TrlPlan, args, model, tokenizer, task, context, final: Path) -> None:
    """Build SspoGRPOTrainer, train, and save the final weights (every process takes part in the save)."""
    from transformers import PrinterCallback

    from sspo_cli.engines.trl.trainer import (
        NonFiniteUpdateGuard,
        RunRecorder,
        SspoGRPOTrainer,
        task_reward_function,
        training_dataset,
    )

    text = text_format(recipe, tokenizer)
    with reference_source(model, tokenizer, context.run_dir, recipe.objective.beta > 0):
        trainer = SspoGRPOTrainer(
            model=model,
            reward_funcs=task_reward_function(task, text.end_ids(tokenizer, model)),
            args=args,
            train_dataset=training_dataset(task, tokenizer, text),
            processing_class=tokenizer,
            callbacks=[NonFiniteUpdateGuard(context.state, recipe.train.max_skipped, context.run_dir)],
            recipe=recipe,
        )
    trainer.remove_callback(PrinterCallback)  # transformers prints every log with disable_tqdm; ours are in MLflow
    if trainer.is_deepspeed_enabled and context.records is not None:
        context.records.observer.on_warning(
            "under DeepSpeed, updates with a non-finite gradient are DeepSpeed's to skip "
            "(train.max_skipped is not checked)"
        )
    trainer.add_callback(
        RunRecorder(
            context, plan.layout.updates_per_rollout, plan.layout.rollout_size, periodic_eval=trainer.weights_are_whole
        )
    )
    trainer.train()
    trainer.save_model(str(final))
    if trainer.accelerator.is_main_process:
        (final / "training_args.bin").unlink(missing_ok=True)  # a pickle; nothing here reads it
    trainer.accelerator.wait_for_everyone()


class reference_source:
    """With beta > 0 TRL loads its frozen reference from the policy's `_name_or_path`.

    The native engine's reference is the policy as it starts RL (after the warm start), so save
    exactly that, point TRL at it while it builds the trainer, then restore the name and remove it.
    """

    def __init__(self, model, tokenizer, run_dir: Path, needed: bool):
        self.model, self.tokenizer, self.needed = model, tokenizer, needed
        self.folder = run_dir / ".reference"
        self.original_name = getattr(model.config, "_name_or_path", "")

    def __enter__(self) -> None:
        if not self.needed:
            return
        from accelerate import PartialState

        processes = PartialState()
        if processes.is_main_process:
            save_policy(self.model, self.tokenizer, self.folder)
        processes.wait_for_everyone()
        self.model.config._name_or_path = str(self.folder)

    def __exit__(self, *exc_info: Any) -> None:
        if not self.needed:
            return
        from accelerate import PartialState

        self.model.config._name_or_path = self.original_name
        processes = PartialState()
        processes.wait_for_everyone()
        if processes.is_main_process:
            shutil.rmtree(self.folder, ignore_errors=True)


# --------------------------------------------------------------------------- small helpers


def grpo_config(plan: TrlPlan, output_dir: str | Path):
    """TRL's GRPOConfig for a plan; transformers >= 5.2x names gradient checkpointing `activation_checkpointing`."""
    import dataclasses

    from trl import GRPOConfig

    kwargs = dict(plan.config)
    if "activation_checkpointing" in {f.name for f in dataclasses.fields(GRPOConfig)}:
        kwargs["activation_checkpointing"] = kwargs.pop("gradient_checkpointing")
    return GRPOConfig(output_dir=str(output_dir), **kwargs)


def shared_run_dir(output_dir: Path, run_name: str, main: bool) -> Path:
    """The main process creates the run folder; every process learns its path."""
    from accelerate.utils import broadcast_object_list

    names = [str(new_run_dir(output_dir, run_name)) if main else None]
    broadcast_object_list(names)
    return Path(names[0])


def run_context(recipe: Recipe, task, tokenizer, state, run_dir: Path, records):
    from sspo_cli.engines.trl.trainer import RunContext

    def evaluate(model, final_eval: bool = False) -> dict[str, float]:
        return eval_metrics(recipe, model, tokenizer, task, run_dir / PROBLEMS_FILE if final_eval else None)

    return RunContext(recipe=recipe, state=state, run_dir=run_dir, records=records, evaluate=evaluate)


def load_saved_policy(recipe: Recipe, folder: Path):
    """The final weights as saved: evaluating them works the same under DDP, ZeRO-3 and FSDP."""
    model, _ = load_pretrained(recipe.model, folder)
    return model


def free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
