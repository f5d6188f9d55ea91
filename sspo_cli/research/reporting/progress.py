"""Live progress of a comparison or sweep: runs done, running, failed, reused, and an ETA."""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from sspo_cli.research.execution.execute import Outcome, WorkflowObserver, eta_seconds
from sspo_cli.research.planning.plan import PlannedRun
from sspo_cli.research.reporting.formatting import format_duration
from sspo_cli.run.report import progress_columns
from sspo_cli.run.state import TrainingObserver


class RichWorkflowProgress(WorkflowObserver):
    """One bar over all runs of the workflow, plus (in-process runs) the current run's RL steps."""

    def __init__(self, console: Console, quiet: bool = False):
        self.console = console
        self.quiet = quiet
        self.progress = Progress(
            *progress_columns(eta=False),
            console=console,
            disable=quiet,
        )
        self.overall = None
        self.total = self.done = self.failed = self.reused = 0
        self.running: dict[str, float] = {}
        self.durations: list[float] = []
        self.worker_bars: dict[str, Any] = {}  # fingerprint -> progress task of a run training in a worker
        self.names: dict[str, str] = {}
        self.fraction_done: dict[str, float] = {}
        self.lock = threading.RLock()
        self.jobs = 1
        self.to_train = 0
        self.step_task = None

    def __enter__(self) -> RichWorkflowProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_plan(self, total: int, reused: int, to_train: int, jobs: int) -> None:
        self.total, self.jobs, self.to_train = total, jobs, to_train
        self.overall = self.progress.add_task("runs", total=reused + to_train, info="")
        self.console.print(
            f"[dim]{total} planned runs: {reused} reused (finished before, same recipe), {to_train} to train, {jobs} at a time[/dim]"
        )

    def on_populations(self, sizes: list[int]) -> None:
        counts = ", ".join(str(size) for size in sizes)
        self.console.print(
            f"[dim]{sum(sizes)} of them train as {len(sizes)} population(s) of {counts} seeds, each still its own run "
            "(--population off: one by one)[/dim]"
        )

    def on_run_start(self, planned: PlannedRun) -> None:
        with self.lock:
            self.running[planned.fingerprint] = time.perf_counter()
            self.names[planned.fingerprint] = planned.display_name
            self._refresh()

    def on_run_progress(self, fingerprint: str, step: int, total: int) -> None:
        with self.lock:  # called from the thread that relays the workers' messages
            if fingerprint not in self.running:  # a late message of a run that has ended
                return
            bar = self.worker_bars.get(fingerprint)
            if bar is None:
                bar = self.progress.add_task(f"RL {escape(self.names[fingerprint])}", total=total, info="")
                self.worker_bars[fingerprint] = bar
            self.progress.update(bar, completed=step, total=total)
            self.fraction_done[fingerprint] = step / max(total, 1)
            self._refresh()

    def on_run_end(self, outcome: Outcome) -> None:
        with self.lock:
            fingerprint = outcome.planned.fingerprint
            self.running.pop(fingerprint, None)
            self.fraction_done.pop(fingerprint, None)
            if (bar := self.worker_bars.pop(fingerprint, None)) is not None:
                self.progress.remove_task(bar)
            self._record_end(outcome)

    def _record_end(self, outcome: Outcome) -> None:
        self.done += 1
        if outcome.state == "reused":
            self.reused += 1
        elif outcome.state == "failed":
            self.failed += 1
            self.console.print(
                f"[red]failed[/red] {outcome.planned.display_name}: {escape(outcome.error or '')}",
                highlight=False,
                soft_wrap=True,
            )
        if outcome.state in ("trained", "failed", "pruned"):
            self.durations.append(outcome.seconds)
        if outcome.state == "trained":
            self.console.print(
                f"[green]done[/green] {outcome.planned.display_name} ({format_duration(outcome.seconds)})",
                highlight=False,
            )
        elif outcome.state == "pruned":
            self.console.print(
                f"[yellow]pruned[/yellow] {outcome.planned.display_name}: {escape(outcome.error or '')} "
                f"({format_duration(outcome.seconds)})",
                highlight=False,
            )
        self._refresh()

    def _refresh(self) -> None:
        if self.overall is None:
            return
        remaining = self.to_train - (len(self.durations))
        eta = eta_seconds(self.durations or self._projected_durations(), remaining, self.jobs)
        info = f"done {self.done - self.failed} · running {len(self.running)} · failed {self.failed} · reused {self.reused} · ETA {format_duration(eta)}"
        self.progress.update(self.overall, completed=self.done, info=info)

    def _projected_durations(self) -> list[float]:
        """Before any run has ended: the running runs' durations projected from their share of steps done."""
        now = time.perf_counter()
        return [(now - self.running[fp]) / done for fp, done in self.fraction_done.items() if done >= 0.05]

    def training_observer(self) -> TrainingObserver | None:
        return _StepObserver(self)


class _StepObserver(TrainingObserver):
    """The warm start and RL steps of the run being trained in this process."""

    def __init__(self, owner: RichWorkflowProgress):
        self.owner = owner

    def on_phase(self, message: str) -> None: ...

    def on_warm_start(self, step: int, total: int, dev_accuracy: float | None) -> None:
        self._show("warm start", step, total, "" if dev_accuracy is None else f"dev acc {dev_accuracy:.1%}")

    def on_start(self, total_steps: int, run_name: str, run_dir) -> None:
        self._show(f"RL {run_name}", 0, total_steps, "")

    def on_step(self, step: int, metrics: dict[str, float]) -> None:
        self._show(None, step, None, f"reward {metrics.get('train/reward', float('nan')):.3f}")

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self._show(None, step, None, f"eval acc {metrics.get('eval/accuracy', float('nan')):.1%}")

    def _show(self, description: str | None, completed: int, total: int | None, info: str) -> None:
        progress = self.owner.progress
        if self.owner.step_task is None:
            self.owner.step_task = progress.add_task(description or "run", total=total or 1, info=info)
            return
        fields = {"completed": completed, "info": info}
        if description is not None:
            fields["description"] = description
        if total is not None:
            fields["total"] = total
        progress.update(self.owner.step_task, **fields)
