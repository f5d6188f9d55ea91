"""Local data (JSONL/JSON, CSV, Parquet or a `save_to_disk` folder) with prompt and answer columns, read with
`datasets`; its reward is the recipe's `task.reward` list (see `sspo_cli.rewards`)."""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sspo_cli.rewards import Grade, Scorer, scorer
from sspo_cli.rewards.extract import parse_number
from sspo_cli.rewards.functions import numbers_equal
from sspo_cli.tasks.base import (
    Example,
    Task,
    TaskError,
    alphabet_of,
    fill_prompt,
    short_reason,
    split_examples,
    task_builder,
    unique_by_prompt,
)
from sspo_cli.tasks.config import FileTask as FileConfig

# File suffix -> `datasets` packaged builder.
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# What `Dataset.save_to_disk` (or `DatasetDict.save_to_disk`) writes into its folder.
SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")

__all__ = ["LocalFile", "build_file", "numbers_equal", "parse_number"]


@dataclass
class LocalFile(Task):
    scorer: Scorer = field(repr=False)

    def reward(self, completion: str, example: Example, truncated: bool = False) -> float:
        return self.grade(completion, example, truncated).reward

    def grade(self, completion: str, example: Example, truncated: bool = False) -> Grade:
        return self.scorer.grade(completion, example.answer, truncated)


@task_builder(FileConfig)
def build_file(cfg: FileConfig) -> LocalFile:
    path = _checked_path(cfg.path)
    read = _read_saved if path.is_dir() else _read_columns
    prompts, answers = read(path, cfg.prompt_column, cfg.answer_column)
    examples = [
        Example(prompt=fill_prompt(cfg.prompt_template, str(p)), answer=str(a)) for p, a in zip(prompts, answers)
    ]
    rewards = scorer(cfg.reward)
    _check_gold_answers(examples, rewards, path, "task.match" if cfg.match is not None else "task.reward")
    train, dev, eval_ = split_examples(unique_by_prompt(examples), cfg.eval_size, cfg.dev_size, cfg.split_seed)
    return LocalFile(
        name="file", alphabet=alphabet_of(train, dev, eval_), train=train, dev=dev, eval=eval_, scorer=rewards
    )


def _checked_path(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.exists():
        raise TaskError("task.path", f"file {raw!r} not found")
    if path.is_dir():
        if not any((path / name).is_file() for name in SAVED_DATASET_FILES):
            raise TaskError(
                "task.path", f"{raw!r} is not a file, nor a dataset folder written by `datasets`' save_to_disk"
            )
        return path
    if not path.is_file():
        raise TaskError("task.path", f"{raw!r} is not a file")
    if path.suffix.lower() not in BUILDERS:
        kinds = ", ".join(BUILDERS)
        raise TaskError(
            "task.path",
            f"unsupported file type {path.suffix or '(no extension)'!r} of {raw!r}: use {kinds} or a save_to_disk folder",
        )
    if path.stat().st_size == 0:
        raise TaskError("task.path", f"file {raw!r} is empty")
    return path


def _read_saved(path: Path, prompt_column: str, answer_column: str) -> tuple[list[Any], list[Any]]:
    """The two columns of a `save_to_disk` folder (a DatasetDict's `train` split)."""
    import datasets

    with _quiet_datasets():
        try:
            data = datasets.load_from_disk(str(path), keep_in_memory=True)
        except Exception as exc:
            raise TaskError("task.path", f"cannot read the dataset folder '{path}': {short_reason(exc)}") from None
    if isinstance(data, datasets.DatasetDict):
        if "train" not in data:
            splits = ", ".join(repr(s) for s in data)
            raise TaskError("task.path", f"dataset folder '{path}' has no 'train' split (splits: {splits})")
        data = data["train"]
    return _columns(data, path, prompt_column, answer_column)


def _read_columns(path: Path, prompt_column: str, answer_column: str) -> tuple[list[Any], list[Any]]:
    """The two columns as Python lists. Loads through a throw-away cache, so nothing persists on failure."""
    import datasets

    builder = BUILDERS[path.suffix.lower()]
    options: dict[str, Any] = {}
    if builder == "csv":
        # Keep cells as text ("007" stays "007", "NA" stays "NA"); only an empty cell is null.
        options = dict(converters={prompt_column: str, answer_column: str}, keep_default_na=False, na_values=[""])
    with _quiet_datasets(), tempfile.TemporaryDirectory(prefix="sspo-task-") as cache_dir:
        try:
            data = datasets.load_dataset(
                builder, data_files=str(path), split="train", cache_dir=cache_dir, keep_in_memory=True, **options
            )
        except Exception as exc:
            if "corresponds to no data" in str(exc):
                raise TaskError("task.path", f"file '{path}' has no rows") from None
            raise TaskError("task.path", f"cannot read '{path}' as {builder}: {short_reason(exc)}") from None
        return _columns(data, path, prompt_column, answer_column)


def _columns(data: Any, path: Path, prompt_column: str, answer_column: str) -> tuple[list[Any], list[Any]]:
    if data.num_rows == 0:
        raise TaskError("task.path", f"file '{path}' has no rows")
    for key, column in (("task.prompt_column", prompt_column), ("task.answer_column", answer_column)):
        if column not in data.column_names:
            present = ", ".join(repr(c) for c in data.column_names)
            raise TaskError(key, f"no column {column!r} in '{path}' (columns: {present})")
    prompts, answers = list(data[prompt_column]), list(data[answer_column])
    _check_no_nulls("task.prompt_column", prompt_column, prompts, path)
    _check_no_nulls("task.answer_column", answer_column, answers, path)
    return prompts, answers


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """No progress bars or logged errors from `datasets`: failures surface as one TaskError line."""
    import datasets

    bars_were_on = datasets.is_progress_bar_enabled()
    verbosity = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


def _check_no_nulls(key: str, column: str, values: Sequence[Any], path: Path) -> None:
    for row, value in enumerate(values, start=1):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise TaskError(key, f"column {column!r} of '{path}' has a null value in data row {row}")


def _check_gold_answers(examples: Sequence[Example], rewards: Scorer, path: Path, key: str) -> None:
    """Every gold answer must be readable by every reward: a bad one is an error in the data."""
    for row, example in enumerate(examples, start=1):
        problem = rewards.gold_problem(example.answer)
        if problem is not None:
            index, reason = problem
            name = rewards.rewards[index].name
            where = key if key == "task.match" else f"{key}[{index}]"
            raise TaskError(
                where, f"reward {name!r}: the gold answer {example.answer!r} of data row {row} of '{path}' {reason}"
            )
