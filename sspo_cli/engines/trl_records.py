"""TRL's per-update logs -> the native engine's per-step metric rows (pure Python).

With `logging_steps=1` TRL logs once per optimiser update. A recipe step is one rollout, i.e.
`updates_per_rollout` updates, so the rows of one rollout are merged here the way the native
engine merges its updates (`algorithm.aggregate`): min of `*_min`, max of `*_max`, sum of the
time spent in the objective and in sampling, the mean (NaN-skipping) of everything else.
Keys TRL logs that the native engine has no name for are kept under `trl/`.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

# TRL's name -> ours. Our objective's diagnostics, `train/accuracy`, `train/entropy` and the timings
# are logged under our names by SspoGRPOTrainer and pass through unchanged.
TRL_TO_NATIVE = {
    "reward": "train/reward",
    "completions/mean_length": "train/response_length",
    "loss": "train/loss",
    "grad_norm": "train/grad_norm",
}
NATIVE_PREFIXES = ("train/", "ratio/", "weight/", "grad_weight/", "kl/")
# Replaced by the recorder's own values: the lr after the update (as the native engine logs it).
DROPPED_TRL_KEYS = frozenset({"learning_rate", "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"})
SUMMED_KEYS = frozenset({"train/objective_seconds", "train/sample_seconds"})


def native_keys(logs: Mapping[str, float | None]) -> dict[str, float]:
    """One TRL log under native names; numbers only."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        if key in DROPPED_TRL_KEYS or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if key in TRL_TO_NATIVE:
            out[TRL_TO_NATIVE[key]] = float(value)
        elif key.startswith(NATIVE_PREFIXES):
            out[key] = float(value)
        else:
            out[f"trl/{key}"] = float(value)
    return out


def merge_updates(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The updates of one rollout as one row; a key missing from some rows counts where present."""
    values: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            values.setdefault(key, []).append(value)
    return {key: merge_values(key, found) for key, found in values.items()}


def merge_values(key: str, found: list[float]) -> float:
    finite = [v for v in found if math.isfinite(v)]
    if not finite:
        return math.nan
    if key.endswith("_min"):
        return min(finite)
    if key.endswith("_max"):
        return max(finite)
    if key in SUMMED_KEYS:
        return sum(finite)
    return sum(finite) / len(finite)
