"""Files a comparison or sweep leaves behind: CSV and JSON with every number of the table, report.md."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

from sspo_cli.research.execute import Outcome
from sspo_cli.research.formatting import format_duration
from sspo_cli.research.metrics import METRICS, GroupSummary, RunRecord, Threshold, best_groups, cell, run_metrics
from sspo_cli.research.stats import INTERVAL_NAME, Interval


def clean(value: Any) -> Any:
    """JSON has no NaN: undefined numbers become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    return value


def interval_fields(interval: Interval) -> dict[str, float]:
    return {"mean": interval.mean, "ci_low": interval.low, "ci_high": interval.high, "half_width": interval.half_width, "n": interval.n}


def write_csv(path: Path, summaries: Sequence[GroupSummary], group_header: str, extra_columns: dict[str, dict[str, Any]] | None = None) -> Path:
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
            row: list[Any] = [summary.name, *(extra_columns.get(summary.name, {}).get(k, "") for k in extra_names), len(summary.run_ids)]
            for spec in METRICS:
                interval = summary.metrics[spec.key]
                row += [_csv_number(interval.mean), _csv_number(interval.low), _csv_number(interval.high), interval.n]
            writer.writerow(row)
    return path


def _csv_number(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ""


def comparison_document(
    kind: str,
    group_id: str,
    title: str,
    summaries: Sequence[GroupSummary],
    records: Sequence[RunRecord],
    outcomes: Sequence[Outcome],
    threshold: Threshold,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything behind the table: per-group intervals, per-run values, failures, how it was computed."""
    best = best_groups(summaries)
    return clean(
        {
            "kind": kind,
            "id": group_id,
            "title": title,
            "interval": INTERVAL_NAME,
            "confidence": 0.95,
            "threshold": {"value": threshold.value, "how": threshold.how},
            "metrics": [{"key": s.key, "label": s.label, "better": s.better, "description": s.description} for s in METRICS],
            "groups": [
                {
                    "name": s.name,
                    "seeds": s.seeds,
                    "run_ids": s.run_ids,
                    "metrics": {key: interval_fields(interval) for key, interval in s.metrics.items()},
                    "best": sorted(key for key, names in best.items() if s.name in names),
                }
                for s in summaries
            ],
            "runs": [
                {
                    "run_id": r.run_id,
                    "group": r.group,
                    "seed": r.seed,
                    "run_name": r.run_name,
                    "run_dir": r.run_dir,
                    "reused": r.reused,
                    "metrics": run_metrics(r, threshold.value),
                }
                for r in records
            ],
            "failed": [{"group": o.planned.group, "seed": o.planned.seed, "state": o.state, "error": o.error} for o in outcomes if not o.ok],
            **(extra or {}),
        }
    )


def write_json(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(clean(document), indent=2))
    return path


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


def write_report(
    path: Path,
    title: str,
    summaries: Sequence[GroupSummary],
    records: Sequence[RunRecord],
    outcomes: Sequence[Outcome],
    threshold: Threshold,
    figures: Sequence[Path],
    group_header: str,
    mlflow_note: str,
    timing: dict[str, Any],
) -> Path:
    """A shareable page: the table, the figure, the runs behind it and how the numbers were made."""
    parts = [
        f"# {title}",
        "",
        markdown_table(summaries, group_header),
        "",
        f"Each cell: mean ± half-width of the {INTERVAL_NAME}; the best mean per column in bold. "
        f"`[k/n]`: only k of the n seeds have a value (e.g. never reached the threshold). "
        f"Threshold accuracy: {threshold.value:.1%} ({threshold.how}).",
        "",
        "| metric | definition |",
        "|---|---|",
        *(f"| {spec.label} | {spec.description} |" for spec in METRICS),
        "",
    ]
    for figure in figures:
        parts += [f"![{figure.stem}]({figure.name})", ""]
    parts += ["## Runs", "", f"| {group_header} | seed | run | run id | source |", "|---|---|---|---|---|"]
    parts += [f"| {r.group} | {r.seed} | {r.run_name} | `{r.run_id}` | {'reused' if r.reused else 'trained'} |" for r in records]
    failed = [o for o in outcomes if not o.ok]
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
