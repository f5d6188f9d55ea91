"""The research workflow on top of the runner: `sspo eval`, `sspo compare`, `sspo sweep`.

Importing this package is instant (no torch, mlflow or matplotlib): the heavy modules are
imported inside the functions that need them, so `sspo --help` stays fast.
"""

from __future__ import annotations


class ResearchError(ValueError):
    """Bad input to eval/compare/sweep; the message starts with the option or key it is about."""

    def __init__(self, key: str, message: str):
        self.key = key
        self.reason = message
        super().__init__(f"{key}: {message}")


__all__ = ["ResearchError"]
