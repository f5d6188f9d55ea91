"""What the user sees in the terminal: live progress and end-of-run summaries (Rich)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from sspo_cli.run.state import TrainingObserver
from sspo_cli.run.tracking import runs_view_url

console = Console()
err_console = Console(stderr=True)


def progress_columns(eta: bool = True) -> tuple[ProgressColumn, ...]:
    """The columns of every live bar: what, the bar, done of total, the latest figures, time; with `eta`, the
    time left (a workflow's own ETA sits in its figures instead: its runs are of unequal length)."""
    columns: list[ProgressColumn] = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    ]
    return tuple(columns + [TextColumn("eta"), TimeRemainingColumn()] if eta else columns)


class RichProgress(TrainingObserver):
    """A live progress bar for the warm start and the RL steps, with reward and accuracy."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = Progress(
            *progress_columns(),
            console=console,
            disable=quiet,
            transient=False,
        )
        self.task_id: Any = None
        self.warm_id: Any = None
        self.last_eval = ""

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_phase(self, message: str) -> None:
        if not self.quiet:
            self.progress.console.print(f"[dim]{message}[/dim]")

    def on_warm_start(self, step: int, total: int, dev_accuracy: float | None) -> None:
        if self.warm_id is None:
            self.warm_id = self.progress.add_task("warm start", total=total, info="")
        info = f"dev acc {dev_accuracy:.1%}" if dev_accuracy is not None else None
        self.progress.update(self.warm_id, completed=step, **({"info": info} if info else {}))

    def on_start(self, total_steps: int, run_name: str, run_dir: Path) -> None:
        if self.warm_id is not None:
            self.progress.update(self.warm_id, total=self.progress.tasks[self.warm_id].completed)
        self.progress.console.print(f"run [bold]{run_name}[/bold] -> {run_dir}")
        self.task_id = self.progress.add_task("RL", total=total_steps, info="")

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        info = f"reward {metrics['train/reward']:.3f}  sat {metrics.get('grad_weight/saturated_frac', float('nan')):.2f}  {self.last_eval}"
        self.progress.update(self.task_id, completed=step, info=info)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.last_eval = f"eval acc {metrics['eval/accuracy']:.1%}"
        if self.task_id is not None:
            self.progress.update(self.task_id, info=self.last_eval)
        self.progress.console.print(
            f"  eval @ step {step}: accuracy {metrics['eval/accuracy']:.1%}, mean reward {metrics['eval/mean_reward']:.3f}"
        )


def print_summary(summary: dict[str, Any]) -> None:
    before, after = summary["eval_before"], summary["eval_after"]
    table = Table(
        title=f"{summary['run_name']}  ({summary['objective']}, seed {summary['seed']}, {summary['steps']} steps, {summary['wall_seconds']:.0f} s)"
    )
    table.add_column("held-out eval")
    table.add_column("before RL", justify="right")
    table.add_column("after RL", justify="right")
    table.add_column("change", justify="right")
    for key, fmt in (("accuracy", "{:.1%}"), ("mean_reward", "{:.3f}"), ("mean_length", "{:.2f}")):
        delta = after[key] - before[key]
        colour = "green" if delta > 0 else "red" if delta < 0 else ""
        sign = "+" if delta >= 0 else ""
        table.add_row(
            key,
            fmt.format(before[key]),
            fmt.format(after[key]),
            f"[{colour}]{sign}{fmt.format(delta)}[/]" if colour else f"{sign}{fmt.format(delta)}",
        )
    console.print(table)

    diagnostics = summary.get("diagnostics") or {}
    if diagnostics:
        diag = Table(title="importance ratios and gates over training (per-step values)")
        diag.add_column("metric")
        for column in ("mean", "p95", "max"):
            diag.add_column(column, justify="right")
        for key, stats in diagnostics.items():
            diag.add_row(key, *(f"{stats[c]:.4g}" for c in ("mean", "p95", "max")))
        console.print(diag)
    if summary.get("warm_start"):
        ws = summary["warm_start"]
        target = (
            ""
            if ws.get("target") is None
            else f", target {ws['target']:.1%}" + ("" if ws["reached_target"] else " [yellow]MISSED[/yellow]")
        )
        console.print(
            f"warm start: {ws['steps']} steps, dev accuracy {ws['dev_accuracy']:.1%}{target}{' (from cache)' if ws['cached'] else ''}"
        )
    console.print(
        f"MLflow run [bold]{summary['run_id']}[/bold] in experiment '{summary['experiment']}' at {summary['tracking_uri']}"
    )
    console.print(f"run folder: {summary['run_dir']}")
    console.print(
        f"open the UI: mlflow ui --backend-store-uri {summary['tracking_uri']}, then "
        f"{runs_view_url(summary['experiment_id'])}",
        soft_wrap=True,
    )
