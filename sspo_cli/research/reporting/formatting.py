"""Numbers as the table, the CSV's readers and report.md show them (one formatter for all)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sspo_cli.research.analysis.measures import METRICS, GroupSummary, MetricSpec
from sspo_cli.research.analysis.stats import T_METHOD, Interval, interval_name

MISSING = "—"


def format_value(kind: str, value: float | None, sign: str = "") -> str:
    """`sign="+"` writes the sign of positive values too (differences)."""
    if value is None or not math.isfinite(value):
        return MISSING
    if kind == "percent":
        return f"{value * 100:{sign}.1f}%"
    if kind == "sci":
        return f"{value:{sign}.3g}"
    if kind == "steps":
        return f"{value:{sign}.0f}"
    if kind == "seconds":
        return f"{value:{sign}.1f}s"
    return f"{value:{sign}.3f}"


def format_spread(kind: str, interval: Interval) -> str:
    """`± half-width` for a symmetric (Student-t) interval, `[low, high]` for a bootstrap one, `(n=k)` for none."""
    if not interval.defined:
        return f"(n={interval.n})"
    if interval.method == T_METHOD:
        return f"± {format_value(kind, interval.half_width)}"
    return f"[{format_value(kind, interval.low)}, {format_value(kind, interval.high)}]"


def interval_caption(method: str) -> str:
    """What a table cell shows, for captions: `mean ± half-width of the 95% CI, Student-t ...`."""
    shape = "mean ± half-width" if method == T_METHOD else "mean [low, high]"
    return f"{shape} of the {interval_name(method)}"


def format_interval(kind: str, interval: Interval, runs: int | None = None) -> str:
    """The estimate and its spread (see format_spread); `[reached/runs]` when some runs gave no value."""
    if interval.n == 0:
        return MISSING
    text = f"{format_value(kind, interval.estimate)} {format_spread(kind, interval)}"
    if runs is not None and interval.n < runs:
        text += f" [{interval.n}/{runs}]"
    return text


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def cell(summary: GroupSummary, spec: MetricSpec) -> str:
    """A group's metric as the table and report.md show it."""
    return format_interval(spec.kind, summary.metrics[spec.key], runs=len(summary.run_ids))


def best_groups(summaries: Sequence[GroupSummary]) -> dict[str, set[str]]:
    """For each metric with a direction, the groups whose mean is the best.

    Groups whose means look the same as printed (e.g. 0.0% and 0.0%) tie: a highlight must
    match what the reader sees. When every group ties, none is best.
    """
    best: dict[str, set[str]] = {}
    for spec in METRICS:
        if spec.better is None:
            continue
        scored = [
            (s.metrics[spec.key].estimate, s.name) for s in summaries if math.isfinite(s.metrics[spec.key].estimate)
        ]
        if len(scored) < 2:
            continue
        pick = max if spec.better == "higher" else min
        top = pick(value for value, _ in scored)
        shown_top = format_value(spec.kind, top)
        winners = {name for value, name in scored if format_value(spec.kind, value) == shown_top}
        if len(winners) < len(scored):
            best[spec.key] = winners
    return best
