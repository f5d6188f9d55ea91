"""What a comparison measures per run, and how runs of one group (method or sweep point) combine.

Pure: records in, numbers out. Loading records from run folders or MLflow lives in `execution/readback.py`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from sspo_cli.research.analysis.stats import (
    CONFIDENCE,
    T_METHOD,
    Interval,
    curve_mean,
    finite,
    first_step_reaching,
    mean,
    mean_bootstrap_interval,
    t_interval,
    tail_mean,
)

Better = Literal["higher", "lower"] | None
Kind = Literal["percent", "float", "sci", "steps", "seconds"]


@dataclass(frozen=True)
class MetricSpec:
    key: str
    label: str
    better: Better  # None: no "best" (e.g. entropy: neither end is good by itself)
    kind: Kind
    description: str
    failed_score: float | None = None  # what a run that failed scores (None: it has no value)


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(
        "final_accuracy",
        "final acc",
        "higher",
        "percent",
        "greedy held-out accuracy at the last step",
        failed_score=0.0,
    ),
    MetricSpec(
        "final_reward",
        "final reward",
        "higher",
        "float",
        "greedy held-out mean task reward at the last step (partial credit: moves before exact answers do)",
        failed_score=0.0,
    ),
    MetricSpec(
        "best_accuracy",
        "best acc",
        "higher",
        "percent",
        "best greedy held-out accuracy over the run's evals",
        failed_score=0.0,
    ),
    MetricSpec(
        "reward_auc",
        "reward AUC",
        "higher",
        "float",
        "area under the train/reward curve divided by the step span (mean reward over training)",
    ),
    MetricSpec(
        "steps_to_threshold",
        "steps to thr",
        "lower",
        "steps",
        "first eval step whose accuracy reaches the threshold (seeds that never reach it are left out)",
    ),
    MetricSpec(
        "seq_var",
        "weight/seq_var",
        "lower",
        "sci",
        "mean over steps of weight/seq_var (variance of the sequence importance weight)",
    ),
    MetricSpec("saturated_frac", "saturated", "lower", "percent", "mean over steps of grad_weight/saturated_frac"),
    MetricSpec("final_entropy", "final entropy", None, "float", "mean train/entropy over the last 10% of steps"),
    MetricSpec("wall_seconds", "wall time", "lower", "seconds", "RL wall time of the run (warm start excluded)"),
)
METRIC_KEYS = tuple(spec.key for spec in METRICS)
# What the statistics of a comparison can lead with: a held-out score that exists per problem, so it can be paired.
HEADLINE_METRICS = ("final_accuracy", "final_reward")

COLLAPSE_FRACTION = 0.5
FAILED_RULE = (
    "a run that failed (no final eval) stays in the statistics with 0% held-out accuracy (final and best) "
    "and no other metric"
)
COLLAPSE_RULE = (
    f"collapsed: finished, but its final held-out accuracy is below {COLLAPSE_FRACTION:.0%} of its own starting "
    "accuracy (kept with its measured scores)"
)


def metric_spec(key: str) -> MetricSpec:
    for spec in METRICS:
        if spec.key == key:
            return spec
    from sspo_cli.research import ResearchError

    raise ResearchError("--metric", f"unknown metric {key!r} (choose from {', '.join(METRIC_KEYS)})")


@dataclass
class Curves:
    """Per-step training metrics and the periodic evals of one run."""

    eval_steps: list[int] = field(default_factory=list)
    eval_accuracy: list[float] = field(default_factory=list)
    eval_reward: list[float] = field(default_factory=list)  # held-out mean task reward at each eval step
    steps: list[int] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    seq_var: list[float] = field(default_factory=list)
    saturated_frac: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)


@dataclass
class RunRecord:
    run_id: str
    group: str  # the method (compare) or the grid point (sweep) this run belongs to
    seed: int
    wall_seconds: float
    curves: Curves
    run_name: str = ""
    run_dir: str | None = None
    reused: bool = False
    task: str = ""  # the stratum of the stratified bootstrap
    failed: bool = False  # trained but did not finish: scored by FAILED_RULE
    error: str | None = None


def failed_record(group: str, seed: int, task: str, error: str | None, run_id: str = "") -> RunRecord:
    """A run that failed, as the statistics count it (see FAILED_RULE)."""
    return RunRecord(
        run_id,
        group,
        seed,
        math.nan,
        Curves(),
        run_name=f"{group} seed {seed} (failed)",
        task=task,
        failed=True,
        error=error,
    )


def is_collapsed(record: RunRecord) -> bool:
    """COLLAPSE_RULE: a finished run whose final accuracy fell below half of its starting accuracy."""
    accuracy = record.curves.eval_accuracy
    if record.failed or len(accuracy) < 2 or not all(math.isfinite(v) for v in (accuracy[0], accuracy[-1])):
        return False
    return accuracy[-1] < COLLAPSE_FRACTION * accuracy[0]


def run_metrics(record: RunRecord, threshold: float) -> dict[str, float]:
    """Every metric of METRICS for one run; NaN where a run has no value (e.g. threshold never reached)."""
    if record.failed:
        return {spec.key: math.nan if spec.failed_score is None else spec.failed_score for spec in METRICS}
    c = record.curves
    return {
        "final_accuracy": c.eval_accuracy[-1] if c.eval_accuracy else math.nan,
        "final_reward": c.eval_reward[-1] if c.eval_reward else math.nan,
        "best_accuracy": max(finite(c.eval_accuracy), default=math.nan),
        "reward_auc": curve_mean(c.steps, c.reward),
        "steps_to_threshold": first_step_reaching(c.eval_steps, c.eval_accuracy, threshold),
        "seq_var": mean(finite(c.seq_var)),
        "saturated_frac": mean(finite(c.saturated_frac)),
        "final_entropy": tail_mean(c.entropy),
        "wall_seconds": record.wall_seconds,
    }


@dataclass(frozen=True)
class Threshold:
    value: float
    how: str  # how it was chosen, for the report


def auto_threshold(records: Sequence[RunRecord]) -> Threshold:
    """Halfway from the mean starting accuracy to the best group's mean final accuracy.

    Scales to any task, unlike a fixed number; `--threshold` overrides it.
    """
    starts = finite([r.curves.eval_accuracy[0] for r in records if r.curves.eval_accuracy])
    groups: dict[str, list[float]] = {}
    for r in records:
        if r.curves.eval_accuracy:
            groups.setdefault(r.group, []).append(r.curves.eval_accuracy[-1])
    best_final = max((mean(v) for v in groups.values()), default=math.nan)
    start = mean(starts)
    if not math.isfinite(start) or not math.isfinite(best_final) or best_final <= start:
        return Threshold(1.0, "auto: no group improved on the start, so 100%")
    return Threshold(
        start + (best_final - start) / 2, f"auto: halfway from the start {start:.1%} to the best final {best_final:.1%}"
    )


@dataclass
class GroupSummary:
    name: str
    run_ids: list[str]
    seeds: list[int]
    metrics: dict[str, Interval]
    per_run: list[dict[str, float]]
    failed: int = 0
    collapsed: int = 0


def group_records(records: Sequence[RunRecord], order: Sequence[str] | None = None) -> dict[str, list[RunRecord]]:
    """Records by group, groups in `order` first (even without records), then in order of appearance."""
    by_group: dict[str, list[RunRecord]] = {name: [] for name in order or []}
    for record in records:
        by_group.setdefault(record.group, []).append(record)
    return by_group


def summarize(
    records: Sequence[RunRecord],
    threshold: float,
    order: Sequence[str] | None = None,
    confidence: float = CONFIDENCE,
    method: str = T_METHOD,
) -> list[GroupSummary]:
    """One summary per group, in `order` (default: first appearance), each metric as an interval over
    its runs: Student-t over seeds, or the mean with a stratified bootstrap (strata: tasks)."""
    out = []
    for name, members in group_records(records, order).items():
        per_run = [run_metrics(r, threshold) for r in members]
        intervals = {
            key: metric_interval(members, [m[key] for m in per_run], confidence, method) for key in METRIC_KEYS
        }
        failed = sum(r.failed for r in members)
        collapsed = sum(is_collapsed(r) for r in members)
        out.append(
            GroupSummary(
                name, [r.run_id for r in members], [r.seed for r in members], intervals, per_run, failed, collapsed
            )
        )
    return out


def metric_interval(members: Sequence[RunRecord], values: Sequence[float], confidence: float, method: str) -> Interval:
    if method == T_METHOD:
        return t_interval(values, confidence)
    return mean_bootstrap_interval(strata_of(members, values), confidence)


def strata_of(members: Sequence[RunRecord], values: Sequence[float]) -> list[list[float]]:
    """The values split by the runs' task, in order of appearance."""
    strata: dict[str, list[float]] = {}
    for record, value in zip(members, values):
        strata.setdefault(record.task, []).append(value)
    return list(strata.values())


def rank(summaries: Sequence[GroupSummary], key: str) -> list[GroupSummary]:
    """Best first by the metric's mean (groups without a value last)."""
    spec = metric_spec(key)
    sign = -1 if spec.better != "lower" else 1

    def sort_key(summary: GroupSummary) -> tuple[int, float]:
        value = summary.metrics[key].estimate
        return (0, sign * value) if math.isfinite(value) else (1, 0.0)

    return sorted(summaries, key=sort_key)
