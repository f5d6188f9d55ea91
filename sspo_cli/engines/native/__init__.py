"""The native engine: one process, one policy, every step of the algorithm in plain PyTorch.

loop.py        a run from start to finish: load, warm start, RL steps, evals, checkpoints, resume
step.py        one RL step: sample groups, score, behaviour log-probs, updates over mini-batches
tuning.py      CPU and GPU tuning rules (bf16 autocast, attention kernel, length buckets) chosen by
               what the machine has
checkpoint.py  atomic checkpoints with optimiser, RNG and lagged-sampler state; exact resume
lag.py         the sampler's older weights (`rollout.policy_lag`, `rollout.sync_interval`)
"""
