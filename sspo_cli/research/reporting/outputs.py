"""Files a comparison or sweep leaves behind: CSV and JSON with every number of the table, report.md."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sspo_cli.research.analysis.conclusions import Inference
from sspo_cli.research.analysis.measures import (
    COLLAPSE_RULE,
    FAILED_RULE,
    METRICS,
    GroupSummary,
    RunRecord,
    Threshold,
    is_collapsed,
    metric_spec,
    run_metrics,
)
from sspo_cli.research.analysis.stats import BOOTSTRAP_METHOD, T_METHOD, Interval, interval_name
from sspo_cli.research.execution.execute import Outcome
from sspo_cli.research.reporting.formatting import best_groups, cell, format_duration, interval_caption
from sspo_cli.research.reporting.statistics_text import headline_name, statistics_tables


def clean(value: Any) -> Any:
    """JSON has no NaN: undefined numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def interval_fields(interval: Interval, estimate_key: str = "mean") -> dict[str, Any]:
    return {
        estimate_key: interval.estimate,
        "ci_low": interval.low,
        "ci_high": interval.high,
        "half_width": interval.half_width,
        "n": interval.n,
        "method": interval.method,
    }


def write_csv(
    path: Path,
    summaries: Sequence[GroupSummary],
    group_header: str,
    extra_columns: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """One row per group: `<metric>_mean`, `_ci_low`, `_ci_high`, `_n` for every metric (empty when undefined)."""
    extra_columns = extra_columns or {}
    extra_names = sorted({key for values in extra_columns.values() for key in values})
    header = [group_header, *extra_names, "seeds"]
    for spec in METRICS:
        header += [f"{spec.key}_mean", f"{spec.key}_ci_low", f"{spec.key}_ci_high", f"{spec.key}_n"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for summary in summaries:
            row: list[Any] = [
                summary.name,
                *(extra_columns.get(summary.name, {}).get(k, "") for k in extra_names),
                len(summary.run_ids),
            ]
            for spec in METRICS:
                interval = summary.metrics[spec.key]
                row += [
                    _csv_number(interval.estimate),
                    _csv_number(interval.low),
                    _csv_number(interval.high),
                    interval.n,
                ]
            writer.writerow(row)
    return path


def _csv_number(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ""


@dataclass(kw_only=True)
class WorkflowResult:
    """What every workflow returns: where its outputs and its runs are, and where the time went."""

    group_id: str
    title: str
    out_dir: Path  # the report folder
    files: dict[str, Path]  # the outputs, each logged on the group run
    timing: dict[str, Any]  # PhaseTimer.report()
    parent_run_id: str  # the group run
    tracking_uri: str


@dataclass(frozen=True)
class Findings:
    """What a comparison or a sweep found, as its files report it."""

    title: str
    summaries: Sequence[GroupSummary]
    records: Sequence[RunRecord]
    outcomes: Sequence[Outcome]
    threshold: Threshold
    method: str = T_METHOD  # of the main table's intervals
    inference: Inference | None = None


def comparison_document(
    kind: str, group_id: str, findings: Findings, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything behind the table: per-group intervals, per-run values, failures, how it was computed."""
    best = best_groups(findings.summaries)
    return clean(
        {
            "kind": kind,
            "id": group_id,
            "title": findings.title,
            "interval": interval_name(findings.method),
            "confidence": 0.95,
            "rules": {"failed": FAILED_RULE, "collapsed": COLLAPSE_RULE},
            "threshold": {"value": findings.threshold.value, "how": findings.threshold.how},
            "metrics": [
                {"key": s.key, "label": s.label, "better": s.better, "description": s.description} for s in METRICS
            ],
            "groups": [
                {
                    "name": s.name,
                    "seeds": s.seeds,
                    "run_ids": s.run_ids,
                    "metrics": {key: interval_fields(interval) for key, interval in s.metrics.items()},
                    "best": sorted(key for key, names in best.items() if s.name in names),
                    "failed": s.failed,
                    "collapsed": s.collapsed,
                }
                for s in findings.summaries
            ],
            "runs": [
                {
                    "run_id": r.run_id,
                    "group": r.group,
                    "seed": r.seed,
                    "run_name": r.run_name,
                    "run_dir": r.run_dir,
                    "reused": r.reused,
                    "failed": r.failed,
                    "collapsed": is_collapsed(r),
                    "metrics": run_metrics(r, findings.threshold.value),
                }
                for r in findings.records
            ],
            "failed": [
                {"group": o.planned.group, "seed": o.planned.seed, "state": o.state, "error": o.error}
                for o in findings.outcomes
                if not o.ok
            ],
            **({"statistics": inference_document(findings.inference)} if findings.inference is not None else {}),
            **(extra or {}),
        }
    )


def inference_document(inference: Inference) -> dict[str, Any]:
    return {
        "metric": inference.metric,
        "interval": interval_name(BOOTSTRAP_METHOD, inference.confidence),
        "groups": [
            {
                "name": g.name,
                "runs": g.runs,
                "failed": g.failed,
                "collapsed": g.collapsed,
                "iqm": interval_fields(g.iqm, "estimate"),
                "mean": interval_fields(g.mean, "estimate"),
                "t": interval_fields(g.t, "estimate"),
            }
            for g in inference.groups
        ],
        "probability_of_improvement": [
            {"x": x, "y": y, **interval_fields(p, "probability")} for (x, y), p in inference.improvement.items()
        ],
        "paired": [pair_fields(pair) for pair in inference.paired],
        "detectable_median": inference.detectable_median,
        "notes": inference.notes,
    }


def pair_fields(pair: Any) -> dict[str, Any]:
    difference = interval_fields(pair.difference, "difference") if pair.difference is not None else {"difference": None}
    over_seeds = interval_fields(pair.over_seeds, "estimate") if pair.over_seeds is not None else {"estimate": None}
    return {
        "first": pair.first,
        "second": pair.second,
        **difference,
        "over_seeds": over_seeds,
        "detectable": pair.detectable,
        "problems": pair.problems,
        "seeds_paired": pair.seeds_paired,
        "unpaired_t_overlap": pair.unpaired_overlap,
        "verdict": pair.verdict,
    }


PAIR_COLUMNS = (
    "first",
    "second",
    "difference",
    "ci_low",
    "ci_high",
    "seeds_ci_low",
    "seeds_ci_high",
    "detectable",
    "problems",
    "seeds_paired",
    "unpaired_t_overlap",
    "verdict",
)


def write_pairs_csv(path: Path, inference: Inference) -> Path:
    """One row per pair of methods: the paired difference in the headline metric, its interval, what the design
    detects."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PAIR_COLUMNS)
        for pair in inference.paired:
            fields = pair_fields(pair)
            fields |= {
                "seeds_ci_low": fields["over_seeds"].get("ci_low"),
                "seeds_ci_high": fields["over_seeds"].get("ci_high"),
            }
            writer.writerow([_csv_cell(fields.get(column)) for column in PAIR_COLUMNS])
    return path


def _csv_cell(value: Any) -> Any:
    return _csv_number(value) if isinstance(value, float) else "" if value is None else value


def write_json(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(clean(document), indent=2))
    return path


def inference_markdown(inference: Inference) -> list[str]:
    """The statistics of the headline metric as report.md shows them: its tables, each with its caption."""
    name = headline_name(metric_spec(inference.metric))
    lines = [f"## {name[0].upper() + name[1:]}: robust aggregates, probability of improvement, paired differences", ""]
    for table in statistics_tables(inference):
        lines += [f"### {table.title}", "", "| " + " | ".join(table.headers) + " |", "|" + "---|" * len(table.headers)]
        lines += ["| " + " | ".join(row) + " |" for row in table.rows]
        lines += ["", table.explanation or table.caption, ""]
    lines += [f"- {note}" for note in inference.notes]
    return lines + ([""] if inference.notes else [])


def markdown_table(summaries: Sequence[GroupSummary], group_header: str) -> str:
    best = best_groups(summaries)
    lines = [
        "| " + " | ".join([group_header, "seeds", *(spec.label for spec in METRICS)]) + " |",
        "|" + "---|" * (2 + len(METRICS)),
    ]
    for summary in summaries:
        cells = []
        for spec in METRICS:
            text = cell(summary, spec)
            cells.append(f"**{text}**" if summary.name in best.get(spec.key, ()) else text)
        lines.append("| " + " | ".join([summary.name, str(len(summary.run_ids)), *cells]) + " |")
    return "\n".join(lines)


def run_source(record: RunRecord) -> str:
    if record.failed:
        return "failed"
    return ("reused" if record.reused else "trained") + (", collapsed" if is_collapsed(record) else "")


def write_report(
    path: Path, findings: Findings, figures: Sequence[Path], group_header: str, mlflow_note: str, timing: dict[str, Any]
) -> Path:
    """A shareable page: the table, the figures, the runs behind it and how the numbers were made."""
    parts = [
        f"# {findings.title}",
        "",
        markdown_table(findings.summaries, group_header),
        "",
        (
            f"Each cell: {interval_caption(findings.method)}; the best mean per column in bold. "
            f"`[k/n]`: only k of the n seeds have a value (e.g. never reached the threshold). "
            f"Threshold accuracy: {findings.threshold.value:.1%} ({findings.threshold.how})."
        ),
        "",
        "| metric | definition |",
        "|---|---|",
        *(f"| {spec.label} | {spec.description} |" for spec in METRICS),
        "",
        *(inference_markdown(findings.inference) if findings.inference is not None else []),
    ]
    for figure in figures:
        parts += [f"![{figure.stem}]({figure.name})", ""]
    parts += ["## Runs", "", f"| {group_header} | seed | run | run id | source |", "|---|---|---|---|---|"]
    parts += [f"| {r.group} | {r.seed} | {r.run_name} | `{r.run_id}` | {run_source(r)} |" for r in findings.records]
    failed = [o for o in findings.outcomes if not o.ok]
    if failed:
        parts += ["", "## Failed runs", ""]
        parts += [f"- {o.planned.group}, seed {o.planned.seed}: {o.state} {o.error or ''}".rstrip() for o in failed]
    parts += [
        "",
        "## Where",
        "",
        mlflow_note,
        "",
        f"This invocation took {format_duration(timing['total_seconds'])}: training {format_duration(timing['training_seconds'])} "
        f"(reused runs cost nothing), workflow overhead {timing['overhead_seconds']:.1f}s ({timing['overhead_fraction']:.1%}).",
        "",
    ]
    path.write_text("\n".join(parts))
    return path
