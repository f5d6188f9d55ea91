"""The `sspo` command line: parse, call, render. No training logic lives here."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

app = typer.Typer(
    name="sspo",
    help="RL for language models with group-based policy objectives (SSPO, GRPO, GSPO, GMPO, SAPO).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override a recipe key: dotted.key=value (repeatable).")]
OutputOpt = Annotated[Path, typer.Option("--output-dir", "-o", help="Where run folders, the warm-start cache and the default MLflow store go.")]
TrackingOpt = Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow tracking URI (default: sqlite:///<output-dir>/mlflow.db).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show Python tracebacks.")]

ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue an interrupted run from its last checkpoint: give the run folder (it holds recipe.yaml and run.json). Takes no RECIPE, --set or --output-dir.", show_default=False)]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

# Errors whose key is a recipe key get the recipe file in front of it.
RECIPE_SECTIONS = ("model.", "task.", "rollout.", "objective.", "train.", "eval.", "tracking.")


class UsageProblem(ValueError):
    """Options that do not go together; names them."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}")


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """Errors that mean 'your input is wrong': each carries a message naming the file or key."""
    from sspo_cli.recipe import RecipeError

    types: list[type[BaseException]] = [RecipeError, UsageProblem]
    for module, name in (
        ("sspo_cli.tasks", "TaskError"),
        ("sspo_cli.models", "ModelError"),
        ("sspo_cli.tracking", "TrackingError"),
        ("sspo_cli.trainer", "OutputError"),
        ("sspo_cli.checkpoint", "CheckpointError"),
        ("sspo_cli.warm_start", "WarmStartMissed"),
        ("sspo_cli.engines.trl_mapping", "TrlEngineError"),
        ("sspo_cli.research", "ResearchError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, name):
            types.append(getattr(loaded, name))
    return tuple(types)


def _describe_bad_input(exc: BaseException, recipe_file: Path | None) -> str:
    if hasattr(exc, "render"):
        return exc.render()
    key = getattr(exc, "key", "")
    if recipe_file is not None and isinstance(key, str) and key.startswith(RECIPE_SECTIONS):
        return f"{recipe_file}: {exc}"
    return str(exc)


def _guarded(debug: bool, action: Callable[[], None], recipe_file: Path | None = None) -> None:
    """Run a command: bad input prints one message and exits 2, a signal exits 130 (after a checkpoint
    once training has started), too many non-finite updates exit 1. `--debug` shows tracebacks."""
    from sspo_cli.report import err_console
    from sspo_cli.signals import RunInterrupted, TermAsKeyboardInterrupt

    try:
        with TermAsKeyboardInterrupt():
            action()
    except RunInterrupted as stop:
        err_console.print(f"[yellow]stopped[/yellow] ({stop.signal_name}) after step {stop.step}; checkpoint: {stop.checkpoint}", highlight=False, soft_wrap=True)
        err_console.print(f"resume with:  sspo train --resume {shlex.quote(str(stop.run_dir))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except KeyboardInterrupt:
        if debug:
            raise
        err_console.print("[yellow]interrupted[/yellow] (before training started: nothing to resume)", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, _bad_input_types()):
            err_console.print(f"[red]error:[/red] {_describe_bad_input(exc, recipe_file)}", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        from sspo_cli.checkpoint import TooManySkips

        if isinstance(exc, TooManySkips):
            _report_too_many_skips(exc, err_console)
            raise typer.Exit(EXIT_FAILED) from None
        raise


def _report_too_many_skips(exc: Any, err_console: Any) -> None:
    err_console.print(f"[red]stopped:[/red] {exc}" + (f" at step {exc.step}" if exc.step is not None else ""), highlight=False, soft_wrap=True)
    if exc.checkpoint is not None:
        err_console.print(f"the last good state (weights and optimizer before the skipped updates) is saved in {exc.checkpoint}", highlight=False, soft_wrap=True)
        err_console.print(
            f"resume with:  sspo train --resume {shlex.quote(str(exc.run_dir))}\n"
            f"or start a new run from those weights with a smaller train.lr:  --set model.path={shlex.quote(str(exc.checkpoint))}",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Check a recipe and print it resolved, with every default filled in."""
    from sspo_cli.recipe import load_recipe, to_yaml

    def action() -> None:
        resolved = load_recipe(recipe, set_ or [])
        if resolved.engine == "trl":  # TRL's refusals need no torch: show them now, not at train time
            from sspo_cli.engines.trl_mapping import plan_trl_run

            plan_trl_run(resolved, cuda_available=True, bf16_available=True)  # hardware is checked at train time
        typer.echo(to_yaml(resolved), nl=False)

    _guarded(debug, action, recipe)


@app.command()
def train(
    recipe: Annotated[Optional[Path], typer.Argument(help="Recipe YAML file (not with --resume).", show_default=False)] = None,
    set_: SetOpt = None,
    output_dir: Annotated[Optional[Path], typer.Option("--output-dir", "-o", help="Where run folders, the warm-start cache and the default MLflow store go (default: runs).", show_default=False)] = None,
    tracking_uri: TrackingOpt = None,
    resume: ResumeOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Train a policy on a recipe: warm start (cached), RL steps, eval, MLflow.

    Ctrl-C (or SIGTERM) stops after the current step and writes a checkpoint; --resume RUN_DIR continues the run in the same MLflow run and ends exactly as an uninterrupted run would. A second Ctrl-C quits at once, keeping the last complete checkpoint.
    """

    def action() -> None:
        check_train_options(recipe, set_, output_dir, resume)
        from sspo_cli.report import RichProgress, print_summary

        if resume is not None:
            from sspo_cli.trainer import resume_training

            with RichProgress(quiet=quiet) as progress:
                summary = resume_training(resume, tracking_uri=tracking_uri, observer=progress)
        else:
            from sspo_cli.recipe import load_recipe

            resolved = load_recipe(recipe, set_ or [])
            from sspo_cli.trainer import run_training

            with RichProgress(quiet=quiet) as progress:
                summary = run_training(resolved, output_dir=output_dir or Path("runs"), tracking_uri=tracking_uri, observer=progress)
        if summary.get("main_process", True):  # under `accelerate launch` only the main process reports
            print_summary(summary)

    recipe_file = resume / "recipe.yaml" if resume is not None else recipe
    _guarded(debug, action, recipe_file)


def check_train_options(recipe: Path | None, overrides: list[str] | None, output_dir: Path | None, resume: Path | None) -> None:
    """`--resume` trains the run folder's own recipe, unchanged: that is what makes the result exact."""
    if resume is None:
        if recipe is None:
            raise UsageProblem("RECIPE", "give a recipe file to train, or --resume RUN_DIR to continue a run")
        return
    if recipe is not None:
        raise UsageProblem("--resume", f"takes no RECIPE ({recipe}): a resumed run always trains {resume / 'recipe.yaml'}")
    if overrides:
        raise UsageProblem("--resume", "takes no --set: a resumed run trains its recipe unchanged (to change options, start a new run with --set model.path=RUN_DIR/checkpoints/step-N)")
    if output_dir is not None:
        raise UsageProblem("--resume", "takes no --output-dir: the run stays in its own folder")


def _register_research_commands() -> None:
    from sspo_cli.research.cli import register

    register(app)


_register_research_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
