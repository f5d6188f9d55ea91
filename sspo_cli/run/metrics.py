"""Per-step metrics, engine-neutral and pure: one rule to merge updates, and the summary's statistics.

A step (one rollout) makes several optimiser updates, each reporting the objective's diagnostics;
the native loop, TRL's micro-batches and TRL's processes all merge them with `merge_values`.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping

from sspo_cli.objectives.metric_keys import METRIC_KEYS

# Seconds spent one after another within a step (by updates, micro-batches): they add up.
SEQUENTIAL_SECONDS = frozenset({"train/objective_seconds", "train/sample_seconds"})

# What summary.json reports mean / p95 / max of over the steps: every objective diagnostic, and these.
SUMMARY_KEYS: tuple[str, ...] = (*METRIC_KEYS, "train/entropy", "train/grad_norm")


def merge_values(key: str, values: Iterable[float], summed: Collection[str] = SEQUENTIAL_SECONDS) -> float:
    """Min of `*_min`, max of `*_max`, the sum for keys in `summed`, else the mean; NaN and inf are skipped
    (NaN if nothing is left).

    Values from processes running side by side are merged with `summed=()`: their durations do not add.
    """
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return math.nan
    if key.endswith("_min"):
        return min(finite)
    if key.endswith("_max"):
        return max(finite)
    if key in summed:
        return sum(finite)
    return sum(finite) / len(finite)


def merge_rows(rows: Iterable[Mapping[str, float]], summed: Collection[str] = SEQUENTIAL_SECONDS) -> dict[str, float]:
    """Rows of metrics as one row, key by key; a key missing from some rows counts where present."""
    values: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            values.setdefault(key, []).append(value)
    return {key: merge_values(key, found, summed) for key, found in values.items()}


def diagnostics_summary(history: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean, 95th percentile and max over steps of each of SUMMARY_KEYS that has a finite value."""
    out = {}
    for key in SUMMARY_KEYS:
        values = sorted(v for row in history if math.isfinite(v := row.get(key, math.nan)))
        if values:
            p95 = values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]
            out[key] = {"mean": sum(values) / len(values), "p95": p95, "max": values[-1]}
    return out
