"""Bad input: the one error type the command line turns into a message and exit code 2.

Every module raises a subclass named after what it checks (`TaskError`, `ModelError`, ...), so
callers can still catch one kind; the CLI catches `InputError`. Nothing is imported here.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input that cannot be used. `key` names the recipe key, option or file; `reason` says why."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")
