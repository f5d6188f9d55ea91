"""Where the time of a comparison or sweep goes: training versus the workflow around it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

TRAINING = "training"
SHARED_WARM_START = "shared warm start"  # part of training: the warm start the parallel runs share


@dataclass
class PhaseTimer:
    """Accumulates wall seconds per named phase; everything that is not `training` is overhead."""

    started: float = field(default_factory=time.perf_counter)
    seconds: dict[str, float] = field(default_factory=dict)
    runs_trained: int | None = None  # set where runs go through `execute`; None: not counted (no figure reported)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - begin

    def report(self) -> dict[str, object]:
        total = time.perf_counter() - self.started
        training = self.seconds.get(TRAINING, 0.0)
        overhead = max(total - training, 0.0)
        report: dict[str, object] = {
            "total_seconds": round(total, 3),
            "training_seconds": round(training, 3),
            "overhead_seconds": round(overhead, 3),
            "overhead_fraction": round(overhead / total, 5) if total > 0 else 0.0,
        }
        if self.runs_trained is not None:
            report["runs_trained"] = self.runs_trained
            report["runs_per_hour"] = round(self.runs_trained / total * 3600, 2) if total > 0 else 0.0
        report["phases"] = {name: round(value, 3) for name, value in sorted(self.seconds.items())}
        return report
