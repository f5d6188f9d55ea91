"""The run's state types, shared by both engines: no torch, no I/O."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from sspo_cli.models.lora import Adapter


@dataclass
class Policy:
    """The trained model; under LoRA (`adapter`) that is the base model with adapter layers in it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    reference: PreTrainedModel | None = None  # a frozen copy, for a KL term in full fine-tuning
    adapter: Adapter | None = None
    kl_to_base: bool = False  # under LoRA the KL reference is `model` with its adapters off: no copy

    @property
    def has_reference(self) -> bool:
        return self.reference is not None or self.kl_to_base

    @contextmanager
    def reference_model(self) -> Iterator[PreTrainedModel]:
        """The KL reference, for the duration of the block."""
        if self.kl_to_base and self.adapter is not None:
            with self.adapter.disabled():
                yield self.model
        elif self.reference is not None:
            yield self.reference
        else:
            raise ValueError("this policy has no reference")


@dataclass(frozen=True)
class RunOptions:
    """Where a run goes and what it is part of: every engine takes these, beside the recipe."""

    output_dir: Path = Path("runs")  # run folders, the warm-start cache and the default MLflow store
    tracking_uri: str | None = None  # default: sqlite:///<output_dir>/mlflow.db
    observer: TrainingObserver | None = None  # progress and warnings (default: warnings to stderr)
    parent_run_id: str | None = None  # nest the MLflow run under this one (compare, sweep)
    extra_tags: dict[str, str] = field(default_factory=dict)  # more MLflow tags (a workflow's membership)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", Path(self.output_dir))

    @property
    def observer_or_default(self) -> TrainingObserver:
        return self.observer or TrainingObserver()


class TooManySkips(RuntimeError):
    """`train.max_skipped` consecutive non-finite updates. The engine fills in where it saved the last good state."""

    def __init__(self, count: int):
        self.count = count
        self.step: int | None = None
        self.run_dir: Path | None = None
        self.checkpoint: Path | None = None
        super().__init__(f"{count} consecutive updates had a non-finite loss or gradient (train.max_skipped)")


@dataclass
class TrainState:
    """Everything about a run's progress that is not a tensor; saved as trainer_state.json."""

    step: int = 0
    skipped_updates: int = 0
    consecutive_skips: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    elapsed_seconds: float = 0.0  # training time of earlier sessions of this run (resumes add up)
    resumed_from: list[int] = field(default_factory=list)  # steps this run was resumed from

    def count_applied_update(self) -> None:
        self.consecutive_skips = 0

    def count_skipped_update(self, max_consecutive: int) -> None:
        """An update left out for a non-finite loss or gradient; TooManySkips after `max_consecutive` in a row."""
        self.skipped_updates += 1
        self.consecutive_skips += 1
        if self.consecutive_skips >= max_consecutive:
            raise TooManySkips(self.consecutive_skips)


class TrainingObserver:
    """Receives progress; the CLI renders it, tests ignore it. Warnings go to stderr unless overridden."""

    def on_phase(self, message: str) -> None: ...
    def on_warm_start(self, step: int, total: int, dev_accuracy: float | None) -> None: ...
    def on_start(self, total_steps: int, run_name: str, run_dir: Path) -> None: ...
    def on_step(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...

    def on_warning(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)
