"""The `sspo` command line: parse, call, render. No training logic lives here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Callable, Optional

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

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """Errors that mean 'your input is wrong': each carries a message naming the file or key."""
    from sspo_cli.recipe import RecipeError

    types: list[type[BaseException]] = [RecipeError]
    for module, name in (
        ("sspo_cli.tasks", "TaskError"),
        ("sspo_cli.models", "ModelError"),
        ("sspo_cli.tracking", "TrackingError"),
        ("sspo_cli.trainer", "OutputError"),
        ("sspo_cli.checkpoint", "CheckpointError"),
    ):
        loaded = sys.modules.get(module)
        if loaded is not None and hasattr(loaded, name):
            types.append(getattr(loaded, name))
    return tuple(types)


def _guarded(debug: bool, action: Callable[[], None]) -> None:
    """Run a command; bad input prints one message and exits 2, Ctrl-C exits 130."""
    from sspo_cli.report import err_console

    try:
        action()
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, _bad_input_types()):
            err_console.print(f"[red]error:[/red] {exc.render() if hasattr(exc, 'render') else exc}", highlight=False)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        from sspo_cli.checkpoint import TooManySkips

        if isinstance(exc, TooManySkips):
            err_console.print(f"[red]stopped:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        raise


@app.command()
def validate(recipe: RecipeArg, set_: SetOpt = None, debug: DebugOpt = False) -> None:
    """Check a recipe and print it resolved, with every default filled in."""
    from sspo_cli.recipe import load_recipe, to_yaml

    def action() -> None:
        resolved = load_recipe(recipe, set_ or [])
        typer.echo(to_yaml(resolved), nl=False)

    _guarded(debug, action)


@app.command()
def train(
    recipe: RecipeArg,
    set_: SetOpt = None,
    output_dir: OutputOpt = Path("runs"),
    tracking_uri: TrackingOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No live progress.")] = False,
    debug: DebugOpt = False,
) -> None:
    """Train a policy on a recipe: warm start (cached), RL steps, eval, MLflow."""
    from sspo_cli.recipe import load_recipe

    def action() -> None:
        resolved = load_recipe(recipe, set_ or [])
        from sspo_cli.report import RichProgress, print_summary
        from sspo_cli.trainer import run_training

        with RichProgress(quiet=quiet) as progress:
            summary = run_training(resolved, output_dir=output_dir, tracking_uri=tracking_uri, observer=progress)
        print_summary(summary)

    _guarded(debug, action)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
