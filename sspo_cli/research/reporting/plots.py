"""Figures (matplotlib, Agg: no display needed): learning curves and weight variance, the statistics of a
comparison, sweep heatmaps, a study's metrics against its grid."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sspo_cli.research.analysis.measures import Curves, GroupSummary, MetricSpec, RunRecord, metric_spec
from sspo_cli.research.analysis.stats import INTERVAL_NAME, T_METHOD, Interval, interval_name, t_interval
from sspo_cli.research.reporting.statistics_text import headline_name

if TYPE_CHECKING:
    from sspo_cli.research.analysis.conclusions import Inference, PairedComparison
    from sspo_cli.research.planning.space import GridAxis


def agg_pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the finite values of the last `window` points."""
    out = []
    for end in range(1, len(values) + 1):
        chunk = [v for v in values[max(0, end - window) : end] if math.isfinite(v)]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def band(
    records: Sequence[RunRecord],
    steps_of: Callable[[Curves], Sequence[int]],
    values_of: Callable[[Curves], Sequence[float]],
    log_space: bool = False,
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per step shared by the runs: mean, and the t-interval's bounds (the mean alone where n < 2).

    With `log_space`, the interval is taken over log10 of the (positive) values and mapped back:
    a geometric mean with a band that stays positive, as a variance on a log axis needs.
    """
    by_step: dict[int, list[float]] = {}
    for record in records:
        for step, value in zip(steps_of(record.curves), values_of(record.curves)):
            if log_space:
                value = math.log10(value) if math.isfinite(value) and value > 0 else math.nan
            by_step.setdefault(step, []).append(value)
    steps, means, lows, highs = [], [], [], []
    for step in sorted(by_step):
        interval = t_interval(by_step[step])
        if interval.n == 0:
            continue
        centre = interval.estimate
        low, high = (interval.low, interval.high) if interval.defined else (centre, centre)
        if log_space:
            centre, low, high = 10**centre, 10**low, 10**high
        steps.append(step)
        means.append(centre)
        lows.append(low)
        highs.append(high)
    return steps, means, lows, highs


def comparison_figure(records: Sequence[RunRecord], order: Sequence[str], path: Path, title: str) -> Path:
    """2x2: eval accuracy, train reward (smoothed), weight/seq_var (log scale), saturated fraction."""
    plt = agg_pyplot()
    longest = max((len(r.curves.steps) for r in records), default=1)
    window = max(1, longest // 20)
    smooth = f"{window}-step moving avg" if window > 1 else "per step"
    panels = (
        ("held-out accuracy (greedy)", lambda c: c.eval_steps, lambda c: c.eval_accuracy, False),
        (f"train reward ({smooth})", lambda c: c.steps, lambda c: moving_average(c.reward, window), False),
        (
            f"weight/seq_var: importance-weight variance ({smooth}, geometric mean)",
            lambda c: c.steps,
            lambda c: moving_average(c.seq_var, window),
            True,
        ),
        (
            f"grad_weight/saturated_frac: gate saturation ({smooth})",
            lambda c: c.steps,
            lambda c: moving_average(c.saturated_frac, window),
            False,
        ),
    )
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (label, steps_of, values_of, log_scale) in zip(axes.flat, panels):
        plotted = []
        for index, group in enumerate(order):
            members = [r for r in records if r.group == group and not r.failed]
            steps, means, lows, highs = band(members, steps_of, values_of, log_space=log_scale)
            if not steps:
                continue
            color = colors[index % len(colors)]
            axis.plot(steps, means, color=color, label=f"{group} (n={len(members)})", linewidth=1.6)
            axis.fill_between(steps, lows, highs, color=color, alpha=0.18, linewidth=0)
            plotted += means
        axis.set_title(label, fontsize=10)
        axis.set_xlabel("RL step")
        if not plotted:
            axis.text(0.5, 0.5, "no values logged", ha="center", va="center", transform=axis.transAxes, color="grey")
        elif log_scale:
            axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{title}\nlines: mean over seeds; bands: {INTERVAL_NAME}", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def heatmap_figure(
    values: Sequence[Sequence[float]],
    x_key: str,
    x_labels: Sequence[str],
    y_key: str,
    y_labels: Sequence[str],
    metric_label: str,
    path: Path,
    title: str,
    cell_text: Sequence[Sequence[str]],
) -> Path:
    """values[row][col] with rows = y values and columns = x values, each cell labelled with
    cell_text[row][col]; missing cells (NaN) left grey."""
    plt = agg_pyplot()
    import textwrap

    fig, axis = plt.subplots(
        figsize=(max(7.0, 1.4 * len(x_labels) + 3), 1.0 * len(y_labels) + 2.5), constrained_layout=True
    )
    image = draw_heatmap(axis, values, x_labels, y_labels, cell_text, origin="lower")
    axis.set_xlabel(x_key)
    axis.set_ylabel(y_key)
    fig.colorbar(image, ax=axis, label=metric_label)
    axis.set_title("\n".join(line for part in title.split("\n") for line in textwrap.wrap(part, 70)), fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_heatmap(
    axis,
    values: Sequence[Sequence[float]],
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    cell_text: Sequence[Sequence[str]],
    origin: str = "upper",
    value_range: tuple[float, float] | None = None,
):
    """values[row][col] as colours (viridis, NaN grey) with each cell's text on it; returns the image."""
    import numpy as np

    plt = agg_pyplot()
    grid = np.array(values, dtype=float)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    low, high = value_range or (None, None)
    image = axis.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin=origin, vmin=low, vmax=high)
    axis.set_xticks(range(len(x_labels)), labels=list(x_labels))
    axis.set_yticks(range(len(y_labels)), labels=list(y_labels))
    finite = grid[np.isfinite(grid)]
    middle = (low + high) / 2 if value_range else (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for row in range(grid.shape[0]):
        for col in range(grid.shape[1]):
            value = grid[row, col]
            colour = "black" if not math.isfinite(value) or value > middle else "white"
            axis.text(col, row, cell_text[row][col], ha="center", va="center", fontsize=8, color=colour)
    return image


def statistics_figure(inference: Inference, path: Path, title: str) -> Path:
    """Three panels: IQM and mean per method with bootstrap intervals, P(row > column), paired differences."""
    plt = agg_pyplot()
    names = [g.name for g in inference.groups]
    pairs = inference.paired
    height = max(4.0, 0.45 * max(len(names), len(pairs)) + 2.5)
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(17, height), constrained_layout=True)
    spec = metric_spec(inference.metric)
    _aggregate_panel(left, inference, spec)
    probability = [[math.nan if x == y else inference.improvement[(x, y)].estimate for y in names] for x in names]
    texts = [["" if x == y else _probability_text(inference.improvement[(x, y)]) for y in names] for x in names]
    image = draw_heatmap(middle, probability, names, names, texts, value_range=(0.0, 1.0))
    middle.set_xlabel("column method")
    middle.set_ylabel("row method")
    middle.set_title("P(row > column) over runs, 95% bootstrap CI", fontsize=10)
    fig.colorbar(image, ax=middle, shrink=0.8)
    _paired_panel(right, pairs, spec)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _probability_text(interval: Interval) -> str:
    if not interval.defined:
        return f"{interval.estimate:.2f}"
    return f"{interval.estimate:.2f}\n[{interval.low:.2f}, {interval.high:.2f}]"


