"""The research workflow on top of the runner: `sspo eval`, `sspo compare`, `sspo sweep`.

Sub-layers, bottom to top: `analysis/` (pure statistics), `planning/` (what will run), `execution/`
(reuse or train, MLflow, records read back), `reporting/` (tables, figures, files); on top
`workflow.py` (the one template) and the workflows `compare.py`, `sweep.py`, `study.py`, `search.py`.

Importing this package is instant (no torch, mlflow or matplotlib): the heavy modules are
imported inside the functions that need them, so `sspo --help` stays fast.
"""

from __future__ import annotations

from sspo_cli.errors import InputError


class ResearchError(InputError):
    """Bad input to eval/compare/sweep; the message starts with the option or key it is about."""


__all__ = ["ResearchError"]
