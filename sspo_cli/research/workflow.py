"""The one template of `sspo compare`, `sspo sweep`, a study and a search: plan, open the group (parent)
MLflow run, execute (reuse finished runs, train the rest with `--jobs`), analyse, report, finish.

A workflow supplies only what differs, as a `Workflow`: its checks, its plan, the group run the plan asks
for, and how it concludes inside that run (execute, analyse, report). `run_workflow` does the rest, the
same for all: the phases of the timer, the checks every workflow shares, the group run opened before
anything trains and marked KILLED or FAILED if the workflow does not finish.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from sspo_cli.recipe import stable_hash
from sspo_cli.research import ResearchError
from sspo_cli.research.analysis.measures import GroupSummary, RunRecord, Threshold, auto_threshold, summarize
from sspo_cli.research.analysis.stats import INTERVAL_METHODS, T_METHOD
from sspo_cli.research.execution.execute import (
    ExecutionContext,
    Outcome,
    WorkflowObserver,
    check_jobs,
    execute,
    tracking_store,
)
from sspo_cli.research.execution.readback import records_of_outcomes
from sspo_cli.research.execution.store import close_group_run, membership_filter, open_group_run
from sspo_cli.research.execution.timing import PhaseTimer
from sspo_cli.research.planning.plan import PlannedRun
from sspo_cli.research.reporting.outputs import WorkflowResult
from sspo_cli.run.tracking import Tracker, failure_marked

PlanT = TypeVar("PlanT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class WorkflowOptions:
    """How and where a workflow runs: the options `sspo compare` and `sspo sweep` share."""

    output_dir: Path = Path("runs")  # run folders, the warm-start cache, reports, the default MLflow store
    tracking_uri: str | None = None  # None: sqlite:///<output_dir>/mlflow.db
    jobs: int = 1  # runs (trials) trained at once, each in a process of its own
    threshold: float | None = None  # accuracy for steps_to_threshold; None: auto_threshold
    report_dir: Path | None = None  # None: a folder named after the group under output_dir
    interval: str = T_METHOD  # of the main table: "t" or "bootstrap"
    observer: WorkflowObserver | None = None  # the live progress; None: none
    population: int | None = None  # most seeds of one recipe trained together; None: auto, 1: off (`--population`)

    def report_folder(self, name: str) -> Path:
        return self.report_dir or self.output_dir / name


@dataclass(frozen=True)
class GroupRun:
    """The group (parent) run a plan asks for, and where its outputs go."""

    kind: str  # the sspo.kind tag: comparison, sweep, study, search
    group_id: str
    experiment: str
    run_name: str
    params: dict[str, Any]
    title: str
    out_dir: Path
    parent_run_id: str | None = None  # a study's point is nested under the study's run


@dataclass
class Session:
    """A workflow under way: its options and the tracking URI they resolve to, its group run, its timer."""

    options: WorkflowOptions
    tracking_uri: str
    group: GroupRun
    tracker: Tracker
    timer: PhaseTimer = field(default_factory=PhaseTimer)

    @property
    def observer(self) -> WorkflowObserver:
        return self.options.observer or WorkflowObserver()

    def execute(self, runs: Sequence[PlannedRun]) -> list[Outcome]:
        """Reuse or train `runs` under the group run; one outcome per run, in plan order."""
        where = (self.options.output_dir, self.tracking_uri, self.group.group_id, self.tracker.run_id)
        options = self.options
        return execute(runs, ExecutionContext(*where, options.jobs, self.observer, self.timer, options.population))

    def records(self, outcomes: Sequence[Outcome]) -> list[RunRecord]:
        with self.timer.phase("loading records"):
            return records_of_outcomes(self.tracker.client, outcomes)

    def summarize(self, records: Sequence[RunRecord], order: Sequence[str]) -> tuple[list[GroupSummary], Threshold]:
        """Each group's numbers at the threshold (--threshold, else the automatic one); the report folder made."""
        with self.timer.phase("analysis"):
            self.group.out_dir.mkdir(parents=True, exist_ok=True)
            threshold = self.options.threshold
            chosen = Threshold(threshold, "--threshold") if threshold is not None else auto_threshold(records)
            return summarize(records, chosen.value, order, method=self.options.interval), chosen

    def mlflow_links(self) -> dict[str, str]:
        """Where the runs are, as the JSON outputs record it."""
        return {
            "tracking_uri": self.tracking_uri,
            "parent_run_id": self.tracker.run_id,
            "runs_filter": membership_filter(self.group.group_id),
        }

    def close(self, files: dict[str, Path], ok: bool, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        """Log the outputs and the timing on the group run and end it (FAILED unless `ok`); the timing."""
        return close_group_run(self.tracker, files, self.timer, ok, metrics)

    def where(self, files: dict[str, Path], timing: dict[str, Any]) -> dict[str, Any]:
        """The fields of `WorkflowResult`: where the outputs and the runs are."""
        group = self.group
        return {
            "group_id": group.group_id,
            "title": group.title,
            "out_dir": group.out_dir,
            "files": files,
            "timing": timing,
            "parent_run_id": self.tracker.run_id,
            "tracking_uri": self.tracking_uri,
        }


@dataclass(kw_only=True)
class GroupsResult(WorkflowResult):
    """A workflow whose runs form groups (methods or grid points), each summarised."""

    summaries: list[GroupSummary]
    records: list[RunRecord]
    outcomes: list[Outcome]
    threshold: Threshold
    interval: str = T_METHOD

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


class Workflow(ABC, Generic[PlanT, ResultT]):
    """What one workflow supplies to `run_workflow`: everything else is the same for all."""

    def check(self, options: WorkflowOptions) -> None:
        """Options checked before planning (default: the interval of the main table)."""
        check_interval(options.interval)

    @abstractmethod
    def plan(self, options: WorkflowOptions) -> PlanT:
        """Every run, each recipe validated before anything trains."""

    @abstractmethod
    def group(self, plan: PlanT, options: WorkflowOptions) -> GroupRun:
        """The group (parent) MLflow run the plan's runs nest under."""

    def hold(self, plan: PlanT, options: WorkflowOptions, timer: PhaseTimer) -> AbstractContextManager[Any]:
        """Held while the group run is open; yields what `conclude` works on (default: the plan)."""
        return nullcontext(plan)

    @abstractmethod
    def conclude(self, held: Any, session: Session) -> ResultT:
        """Execute, analyse, report and close the group run."""


def run_workflow(workflow: Workflow[PlanT, ResultT], options: WorkflowOptions) -> ResultT:
    """Plan, open the group run, conclude; the group run ends KILLED or FAILED if concluding does not finish."""
    timer = PhaseTimer()
    with timer.phase("planning"):
        workflow.check(options)
        check_jobs(options.jobs)
        plan = workflow.plan(options)
        tracking_uri = tracking_store(options.output_dir, options.tracking_uri)
        group = workflow.group(plan, options)
    with workflow.hold(plan, options, timer) as held:
        with timer.phase("group run"):
            tracker = open_group(group, tracking_uri, options.output_dir)
        with failure_marked(tracker):
            return workflow.conclude(held, Session(options, tracking_uri, group, tracker, timer))


def open_group(group: GroupRun, tracking_uri: str, output_dir: Path) -> Tracker:
    """The group's run: the same one again when the same group is run again."""
    return open_group_run(
        tracking_uri,
        group.experiment,
        group.kind,
        group.group_id,
        group.run_name,
        group.params,
        output_dir / "mlartifacts",
        parent_run_id=group.parent_run_id,
    )


def group_id_of(kind: str, plan: Sequence[PlannedRun]) -> str:
    """Same planned runs, same id: re-running a comparison finds its parent run again."""
    return stable_hash({"kind": kind, "runs": [[p.group, p.fingerprint] for p in plan]})[:12]


def check_interval(method: str) -> str:
    if method not in INTERVAL_METHODS:
        raise ResearchError("--interval", f"unknown interval {method!r} (choose from {', '.join(INTERVAL_METHODS)})")
    return method


def seeds_text(seeds: int) -> str:
    return f"{seeds} seed{'s' if seeds > 1 else ''}"