def _scale_and_unit(spec: MetricSpec) -> tuple[float, str]:
    return (100.0, " (%)") if spec.kind == "percent" else (1.0, "")


def _aggregate_panel(axis, inference: Inference, spec: MetricSpec) -> None:
    scale, unit = _scale_and_unit(spec)
    for row, group in enumerate(inference.groups):
        for offset, (label, interval, colour) in enumerate(
            (("IQM", group.iqm, "tab:blue"), ("mean", group.mean, "tab:orange"))
        ):
            y = row + 0.15 * (1 - 2 * offset)
            _interval_bar(axis, y, interval, colour, label if row == 0 else None, scale=scale)
    axis.set_yticks(range(len(inference.groups)), labels=[g.name for g in inference.groups])
    axis.invert_yaxis()
    axis.set_xlabel(f"{headline_name(spec)}{unit}")
    axis.set_title("IQM and mean over runs, 95% stratified bootstrap CI", fontsize=10)
    axis.grid(alpha=0.3, axis="x")
    axis.legend(fontsize=8)


def _paired_panel(axis, pairs: Sequence[PairedComparison], spec: MetricSpec) -> None:
    scale, unit = _scale_and_unit(spec)
    legend_row = next((row for row, pair in enumerate(pairs) if pair.difference is not None), None)
    for row, pair in enumerate(pairs):
        if pair.difference is None:
            continue
        if math.isfinite(pair.detectable):
            axis.plot(
                [-scale * pair.detectable, scale * pair.detectable],
                [row, row],
                color="lightgrey",
                linewidth=7,
                solid_capstyle="butt",
            )
        colour = "tab:green" if pair.separated else "tab:grey"
        _interval_bar(
            axis, row - 0.15, pair.difference, colour, "bootstrap" if row == legend_row else None, scale=scale
        )
        if pair.over_seeds is not None:
            label = "t over seeds" if row == legend_row else None
            _interval_bar(axis, row + 0.15, pair.over_seeds, "tab:purple", label, scale=scale)
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set_yticks(range(len(pairs)), labels=[f"{p.first} - {p.second}" for p in pairs])
    axis.set_ylim(len(pairs) - 0.5, -0.5)  # top to bottom, each pair's two bars close to its label
    axis.set_xlabel(f"difference in {spec.label}{' (points)' if unit else ''}")
    axis.set_title(
        "paired differences, 95% CI: bootstrap and t over seeds\n(green: both exclude 0; band: +- detectable)",
        fontsize=10,
    )
    if legend_row is not None:
        axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="x")


