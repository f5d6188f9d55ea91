"""`python -m sspo_cli.research`: the research commands on their own (what `sspo` adds via `register`)."""

from __future__ import annotations

import typer

from sspo_cli.research.cli import register


def build_app() -> typer.Typer:
    app = typer.Typer(name="sspo-research", no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
    register(app)
    return app


if __name__ == "__main__":
    build_app()()
