"""The research workflow on top of the runner: `sspo eval`, `sspo compare`, `sspo sweep`.

Importing this package is instant (no torch, mlflow or matplotlib): the heavy modules are
imported inside the functions that need them, so `sspo --help` stays fast.
"""

from __future__ import annotations

from sspo_cli.errors import InputError


class ResearchError(InputError):
    """Bad input to eval/compare/sweep; the message starts with the option or key it is about."""


__all__ = ["ResearchError"]
