"""TRL's per-update logs -> the native engine's per-step metric rows (pure Python).

With `logging_steps=1` TRL logs once per optimiser update. A recipe step is one rollout, i.e.
`updates_per_rollout` updates, whose rows `RunRecorder` merges with the native engine's rule
(`sspo_cli.run.metrics.merge_rows`). Keys TRL logs that the native engine has no name for are
kept under `trl/`.
"""

from __future__ import annotations

from collections.abc import Mapping

# TRL's name -> ours. Our objective's diagnostics, `train/accuracy`, `train/entropy`, the timings and
# `rollout/sampler_logp_diff_*` are logged under our names by SspoGRPOTrainer and pass through unchanged.
TRL_TO_NATIVE = {
    "reward": "train/reward",
    "completions/mean_length": "train/response_length",
    "loss": "train/loss",
    "grad_norm": "train/grad_norm",
    "completions/clipped_ratio": "rollout/truncated_frac",  # last token neither <eos> nor pad: cut off
}
NATIVE_PREFIXES = ("train/", "ratio/", "weight/", "grad_weight/", "kl/", "rollout/")
# Replaced by the recorder's own values: the lr after the update (as the native engine logs it).
DROPPED_TRL_KEYS = frozenset(
    {"learning_rate", "train_runtime", "train_samples_per_second", "train_steps_per_second", "total_flos", "train_loss"}
)


def rollout_defaults() -> dict[str, float]:
    """The spec's rollout keys TRL has no number for and whose value is known.

    `rollout/policy_lag` is 0: GRPOTrainer generates with the weights its next update starts from."""
    return {"rollout/policy_lag": 0.0}


def native_keys(logs: Mapping[str, float | None]) -> dict[str, float]:
    """One TRL log under native names; numbers only."""
    out: dict[str, float] = rollout_defaults()
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
