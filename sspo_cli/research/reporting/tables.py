"""Rich tables for the terminal: comparison, its statistics, sweep leaderboard, eval results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sspo_cli.research.analysis.measures import METRICS, GroupSummary, Threshold, metric_spec
from sspo_cli.research.analysis.stats import T_METHOD
from sspo_cli.research.reporting.formatting import best_groups, cell, format_value, interval_caption
from sspo_cli.research.reporting.statistics_text import TextTable


def comparison_table(
    summaries: Sequence[GroupSummary],
    threshold: Threshold,
    title: str,
    group_header: str = "method",
    method: str = T_METHOD,
) -> Table:
    """One row per group, every metric as its mean and interval; the best mean per column in bold green."""
    best = best_groups(summaries)
    caption = (
        f"{interval_caption(method)}; best mean per column in bold green. "
        f"Threshold accuracy {threshold.value:.1%} ({threshold.how}); [k/n]: only k of the n seeds have a value."
    )
    table = Table(title=escape(title), caption=escape(caption))
    table.add_column(group_header, style="bold", no_wrap=True)
    table.add_column("seeds", justify="right")
    for spec in METRICS:
        table.add_column(spec.label, justify="right", no_wrap=True)
    for summary in summaries:
        cells = []
        for spec in METRICS:
            text = escape(cell(summary, spec))
            cells.append(f"[bold green]{text}[/bold green]" if summary.name in best.get(spec.key, ()) else text)
        table.add_row(escape(summary.name), str(len(summary.run_ids)), *cells)
    return table


def print_table(console: Console, table: Table) -> None:
    """Full width when the output is not a terminal (a log, a pipe), so no number is cut."""
    if console.is_terminal:
        console.print(table)
    else:
        Console(width=max(console.width, 240), file=console.file, no_color=console.no_color).print(table)


def leaderboard_table(
    ranked: Sequence[GroupSummary], metric: str, title: str, failures: dict[str, int], method: str = T_METHOD
) -> Table:
    """Sweep points best first by `metric`, with the other headline metrics alongside."""
    chosen = metric_spec(metric)
    shown = [chosen] + [
        spec
        for spec in METRICS
        if spec.key in ("final_accuracy", "best_accuracy", "reward_auc", "seq_var", "saturated_frac")
        and spec.key != metric
    ]
    caption = f"ranked by {chosen.label} ({chosen.better or 'no direction'} is better); {interval_caption(method)}"
    table = Table(title=escape(title), caption=escape(caption))
    table.add_column("#", justify="right")
    table.add_column("point", style="bold", no_wrap=True)
    table.add_column("seeds", justify="right")
    table.add_column("failed", justify="right")
    for spec in shown:
        table.add_column(spec.label, justify="right", style="bold" if spec is chosen else None, no_wrap=True)
    for position, summary in enumerate(ranked, start=1):
        failed = failures.get(summary.name, 0)
        cells = (escape(cell(summary, spec)) for spec in shown)
        table.add_row(
            str(position),
            escape(summary.name),
            str(len(summary.run_ids)),
            f"[red]{failed}[/red]" if failed else "0",
            *cells,
        )
    return table


def eval_table(result: dict[str, Any]) -> Table:
    """The eval metrics; the CLI prints `result["caption"]` (decoding, estimator) under it."""
    table = Table(title=escape(result["title"]), min_width=len(result["title"]) + 4)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value, kind in result["rows"]:
        table.add_row(key, format_value(kind, value))
    return table


# --------------------------------------------------------------------------- statistics of a comparison


def text_table(table: TextTable) -> Table:
    """A TextTable (statistics_text) for the terminal."""
    rendered = Table(title=escape(table.title), caption=escape(table.caption))
    for index, header in enumerate(table.headers):
        rendered.add_column(escape(header), justify="left" if index < table.left_columns else "right", no_wrap=True)
    for row in table.rows:
        rendered.add_row(*(escape(cell_text) for cell_text in row))
    return rendered
