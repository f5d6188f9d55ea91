"""Figures (matplotlib, Agg: no display needed): learning curves and weight variance, sweep heatmaps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

from sspo_cli.research.metrics import Curves, RunRecord
from sspo_cli.research.stats import INTERVAL_NAME, t_interval


def _pyplot():
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
        half = interval.half_width if math.isfinite(interval.half_width) else 0.0
        centre, low, high = interval.mean, interval.mean - half, interval.mean + half
        if log_space:
            centre, low, high = 10**centre, 10**low, 10**high
        steps.append(step)
        means.append(centre)
        lows.append(low)
        highs.append(high)
    return steps, means, lows, highs


def comparison_figure(records: Sequence[RunRecord], order: Sequence[str], path: Path, title: str) -> Path:
    """2x2: eval accuracy, train reward (smoothed), weight/seq_var (log scale), saturated fraction."""
    plt = _pyplot()
    longest = max((len(r.curves.steps) for r in records), default=1)
    window = max(1, longest // 20)
    smooth = f"{window}-step moving avg" if window > 1 else "per step"
    panels = (
        ("held-out accuracy (greedy)", lambda c: c.eval_steps, lambda c: c.eval_accuracy, False),
        (f"train reward ({smooth})", lambda c: c.steps, lambda c: moving_average(c.reward, window), False),
        (f"weight/seq_var: importance-weight variance ({smooth}, geometric mean)", lambda c: c.steps, lambda c: moving_average(c.seq_var, window), True),
        (f"grad_weight/saturated_frac: gate saturation ({smooth})", lambda c: c.steps, lambda c: moving_average(c.saturated_frac, window), False),
    )
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), constrained_layout=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, (label, steps_of, values_of, log_scale) in zip(axes.flat, panels):
        plotted = []
        for index, group in enumerate(order):
            members = [r for r in records if r.group == group]
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
    plt = _pyplot()
    import numpy as np

    grid = np.array(values, dtype=float)
    import textwrap

    fig, axis = plt.subplots(figsize=(max(7.0, 1.4 * len(x_labels) + 3), 1.0 * len(y_labels) + 2.5), constrained_layout=True)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    image = axis.imshow(np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", origin="lower")
    axis.set_xticks(range(len(x_labels)), labels=list(x_labels))
    axis.set_yticks(range(len(y_labels)), labels=list(y_labels))
    axis.set_xlabel(x_key)
    axis.set_ylabel(y_key)
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for row in range(grid.shape[0]):
        for col in range(grid.shape[1]):
            value = grid[row, col]
            axis.text(col, row, cell_text[row][col], ha="center", va="center", fontsize=9, color="black" if not math.isfinite(value) or value > middle else "white")
    fig.colorbar(image, ax=axis, label=metric_label)
    axis.set_title("\n".join(line for part in title.split("\n") for line in textwrap.wrap(part, 70)), fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
