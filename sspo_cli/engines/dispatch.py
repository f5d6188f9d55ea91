"""Which engine trains a recipe: the one place that knows every engine.

    recipe.engine -> ENGINES[engine]: `native` (sspo_cli.engines.native.loop) or `trl` (sspo_cli.engines.trl.engine)

Both engines stand on the run layer (`sspo_cli.run`) and neither imports the other. Everything
that trains (`sspo train`, compare, sweep) comes through `run_training` or `resume_training`.
Engines load on first use: importing this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.run.folder import RECIPE_FILE, CheckpointError, read_run_folder
from sspo_cli.run.state import RunOptions

if TYPE_CHECKING:
    from sspo_cli.recipe import Recipe
    from sspo_cli.run.folder import RunInfo
    from sspo_cli.run.state import TrainingObserver


def _train_native(recipe: Recipe, options: RunOptions) -> dict[str, Any]:
    from sspo_cli.engines.native.loop import run_training_native

    return run_training_native(recipe, options)


def _train_trl(recipe: Recipe, options: RunOptions) -> dict[str, Any]:
    from sspo_cli.engines.trl.engine import run_training_trl

    return run_training_trl(recipe, options)


def _population_native(recipes: list[Recipe], options: list[RunOptions]) -> list[dict[str, Any]]:
    from sspo_cli.engines.native.population_loop import run_population_native

    return run_population_native(recipes, options)


def _population_refusal_native(recipes: list[Recipe]) -> str | None:
    from sspo_cli.engines.native.population_loop import population_refusal

    return population_refusal(recipes)


def _resume_native(run_dir: Path, info: RunInfo, recipe: Recipe, options: RunOptions) -> dict[str, Any]:
    from sspo_cli.engines.native.loop import resume_training_native

    return resume_training_native(run_dir, info, recipe, options)


def _check_trl(recipe: Recipe) -> None:
    """TRL's refusals need no torch: `sspo validate` shows them now, not at train time."""
    from sspo_cli.engines.trl.mapping import plan_trl_run

    plan_trl_run(recipe, cuda_available=True, bf16_available=True)  # the hardware is checked at train time


# recipe.engine -> how it trains a recipe; the recipe's `engine` field lists the same names (a test checks).
ENGINES: dict[str, Callable[[Recipe, RunOptions], dict[str, Any]]] = {"native": _train_native, "trl": _train_trl}
RESUMABLE: dict[str, Callable[[Path, RunInfo, Recipe, RunOptions], dict[str, Any]]] = {"native": _resume_native}
CHECKS: dict[str, Callable[[Recipe], None]] = {"trl": _check_trl}  # engines with refusals of their own
# engines that train many seeds of one recipe as one population, and why they would refuse some recipes
POPULATIONS: dict[str, Callable[[list[Recipe], list[RunOptions]], list[dict[str, Any]]]] = {
    "native": _population_native
}
POPULATION_REFUSALS: dict[str, Callable[[list[Recipe]], str | None]] = {"native": _population_refusal_native}


def run_training(recipe: Recipe, options: RunOptions | None = None) -> dict[str, Any]:
    """Train one recipe end to end on its engine and return its summary (also written to summary.json)."""
    return ENGINES[recipe.engine](recipe, options or RunOptions())


def population_refusal(recipes: list[Recipe]) -> str | None:
    """Why `recipes` (one recipe at several seeds) cannot train as one population (None: they can)."""
    refusal = POPULATION_REFUSALS.get(recipes[0].engine)
    return f"engine {recipes[0].engine!r} has no populations" if refusal is None else refusal(recipes)


def run_population(recipes: list[Recipe], options: list[RunOptions]) -> list[dict[str, Any]]:
    """Train `recipes` (one recipe at several seeds) together, each an ordinary run (`options[k]`: member k's tags and
    progress); each member's summary, in order. Check `population_refusal` first."""
    return POPULATIONS[recipes[0].engine](recipes, options)


def resume_training(
    run_dir: str | Path, tracking_uri: str | None = None, observer: TrainingObserver | None = None
) -> dict[str, Any]:
    """Continue an interrupted run from its last complete checkpoint, in the same MLflow run, on its own recipe."""
    from sspo_cli.recipe import load_recipe

    run_dir = Path(run_dir)
    info = read_run_folder(run_dir)
    recipe = load_recipe(run_dir / RECIPE_FILE)
    resume = RESUMABLE.get(recipe.engine)
    if resume is None:
        only = ", ".join(RESUMABLE)
        trains = f"{run_dir / RECIPE_FILE} trains with engine {recipe.engine!r}"
        raise CheckpointError("--resume", f"{trains}; only the {only} engine's runs can be resumed")
    return resume(run_dir, info, recipe, RunOptions(run_dir.parent, tracking_uri, observer))


def check_engine_accepts(recipe: Recipe) -> None:
    """Raise the recipe's engine's own refusals (an InputError naming the key), if it has any."""
    check = CHECKS.get(recipe.engine)
    if check is not None:
        check(recipe)
