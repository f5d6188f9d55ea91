"""Planned runs made real: reused or trained (in parallel processes), the MLflow store of groups and
their members, where the time goes, finished runs read back as records, checkpoints evaluated."""
