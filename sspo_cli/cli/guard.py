"""How a command of either CLI ends: exit codes and the one message each way of failing gets.

    bad input (`InputError`)             -> one line naming the file and key, exit 2
    a stop after a checkpoint            -> how to resume, exit 130
    Ctrl-C or SIGTERM before training    -> exit 130
    too many non-finite updates in a row -> where the last good state is, exit 1

`--debug` lets the Python traceback through instead. Importing this module imports no more than
typer and our small error, signal and run-state modules; Rich and the recipe load when a command fails.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from sspo_cli.errors import InputError
from sspo_cli.run.state import TooManySkips
from sspo_cli.signals import EXIT_INTERRUPTED, RunInterrupted, TermAsKeyboardInterrupt

if TYPE_CHECKING:
    from rich.console import Console


EXIT_FAILED = 1  # the run (or a run of a comparison) failed
EXIT_BAD_INPUT = 2

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "guarded"]


def guarded(
    debug: bool, action: Callable[[], None], recipe_file: Path | None = None, interrupted_hint: str | None = None
) -> None:
    """Run a command's action; turn its known ways of failing into a message and an exit code.

    `recipe_file` goes in front of errors whose key is a recipe key. `interrupted_hint`, when given,
    is what any interruption prints (a comparison or sweep says how to continue it).
    """
    try:
        with TermAsKeyboardInterrupt():
            action()
    except KeyboardInterrupt as stop:
        if interrupted_hint is not None and not debug:
            _err().print(f"[yellow]interrupted[/yellow]: {interrupted_hint}", highlight=False)
        elif isinstance(stop, RunInterrupted):
            _report_stop(stop)
        elif debug:
            raise
        else:
            _err().print("[yellow]interrupted[/yellow] (before training started: nothing to resume)", highlight=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except InputError as exc:
        if debug:
            raise
        from rich.markup import escape

        # escaped: a message may hold brackets ("pip install -e '.[lora]'") that Rich would take for markup
        _err().print(
            f"[red]error:[/red] {escape(describe_bad_input(exc, recipe_file))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(EXIT_BAD_INPUT) from None
    except TooManySkips as exc:
        if debug:
            raise
        _report_too_many_skips(exc)
        raise typer.Exit(EXIT_FAILED) from None


def describe_bad_input(exc: InputError, recipe_file: Path | None) -> str:
    """The error's own text; a recipe error renders its list, and a recipe key gets the file in front."""
    from sspo_cli.recipe import RecipeError, names_recipe_key

    if isinstance(exc, RecipeError):
        return exc.render()
    if recipe_file is not None and names_recipe_key(exc.key):
        return f"{recipe_file}: {exc}"
    return str(exc)


def _err() -> Console:
    from sspo_cli.run.report import err_console

    return err_console


def _report_stop(stop) -> None:
    err = _err()
    err.print(
        f"[yellow]stopped[/yellow] ({stop.signal_name}) after step {stop.step}; checkpoint: {stop.checkpoint}",
        highlight=False,
        soft_wrap=True,
    )
    err.print(f"resume with:  sspo train --resume {shlex.quote(str(stop.run_dir))}", highlight=False, soft_wrap=True)


def _report_too_many_skips(exc: TooManySkips) -> None:
    err = _err()
    err.print(
        f"[red]stopped:[/red] {exc}" + (f" at step {exc.step}" if exc.step is not None else ""),
        highlight=False,
        soft_wrap=True,
    )
    if exc.checkpoint is not None:
        err.print(
            f"the last good state (weights and optimizer before the skipped updates) is saved in {exc.checkpoint}",
            highlight=False,
            soft_wrap=True,
        )
        err.print(
            f"resume with:  sspo train --resume {shlex.quote(str(exc.run_dir))}\n"
            "or start a new run from those weights with a smaller train.lr:  "
            f"--set model.path={shlex.quote(str(exc.checkpoint))}",
            highlight=False,
            soft_wrap=True,
        )
