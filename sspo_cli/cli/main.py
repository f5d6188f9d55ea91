"""The `sspo` command line: parse, call, render. No training logic lives here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from sspo_cli.cli.guard import guarded
from sspo_cli.cli.research import DebugOpt, TrackingOpt, register
from sspo_cli.errors import InputError

app = typer.Typer(
    name="sspo",
    help="RL for language models with group-based policy objectives (SSPO, GRPO, GSPO, GMPO, SAPO).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

RecipeArg = Annotated[Path, typer.Argument(help="Recipe YAML file.", show_default=False)]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", "-s", help="Override a recipe key: dotted.key=value (repeatable).")
]
OutputOpt = Annotated[
    Path,
    typer.Option("--output-dir", "-o", help="Where run folders, the warm-start cache and the default MLflow store go."),
]

ResumeOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--resume",
        help="Continue an interrupted run from its last checkpoint: give the run folder (it holds recipe.yaml and run.json). Takes no RECIPE, --set or --output-dir.",
        show_default=False,
    ),
]


class UsageProblem(InputError):
    """Options that do not go together; names them."""


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Check a recipe and print it resolved, with every default filled in."""
    from sspo_cli.recipe import load_recipe, to_yaml

    def action() -> None:
        from sspo_cli.engines.dispatch import check_engine_accepts

        resolved = load_recipe(recipe, set_ or [])
        check_engine_accepts(resolved)
        typer.echo(to_yaml(resolved), nl=False)

    guarded(debug, action, recipe)


@app.command()
def train(
    recipe: Annotated[
        Optional[Path], typer.Argument(help="Recipe YAML file (not with --resume).", show_default=False)
    ] = None,
    set_: SetOpt = None,
    output_dir: Annotated[
        Optional[Path],
        typer.Option(
            "--output-dir",
            "-o",
            help="Where run folders, the warm-start cache and the default MLflow store go (default: runs).",
            show_default=False,
        ),
    ] = None,
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
        from sspo_cli.run.report import RichProgress, print_summary

        if resume is not None:
            from sspo_cli.engines.dispatch import resume_training

            with RichProgress(quiet=quiet) as progress:
                summary = resume_training(resume, tracking_uri=tracking_uri, observer=progress)
        else:
            from sspo_cli.recipe import load_recipe

            resolved = load_recipe(recipe, set_ or [])
            from sspo_cli.engines.dispatch import run_training
            from sspo_cli.run.state import RunOptions

            with RichProgress(quiet=quiet) as progress:
                options = RunOptions(output_dir or Path("runs"), tracking_uri, progress)
                summary = run_training(resolved, options)
        if summary.get("main_process", True):  # under `accelerate launch` only the main process reports
            print_summary(summary)

    recipe_file = resume / "recipe.yaml" if resume is not None else recipe
    guarded(debug, action, recipe_file)


def check_train_options(
    recipe: Path | None, overrides: list[str] | None, output_dir: Path | None, resume: Path | None
) -> None:
    """`--resume` trains the run folder's own recipe, unchanged: that is what makes the result exact."""
    if resume is None:
        if recipe is None:
            raise UsageProblem("RECIPE", "give a recipe file to train, or --resume RUN_DIR to continue a run")
        return
    if recipe is not None:
        raise UsageProblem(
            "--resume", f"takes no RECIPE ({recipe}): a resumed run always trains {resume / 'recipe.yaml'}"
        )
    if overrides:
        raise UsageProblem(
            "--resume",
            "takes no --set: a resumed run trains its recipe unchanged (to change options, start a new run with --set model.path=RUN_DIR/checkpoints/step-N)",
        )
    if output_dir is not None:
        raise UsageProblem("--resume", "takes no --output-dir: the run stays in its own folder")


register(app)  # eval, compare, sweep


def main() -> None:
    app()


if __name__ == "__main__":
    main()