def _interval_bar(axis, y: float, interval: Interval, colour: str, label: str | None, scale: float = 1.0) -> None:
    """A point at the estimate with a horizontal bar over the interval (no bar where there is none)."""
    centre = scale * interval.estimate
    if interval.defined:
        errors = [[centre - scale * interval.low], [scale * interval.high - centre]]
        axis.errorbar([centre], [y], xerr=errors, fmt="o", color=colour, capsize=3, label=label, markersize=5)
    else:
        axis.plot([centre], [y], "o", color=colour, label=label, markersize=5)


def spans_orders_of_magnitude(positions: Sequence[float]) -> bool:
    """Whether non-negative grid values reach 8x past their smallest positive one (or past 1): then a symlog x
    axis keeps the small values apart. A grid of zeros alone (one lag-0 point) has nothing to spread."""
    positive = [p for p in positions if p > 0]
    return bool(positive) and all(p >= 0 for p in positions) and max(positive) >= 8 * max(min(positive), 1)


def study_figure(
    axes_of_grid: Sequence[GridAxis],
    labels: Sequence[str],
    points: Sequence[dict],
    methods: Sequence[str],
    summaries: dict[str, Sequence[GroupSummary]],
    path: Path,
    title: str,
    interval_method: str = T_METHOD,
) -> Path:
    """1x3 against the grid: final held-out accuracy, weight/seq_var (log), gate saturation; a line per method,
    each point the mean over seeds with its interval. One numeric axis is the x axis; otherwise the points in order."""
    plt = agg_pyplot()
    numeric = len(axes_of_grid) == 1 and all(isinstance(v, (int, float)) for v in axes_of_grid[0].values)
    positions = [float(point[axes_of_grid[0].key]) for point in points] if numeric else list(range(len(points)))
    panels = (
        ("final_accuracy", "final held-out accuracy (greedy)", 100.0, False),
        ("seq_var", "weight/seq_var: importance-weight variance", 1.0, True),
        ("saturated_frac", "grad_weight/saturated_frac: gate saturation", 100.0, False),
    )
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    spread = 0.012 * (max(positions) - min(positions) or 1.0)  # side by side, so the bars do not hide each other
    for axis, (key, label, scale, log_scale) in zip(axes, panels):
        for index, method in enumerate(methods):
            xs, ys, errors = [], [], [[], []]
            for position, point_label in zip(positions, labels):
                summary = next((s for s in summaries.get(point_label, []) if s.name == method), None)
                interval = summary.metrics[key] if summary is not None else None
                if interval is None or not math.isfinite(interval.estimate):
                    continue
                xs.append(position + (index - (len(methods) - 1) / 2) * spread)
                ys.append(scale * interval.estimate)
                low, high = (interval.low, interval.high) if interval.defined else (interval.estimate,) * 2
                if log_scale:
                    low = max(low, interval.estimate * 1e-3)  # a t interval can reach below 0
                errors[0].append(scale * (interval.estimate - low))
                errors[1].append(scale * (high - interval.estimate))
            if xs:
                axis.errorbar(
                    xs, ys, yerr=errors, marker="o", capsize=3, color=colours[index % len(colours)], label=method
                )
        axis.set_title(label + (" (%)" if scale == 100.0 else ""), fontsize=10)
        axis.set_xlabel(axes_of_grid[0].key if numeric else "grid point")
        if numeric and spans_orders_of_magnitude(positions):
            axis.set_xscale("symlog", linthresh=1.0)
        axis.set_xticks(positions)
        axis.set_xticklabels(
            [str(point[axes_of_grid[0].key]) if numeric else lbl for point, lbl in zip(points, labels)]
        )
        if log_scale:
            axis.set_yscale("log")
        else:  # a t interval over few seeds can reach past the possible range
            axis.set_ylim(0, 100 if key == "final_accuracy" else None)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{title}\npoints: mean over seeds; bars: {interval_name(interval_method)}", fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
