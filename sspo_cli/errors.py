"""Bad input: the one error type the command line turns into a message and exit code 2.

Every module raises a subclass named after what it checks (`TaskError`, `ModelError`, ...), so
callers can still catch one kind; the CLI catches `InputError`. `first_line` puts a library's
exception into such a message. Nothing is imported here.
"""

from __future__ import annotations


class InputError(ValueError):
    """Input that cannot be used. `key` names the recipe key, option or file; `reason` says why."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message as one line for an error message: its first line (at most `limit`
    characters), or the exception's type when it has no message."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
