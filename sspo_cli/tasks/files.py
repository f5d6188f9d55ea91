"""Local data (JSONL/JSON, CSV or Parquet) with prompt and answer columns, read with `datasets`."""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.tasks.base import Example, Task, TaskError, alphabet_of, short_reason, split_examples, unique_by_prompt

if TYPE_CHECKING:
    from sspo_cli.recipe import FileTask as FileConfig

# File suffix -> `datasets` packaged builder.
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
NUMERIC_REL_TOL = 1e-9


@dataclass
class LocalFile(Task):
    match: str  # "exact" or "numeric"

    def reward(self, completion: str, example: Example) -> float:
        if self.match == "numeric":
            return 1.0 if numbers_equal(completion, example.answer) else 0.0
        return 1.0 if completion.strip() == example.answer.strip() else 0.0


def parse_number(text: str) -> float | None:
    """`text` as a finite float, ignoring surrounding whitespace and thousands commas; else None."""
    try:
        value = float(text.strip().replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def numbers_equal(completion: str, answer: str) -> bool:
    got, gold = parse_number(completion), parse_number(answer)
    return got is not None and gold is not None and math.isclose(got, gold, rel_tol=NUMERIC_REL_TOL, abs_tol=0.0)


def build_file(cfg: FileConfig) -> LocalFile:
    path = _checked_path(cfg.path)
    prompts, answers = _read_columns(path, cfg.prompt_column, cfg.answer_column)
    examples = [Example(prompt=str(p), answer=str(a)) for p, a in zip(prompts, answers)]
    if cfg.match == "numeric":
        _check_numeric_answers(examples, path)
    train, dev, eval_ = split_examples(unique_by_prompt(examples), cfg.eval_size, cfg.dev_size, cfg.split_seed)
    return LocalFile(
        name="file", alphabet=alphabet_of(train, dev, eval_), train=train, dev=dev, eval=eval_, match=cfg.match
    )


def _checked_path(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.exists():
        raise TaskError("task.path", f"file {raw!r} not found")
    if not path.is_file():
        raise TaskError("task.path", f"{raw!r} is not a file")
    if path.suffix.lower() not in BUILDERS:
        kinds = ", ".join(BUILDERS)
        raise TaskError(
            "task.path", f"unsupported file type {path.suffix or '(no extension)'!r} of {raw!r}: use {kinds}"
        )
    if path.stat().st_size == 0:
        raise TaskError("task.path", f"file {raw!r} is empty")
    return path


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


def _check_numeric_answers(examples: Sequence[Example], path: Path) -> None:
    for row, example in enumerate(examples, start=1):
        if parse_number(example.answer) is None:
            raise TaskError(
                "task.match",
                f"'numeric' needs numeric answers, but data row {row} of '{path}' has {example.answer!r} (use 'exact')",
            )
