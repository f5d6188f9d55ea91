"""A population run: K runs of one recipe that differ only in their seed (and objective numbers), trained together.

    member recipes -> refusal, or one shared preparation (task, model, warm start, store) -> the K members' weights
    stacked (`population.PopulationLearner`) -> per member: run folder + MLflow run -> for each step:
    `population_rl_step` -> each member's metrics, evals and checkpoints, on `loop.rl_loop`'s schedule
    -> each member's summary

Each member is an ordinary run for everything downstream: its own run folder, MLflow run, history, evals,
`eval_problems.jsonl`, checkpoints and summary, all as its standalone run writes them. A member's checkpoint holds its
weights and its part of the AdamW state (`member_optimizer_state`), so `sspo train --resume` continues any member
alone, exactly as the population would have gone on. A member whose update is not finite stops the population
(`NonFiniteMemberUpdate`: its standalone run would skip the update, one AdamW step over stacked weights cannot); the
caller trains those seeds standalone instead.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.engines.native.checkpoint import save_checkpoint
from sspo_cli.engines.native.learner import Learner
from sspo_cli.engines.native.loop import Prepared, checkpoints_at, evaluates_at, make_optimizer, prepare
from sspo_cli.engines.native.population import (
    PopulationLearner,
    member_optimizer_state,
    population_rl_step,
    population_unsupported,
)
from sspo_cli.errors import InputError
from sspo_cli.models import load_policy
from sspo_cli.recipe import Recipe
from sspo_cli.run.folder import CHECKPOINTS, RunLock, default_run_name, new_run_dir
from sspo_cli.run.records import PROBLEMS_FILE, RunRecords, eval_metrics, open_run
from sspo_cli.run.state import Policy, RunOptions, TrainState
from sspo_cli.run.tracking import failure_marked
from sspo_cli.signals import RunInterrupted, StopRequest

if TYPE_CHECKING:
    from transformers import PreTrainedModel


class PopulationError(InputError):
    """Recipes a population cannot train as their standalone runs would."""


@dataclass
class MemberRun:
    """An open member run: its records (folder, MLflow run, state)."""

    recipe: Recipe
    records: RunRecords

    @property
    def state(self) -> TrainState:
        return self.records.state

    @property
    def run_dir(self) -> Path:
        return self.records.run_dir


def population_refusal(recipes: list[Recipe]) -> str | None:
    """Why `recipes` cannot train as one population member for member (None: they can)."""
    first = recipes[0]  # the engine is `dispatch.population_refusal`'s to check
    if first.model.tiny is None:
        return "a model other than the embedded tiny one (model.tiny)"
    if len({recipe.population_key() for recipe in recipes}) > 1:
        return "recipes that differ in more than their seed and objective numbers"
    if len({recipe.fingerprint() for recipe in recipes}) < len(recipes):
        return "two members with one recipe"
    return next(filter(None, map(population_unsupported, recipes)), None)


def run_population_native(recipes: list[Recipe], options: list[RunOptions]) -> list[dict[str, Any]]:
    """Train `recipes` (one recipe, one seed each) as one population, member k with `options[k]` (its tags and
    progress; the output dir, store and parent run are the first's); each member's summary, in order (also in its
    summary.json)."""
    problem = population_refusal(recipes)
    if problem is not None:
        raise PopulationError("--population", f"these runs cannot train as one population: {problem}")
    shared = options[0]
    observer = shared.observer_or_default
    prepared = prepare(recipes[0], shared.output_dir, shared.tracking_uri, observer)
    learner = PopulationLearner.of(prepared.recipe, starting_models(prepared, recipes), prepared.policy.tokenizer)

    with contextlib.ExitStack() as stack:
        runs = []
        for recipe, own in zip(recipes, options):
            run_dir = new_run_dir(prepared.output_dir, recipe.tracking.run_name or default_run_name(recipe))
            stack.enter_context(RunLock(run_dir))
            tracker = open_run(
                recipe,
                run_dir,
                prepared.output_dir,
                prepared.tracking_uri,
                shared.parent_run_id,
                own.extra_tags,
                prepared.warm_result,
            )
            stack.enter_context(failure_marked(tracker))  # an error marks every member's MLflow run
            records = RunRecords(
                recipe,
                run_dir,
                tracker,
                prepared.tracking_uri,
                own.observer_or_default,
                TrainState(),
                prepared.warm_result,
            )
            runs.append(MemberRun(recipe, records))
        for run in runs:
            run.records.begin(first_session=True)
        with StopRequest(notify=observer.on_warning) as stop:
            population_loop(prepared, learner, runs, stop)
        return [run.records.finish() for run in runs]


def starting_models(prepared: Prepared, recipes: list[Recipe]) -> list[PreTrainedModel]:
    """Each member's weights at step 0, as its standalone run starts: after a warm start the shared warm-started
    model (it does not depend on the RL seed); without one, the model initialised from the member's seed."""
    if prepared.recipe.train.warm_start.enabled:
        return [prepared.policy.model] * len(recipes)
    return [load_policy(recipe.model, prepared.task.alphabet, recipe.seed)[0] for recipe in recipes]


def population_loop(prepared: Prepared, learner: PopulationLearner, runs: list[MemberRun], stop: StopRequest) -> None:
    """Steps 1 to `train.steps` of every member: record, evaluate and checkpoint each on `rl_loop`'s schedule.

    A stop request is honoured between steps: every member checkpoints, then RunInterrupted (for the first member;
    every member's run folder can be resumed alone)."""
    from sspo_cli.objectives import build_objective  # its lazy attribute imports torch

    recipe, task = prepared.recipe, prepared.task
    seeds = [run.recipe.seed for run in runs]
    objectives = [build_objective(run.recipe.objective) for run in runs]  # each member's own numbers
    started = time.perf_counter()

    def save_all(final: bool = False) -> list[Path]:
        for run in runs:
            run.state.elapsed_seconds = time.perf_counter() - started  # the population's time is each member's
            run.records.tracker.flush()  # a resumed member logs only the steps after its checkpoint
        return [save_member(prepared, learner, k, run, final) for k, run in enumerate(runs)]

    def evaluate_all(step: int) -> None:
        for k, run in enumerate(runs):
            problems = run.run_dir / PROBLEMS_FILE if step == recipe.train.steps else None
            model = learner.population.load_member_into(k, prepared.policy.model)
            run.records.record_eval(step, eval_metrics(run.recipe, model, learner.tokenizer, task, problems))

    evaluate_all(0)
    for step in range(1, recipe.train.steps + 1):
        if stop.requested:
            saved = save_all()
            raise RunInterrupted(stop.signal_name or "signal", step - 1, runs[0].run_dir, saved[0])
        for run in runs:
            run.state.step = step
        for run, metrics in zip(runs, population_rl_step(recipe, learner, task, objectives, seeds, step)):
            run.state.count_applied_update()
            run.records.record_step(metrics)
        if evaluates_at(recipe, step):
            evaluate_all(step)
        if checkpoints_at(recipe, step):
            save_all(final=step == recipe.train.steps)
    if recipe.train.steps == 0:
        save_all(final=True)


def save_member(prepared: Prepared, learner: PopulationLearner, member: int, run: MemberRun, final: bool) -> Path:
    """Member `member`'s checkpoint as its standalone run writes one: its weights, its AdamW state, the schedule."""
    model = learner.population.load_member_into(member, prepared.policy.model)
    optimizer, scheduler = make_optimizer(run.recipe, model)
    optimizer.load_state_dict(member_optimizer_state(learner.optimizer, learner.population, member, model))
    scheduler.load_state_dict(learner.scheduler.state_dict())
    alone = Learner(Policy(model, learner.tokenizer), optimizer, scheduler, learner.member_lagged(member))
    return save_checkpoint(run.run_dir / CHECKPOINTS, alone, run.state, run.recipe.train.keep_checkpoints, final=final)
