"""SIGINT and SIGTERM during training: stop at the next safe point, or at once when asked twice.

The first signal only sets a flag: the loop finishes the step it is in (a half-applied step
could not be resumed exactly), writes a checkpoint and raises `RunInterrupted`. A second
signal ends the process at once with `os._exit`; checkpoints are written into a temporary
folder and renamed into place, so that leaves the last complete one untouched.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

EXIT_INTERRUPTED = 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on a signal after writing a checkpoint; `sspo train --resume run_dir` continues it.

    A KeyboardInterrupt, so code that catches `Exception` to carry on (e.g. a sweep) stops too."""

    def __init__(self, signal_name: str, step: int, run_dir: Path, checkpoint: Path):
        self.signal_name = signal_name
        self.step = step
        self.run_dir = run_dir
        self.checkpoint = checkpoint
        super().__init__(f"{signal_name}: stopped after step {step}, checkpoint {checkpoint}")


class StopRequest:
    """While entered, SIGINT/SIGTERM request a stop (`requested`); a second signal exits at once."""

    def __init__(self, notify: Callable[[str], None] | None = None):
        self.signal_name: str | None = None
        self._notify = notify
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signal.signal works only there
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        # After a stop request the process is on its way out (checkpoint, MLflow, message): a
        # second signal must still exit at once, not raise KeyboardInterrupt into that.
        if not self.requested:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            os.write(2, f"\n{name} again: exiting now; the last complete checkpoint is kept\n".encode())
            os._exit(EXIT_INTERRUPTED)
        self.signal_name = name
        if self._notify is not None:
            self._notify(
                f"{name}: stopping after the current step and writing a checkpoint (send it again to quit at once)"
            )


class TermAsKeyboardInterrupt:
    """Outside the training loop, SIGTERM behaves like Ctrl-C (KeyboardInterrupt), not a silent kill."""

    def __enter__(self) -> TermAsKeyboardInterrupt:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
