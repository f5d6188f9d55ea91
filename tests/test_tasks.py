"""Tasks: splits, alphabets, rewards and input errors, on real data (no mocks)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sspo_cli.recipe import AdditionTask, FileTask, ReasoningGymTask, SortTask, recipe_from_dict
from sspo_cli.tasks import (
    ADDITION_ALPHABET,
    TASK_BUILDERS,
    TASK_CONFIGS,
    Example,
    Task,
    TaskBase,
    TaskError,
    build_task,
    register_task,
    task_names,
)
from sspo_cli.tasks.base import clamp_reward
from sspo_cli.tasks.files import numbers_equal, parse_number


def prompts(examples: list[Example]) -> set[str]:
    return {e.prompt for e in examples}


def assert_disjoint_splits(task: Task) -> None:
    train, dev, eval_ = prompts(task.train), prompts(task.dev), prompts(task.eval)
    assert len(train) == len(task.train) and len(dev) == len(task.dev) and len(eval_) == len(task.eval)
    assert not train & dev and not train & eval_ and not dev & eval_


def assert_alphabet_covers(task: Task) -> None:
    assert task.alphabet == "".join(sorted(set(task.alphabet)))
    for example in task.train + task.dev + task.eval:
        assert set(example.prompt) | set(example.answer) <= set(task.alphabet)


def assert_task_error(excinfo: pytest.ExceptionInfo[TaskError], key: str, *fragments: str) -> None:
    error = excinfo.value
    message = str(error)
    assert error.key == key
    assert message.startswith(f"{key}: ")
    assert "\n" not in message and "Traceback" not in message
    for fragment in fragments:
        assert fragment in message, message


# --------------------------------------------------------------------------- addition


@pytest.fixture(scope="module")
def addition() -> Task:
    return build_task(AdditionTask())


def test_addition_splits_are_sized_disjoint_and_cover_every_pair(addition: Task) -> None:
    assert (len(addition.train), len(addition.dev), len(addition.eval)) == (90 * 90 - 512, 256, 256)
    assert_disjoint_splits(addition)
    everything = prompts(addition.train) | prompts(addition.dev) | prompts(addition.eval)
    assert everything == {f"{a}+{b}=" for a in range(10, 100) for b in range(10, 100)}
    for example in addition.train[:50] + addition.eval[:50]:
        a, b = example.prompt.rstrip("=").split("+")
        assert example.answer == str(int(a) + int(b))


def test_addition_split_depends_on_split_seed_only(addition: Task) -> None:
    again = build_task(recipe_from_dict({"seed": 7}, []).task)
    assert (again.train, again.dev, again.eval) == (addition.train, addition.dev, addition.eval)
    other = build_task(AdditionTask(split_seed=99))
    assert prompts(other.eval) != prompts(addition.eval)


def test_addition_alphabet_is_fixed(addition: Task) -> None:
    assert addition.alphabet == ADDITION_ALPHABET == " *+-0123456789="
    assert build_task(AdditionTask(min_operand=0, max_operand=30)).alphabet == ADDITION_ALPHABET
    assert_alphabet_covers(addition)


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        ("82", 1.0),
        (" 82\n", 1.0),
        ("82 ", 1.0),
        ("", 0.0),
        ("  ", 0.0),
        ("81", 0.0),
        ("8", 0.0),
        ("820", 0.0),
        ("82=", 0.0),
        ("8 2", 0.0),
    ],
)
def test_addition_reward(addition: Task, completion: str, reward: float) -> None:
    assert addition.reward(completion, Example(prompt="37+45=", answer="82")) == reward


@given(completion=st.text(max_size=8))
def test_addition_reward_is_exact_match_after_strip(addition: Task, completion: str) -> None:
    example = Example(prompt="2+3=", answer="5")
    assert addition.reward(completion, example) == (1.0 if completion.strip() == "5" else 0.0)


def test_addition_without_room_for_train_names_eval_size() -> None:
    # The recipe validator rejects this too; the builder checks on its own.
    cfg = AdditionTask.model_construct(min_operand=1, max_operand=4, eval_size=10, dev_size=6)
    with pytest.raises(TaskError) as excinfo:
        build_task(cfg)
    assert_task_error(excinfo, "task.eval_size", "16")


def test_task_repr_is_short(addition: Task) -> None:
    assert len(repr(addition)) < 200


def test_unknown_task_name() -> None:
    with pytest.raises(TaskError) as excinfo:
        build_task(SimpleNamespace(name="chess"))
    assert_task_error(excinfo, "task.name", "addition")


def test_example_is_hashable_and_immutable() -> None:
    example = Example(prompt="1+1=", answer="2", meta={"x": [1]})
    assert hash(example) == hash(Example(prompt="1+1=", answer="2", meta={"x": [1]}))
    with pytest.raises(AttributeError):
        example.answer = "3"  # type: ignore[misc]


def test_importing_tasks_is_light() -> None:
    code = "import sys, sspo_cli.tasks; print(sorted(m for m in ('datasets', 'reasoning_gym', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@given(st.one_of(st.floats(allow_nan=True), st.none(), st.text(max_size=3), st.integers()))
def test_clamp_reward_is_in_unit_interval(value: object) -> None:
    assert 0.0 <= clamp_reward(value) <= 1.0


# --------------------------------------------------------------------------- reasoning gym


@pytest.fixture(scope="module")
def gym() -> Task:
    return build_task(ReasoningGymTask(dataset="basic_arithmetic", size=60, eval_size=10, dev_size=10))


def test_reasoning_gym_splits_and_gold_answers_score_one(gym: Task) -> None:
    assert (len(gym.dev), len(gym.eval)) == (10, 10) and len(gym.train) >= 30
    assert_disjoint_splits(gym)
    assert_alphabet_covers(gym)
    for example in gym.train + gym.dev + gym.eval:
        assert example.meta["question"] == example.prompt and example.meta["answer"] == example.answer
        assert gym.reward(example.answer, example) == 1.0
        assert gym.reward(f"  {example.answer}\n", example) == 1.0
        assert gym.reward("not a number", example) < 1.0
        assert gym.reward("", example) < 1.0


def test_reasoning_gym_is_deterministic(gym: Task) -> None:
    again = build_task(ReasoningGymTask(dataset="basic_arithmetic", size=60, eval_size=10, dev_size=10))
    assert [e.prompt for e in again.eval] == [e.prompt for e in gym.eval]
    assert [e.prompt for e in again.train] == [e.prompt for e in gym.train]


def test_reasoning_gym_deduplicates_questions() -> None:
    # One-digit sums of two terms: far fewer distinct questions than generated entries.
    config = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    task = build_task(ReasoningGymTask(dataset="basic_arithmetic", size=400, config=config, eval_size=20, dev_size=20))
    assert_disjoint_splits(task)
    assert len(task.train) + 40 < 400


def test_reasoning_gym_unknown_dataset_suggests_a_name() -> None:
    with pytest.raises(TaskError) as excinfo:
        build_task(ReasoningGymTask(dataset="basic_arithmetc"))
    assert_task_error(excinfo, "task.dataset", "'basic_arithmetc'", "did you mean 'basic_arithmetic'?")


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"no_such_option": 1}, "no_such_option"),
        ({"min_terms": 5, "max_terms": 2}, "max_terms"),
        ({"seed": 3}, "task.split_seed"),
    ],
)
def test_reasoning_gym_bad_config(config: dict, fragment: str) -> None:
    with pytest.raises(TaskError) as excinfo:
        build_task(ReasoningGymTask(dataset="basic_arithmetic", size=20, config=config))
    assert_task_error(excinfo, "task.config", fragment)


def test_reasoning_gym_too_small_for_held_out_splits() -> None:
    with pytest.raises(TaskError) as excinfo:
        build_task(ReasoningGymTask(dataset="basic_arithmetic", size=20, eval_size=10, dev_size=10))
    assert_task_error(excinfo, "task.eval_size")


# --------------------------------------------------------------------------- files

ROWS = [{"prompt": f"Q{i}: what is {i} * 1000?", "answer": f"{i * 1000}"} for i in range(20)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    import datasets

    datasets.Dataset.from_dict(columns).to_parquet(str(path))
    return path


def file_task(path: Path, **options) -> Task:
    return build_task(
        FileTask(path=str(path), eval_size=options.pop("eval_size", 4), dev_size=options.pop("dev_size", 3), **options)
    )


def test_jsonl_file_task(tmp_path: Path) -> None:
    task = file_task(write_jsonl(tmp_path / "data.jsonl", ROWS))
    assert (len(task.train), len(task.dev), len(task.eval)) == (13, 3, 4)
    assert_disjoint_splits(task)
    assert_alphabet_covers(task)
    everything = {(e.prompt, e.answer) for e in task.train + task.dev + task.eval}
    assert everything == {(row["prompt"], row["answer"]) for row in ROWS}
    again = file_task(tmp_path / "data.jsonl")
    assert (again.train, again.dev, again.eval) == (task.train, task.dev, task.eval)
    reshuffled = file_task(tmp_path / "data.jsonl", split_seed=5)
    assert prompts(reshuffled.eval) != prompts(task.eval)


def test_fingerprint_follows_the_data(tmp_path: Path, addition: Task) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", ROWS)
    first = file_task(path).fingerprint()
    assert file_task(path).fingerprint() == first
    assert file_task(path, split_seed=5).fingerprint() != first
    write_jsonl(path, [*ROWS[:-1], {"prompt": ROWS[-1]["prompt"], "answer": "changed"}])
    assert file_task(path).fingerprint() != first
    assert addition.fingerprint() == build_task(AdditionTask()).fingerprint()


def test_csv_keeps_cells_as_text_and_deduplicates_prompts(tmp_path: Path) -> None:
    text = 'question,target\nfirst,007\nsecond,NA\n"third, quoted","1,000"\nfirst,999\n' + "".join(
        f"q{i},{i}\n" for i in range(6)
    )
    task = file_task(
        write_csv(tmp_path / "data.csv", text),
        prompt_column="question",
        answer_column="target",
        eval_size=2,
        dev_size=2,
    )
    answers = {e.prompt: e.answer for e in task.train + task.dev + task.eval}
    assert len(answers) == 9 and len(task.train) == 5
    assert answers["first"] == "007"  # not parsed as 7, and the first duplicate wins
    assert answers["second"] == "NA"  # not a null
    assert answers["third, quoted"] == "1,000"


def test_parquet_file_task_converts_values_to_str(tmp_path: Path) -> None:
    path = write_parquet(
        tmp_path / "data.parquet", {"prompt": [f"{i}+{i}=" for i in range(12)], "answer": [2 * i for i in range(12)]}
    )
    task = file_task(path, match="numeric")
    assert_disjoint_splits(task)
    for example in task.train + task.dev + task.eval:
        left = int(example.prompt.split("+")[0])
        assert example.answer == str(2 * left)
        assert task.reward(example.answer, example) == 1.0


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(ROWS), encoding="utf-8")
    assert len(file_task(path).train) == 13


@pytest.mark.parametrize(
    ("completion", "answer", "exact", "numeric"),
    [
        ("1000", "1000", 1.0, 1.0),
        (" 1000\n", "1000", 1.0, 1.0),
        ("1,000", "1000", 0.0, 1.0),
        ("1000.0", "1000", 0.0, 1.0),
        ("1e3", "1,000", 0.0, 1.0),
        ("1000.0000001", "1000", 0.0, 1.0),  # within 1e-9 relative
        ("1000.01", "1000", 0.0, 0.0),
        ("-5", "5", 0.0, 0.0),
        ("", "0", 0.0, 0.0),
        ("one thousand", "1000", 0.0, 0.0),
        ("nan", "1000", 0.0, 0.0),
    ],
)
def test_exact_and_numeric_match(tmp_path: Path, completion: str, answer: str, exact: float, numeric: float) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", ROWS)
    example = Example(prompt="p", answer=answer)
    assert file_task(path, match="exact").reward(completion, example) == exact
    assert file_task(path, match="numeric").reward(completion, example) == numeric


def test_parse_number() -> None:
    assert parse_number(" 1,234.5 ") == 1234.5
    assert parse_number("-0") == 0.0
    assert parse_number("inf") is None and parse_number("nan") is None and parse_number("") is None
    assert numbers_equal("0", "0.0") and not numbers_equal("0", "1e-300")


def sspo_temp_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("sspo-task-*")}


@pytest.mark.parametrize(
    ("name", "content", "options", "key", "fragment"),
    [
        ("missing.jsonl", None, {}, "task.path", "not found"),
        ("data.txt", "prompt,answer\na,b\n", {}, "task.path", "'.txt'"),
        ("noext", "prompt,answer\na,b\n", {}, "task.path", "no extension"),
        ("empty.jsonl", "", {}, "task.path", "empty"),
        ("blank.jsonl", "\n  \n", {}, "task.path", "no rows"),
        ("header.csv", "prompt,answer\n", {}, "task.path", "no rows"),
        ("bad.jsonl", '{"prompt": "a", "answer": "1"}\n{"prompt": "b"\n', {}, "task.path", "JSON parse error"),
        ("bad.parquet", "this is not parquet", {}, "task.path", "cannot read"),
        ("data.csv", "question,answer\na,1\n", {}, "task.prompt_column", "'question', 'answer'"),
        ("data.jsonl", '{"prompt": "a", "gold": "1"}\n', {}, "task.answer_column", "'prompt', 'gold'"),
        ("data.csv", "prompt,answer\na,1\nb,\n", {}, "task.answer_column", "row 2"),
        (
            "data.jsonl",
            '{"prompt": "a", "answer": "1"}\n{"prompt": null, "answer": "2"}\n',
            {},
            "task.prompt_column",
            "row 2",
        ),
        ("data.csv", "prompt,answer\na,1\nb,two\n", {"match": "numeric"}, "task.match", "'two'"),
    ],
)
def test_bad_file_input(tmp_path: Path, name: str, content: str | None, options: dict, key: str, fragment: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    before = sspo_temp_dirs()
    with pytest.raises(TaskError) as excinfo:
        file_task(path, eval_size=1, dev_size=0, **options)
    assert_task_error(excinfo, key, fragment)
    assert sspo_temp_dirs() <= before  # a failed load leaves no cache behind


def test_directory_path(tmp_path: Path) -> None:
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(TaskError) as excinfo:
        file_task(tmp_path / "dir.jsonl")
    assert_task_error(excinfo, "task.path", "not a file")


def test_file_too_small_for_held_out_splits(tmp_path: Path) -> None:
    with pytest.raises(TaskError) as excinfo:
        file_task(write_jsonl(tmp_path / "data.jsonl", ROWS[:7]), eval_size=4, dev_size=3)
    assert_task_error(excinfo, "task.eval_size", "7")


# --------------------------------------------------------------------------- files: rewards and saved datasets

GSM8K_ROWS = [
    {"question": f"Tom has {i} apples and buys {i}. How many?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i:,}"}
    for i in range(600, 620)
]


def gsm8k_task(path: Path, **options) -> Task:
    return file_task(
        path, prompt_column="question", reward=[{"name": "gsm8k"}, {"name": "format", "weight": 0.5}], **options
    )


def test_a_reward_list_scores_and_grades(tmp_path: Path) -> None:
    task = gsm8k_task(write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS))
    example = Example(prompt="p", answer="1 + 1 = 1,234\n#### 1,234")
    assert task.grade("so 1234\n#### 1,234", example).reward == 1.0
    assert task.grade("#### 1234", example, truncated=True).reward == 0.0
    cut_to_a_lucky_prefix = task.grade("#### 1", Example(prompt="p", answer="#### 1"), truncated=True)
    assert (cut_to_a_lucky_prefix.reward, cut_to_a_lucky_prefix.correct) == (0.0, False)
    two_answers = task.grade("#### 5\n#### 1234", example)
    assert two_answers.reward == pytest.approx(1 / 1.5) and two_answers.correct


def test_match_is_a_shorthand_for_a_one_reward_list(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "data.jsonl", ROWS)
    shorthand = FileTask(path=str(path), match="numeric")
    assert [r.name for r in shorthand.reward] == ["numeric"]
    assert FileTask(path=str(path)).reward == [FileTask(path=str(path), match="exact").reward[0]]
    assert file_task(path, match="numeric").reward("1,000", Example(prompt="p", answer="1000")) == 1.0


def test_a_gold_answer_the_reward_cannot_read_names_key_row_and_file(tmp_path: Path) -> None:
    rows = [*GSM8K_ROWS[:5], {"question": "q?", "answer": "no marker, no number"}, *GSM8K_ROWS[5:]]
    path = write_jsonl(tmp_path / "gsm8k.jsonl", rows)
    with pytest.raises(TaskError) as excinfo:
        gsm8k_task(path)
    assert_task_error(excinfo, "task.reward[0]", "'gsm8k'", "data row 6", str(path), "'no marker, no number'")


def save_to_disk(folder: Path, columns: dict[str, list], split: str | None = None) -> Path:
    import datasets

    data = datasets.Dataset.from_dict(columns)
    (datasets.DatasetDict({split: data}) if split else data).save_to_disk(str(folder))
    return folder


def test_a_saved_dataset_folder(tmp_path: Path) -> None:
    columns = {key: [row[key] for row in GSM8K_ROWS] for key in ("question", "answer")}
    task = gsm8k_task(save_to_disk(tmp_path / "gsm8k", columns))
    assert len(task.train) + len(task.dev) + len(task.eval) == len(GSM8K_ROWS)
    assert task.eval[0].answer.count("####") == 1
    from_a_dict = gsm8k_task(save_to_disk(tmp_path / "dict", columns, split="train"))
    assert from_a_dict.fingerprint() == task.fingerprint()


@pytest.mark.parametrize(
    ("make", "key", "fragment"),
    [
        (lambda folder: folder.mkdir(), "task.path", "save_to_disk"),
        (
            lambda folder: save_to_disk(folder, {"question": ["a"], "answer": ["1"]}, split="test"),
            "task.path",
            "'test'",
        ),
        (lambda folder: save_to_disk(folder, {"prompt": ["a"], "gold": ["1"]}), "task.prompt_column", "'gold'"),
    ],
    ids=["not-a-dataset", "no-train-split", "missing-column"],
)
def test_bad_saved_dataset_folders(tmp_path: Path, make, key: str, fragment: str) -> None:
    folder = tmp_path / "data"
    make(folder)
    with pytest.raises(TaskError) as excinfo:
        file_task(folder, prompt_column="question", eval_size=1, dev_size=0)
    assert_task_error(excinfo, key, fragment)


# --------------------------------------------------------------------------- sort (long completions)


def sort_task(**options: object) -> Task:
    return build_task(SortTask(length=options.pop("length", 64), eval_size=20, dev_size=10, train_size=200, **options))


def test_sort_splits_are_disjoint_sized_and_gold_is_sorted() -> None:
    task = sort_task(digits=4)
    prompts = [e.prompt for split in (task.train, task.dev, task.eval) for e in split]
    assert (len(task.train), len(task.dev), len(task.eval)) == (200, 10, 20)
    assert len(set(prompts)) == len(prompts)
    for example in task.train[:20]:
        digits = example.prompt.removesuffix("=")
        assert len(digits) == 64 and set(digits) <= set("0123")
        assert example.answer == "".join(sorted(digits))
        assert list(example.answer) == sorted(example.answer)


def test_sort_length_is_the_completion_length() -> None:
    task = sort_task(length=100)
    assert {len(e.answer) for e in task.eval} == {100}


def test_sort_is_deterministic_in_split_seed() -> None:
    assert sort_task().eval == sort_task().eval
    assert sort_task().eval != sort_task(split_seed=7).eval


@pytest.mark.parametrize(
    ("completion", "reward"),
    [
        ("0123", 1.0),
        (" 0123 ", 1.0),
        ("", 0.0),
        ("9999", 0.0),
        ("0113", 0.75),  # 3 of 4 characters match
        ("01234", 8 / 9),  # one digit too many costs one character, not the rest
        ("023", 6 / 7),  # one digit missing
    ],
)
def test_sort_similarity_reward(completion: str, reward: float) -> None:
    example = Example(prompt="3102=", answer="0123")
    task = sort_task(length=8)
    assert task.reward(completion, example) == pytest.approx(reward)
    assert task.grade(completion, example).correct == (reward == 1.0)


def test_sort_exact_reward_and_accuracy_is_exact_under_both() -> None:
    example = Example(prompt="3102=", answer="0123")
    exact = sort_task(length=8, reward="exact")
    assert exact.reward("0113", example) == 0.0
    assert exact.reward("0123", example) == 1.0
    assert not sort_task(length=8).grade("0113", example).correct


def test_sort_with_too_few_strings_names_the_key() -> None:
    with pytest.raises(ValueError, match="too few"):
        recipe_from_dict({"task": {"name": "sort", "length": 3, "digits": 2}}, [], "r.yaml")


# --------------------------------------------------------------------------- the list of tasks

# `toy_task.py` registers a fifth task from outside the package (a config model and its builder);
# the real `sspo` then runs in a subprocess that imported it first, as a module of `sspo_cli.tasks` would be.
TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
TOY_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]), "COLUMNS": "200"}


def python_with_toy_task(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "import toy_task\n" + code, *args],
        cwd=REPO,
        env=TOY_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_registered_task_is_in_the_recipe_of_sspo_validate() -> None:
    sets = [
        a
        for o in ("task.name=countdown", "task.largest=30", "task.eval_size=8", "task.dev_size=4")
        for a in ("--set", o)
    ]
    code = "from sspo_cli.cli.main import main; main()"
    result = python_with_toy_task(code, "validate", "recipes/quickstart.yaml", *sets)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "name: countdown" in result.stdout and "largest: 30" in result.stdout


def test_a_registered_task_is_loaded_and_built(tmp_path: Path) -> None:
    recipe = tmp_path / "countdown.yaml"
    recipe.write_text("task:\n  name: countdown\n  largest: 20\n  eval_size: 5\n  dev_size: 3\n")
    code = (
        "import sys\nfrom sspo_cli.recipe import load_recipe\nfrom sspo_cli.tasks import build_task\n"
        "task = build_task(load_recipe(sys.argv[1]).task)\n"
        "example = task.eval[0]\n"
        "print(type(task).__name__, task.name, len(task.train), len(task.dev), len(task.eval))\n"
        "print(task.reward(example.answer, example), task.reward('x', example), example.answer.endswith(',1'))\n"
    )
    result = python_with_toy_task(code, str(recipe))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Countdown", "countdown", "12", "3", "5", "1.0", "0.0", "True"]


def test_without_it_the_task_name_is_unknown() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sspo_cli.cli.main",
            "validate",
            "recipes/quickstart.yaml",
            "--set",
            "task.name=countdown",
        ],
        cwd=REPO,
        env=TOY_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "task.name" in result.stderr and "'countdown'" in result.stderr


def test_every_registered_task_has_a_builder() -> None:
    assert set(TASK_BUILDERS) == set(TASK_CONFIGS.values())
    assert task_names() == ("addition", "sort", "reasoning_gym", "file")


def test_an_unknown_task_lists_the_registered_ones() -> None:
    cfg = SimpleNamespace(name="chess")
    with pytest.raises(TaskError) as excinfo:
        build_task(cfg)
    assert_task_error(excinfo, "task.name", "unknown task 'chess'", "addition, sort, reasoning_gym, file")


def test_registering_a_task_once_the_recipe_model_exists_is_an_error() -> None:
    import sspo_cli.recipe  # noqa: F401  (builds the recipe model from the tasks registered so far)

    with pytest.raises(RuntimeError, match="before sspo_cli.recipe"):

        @register_task
        class Late(TaskBase):
            name: Literal["late"] = "late"

    assert "late" not in task_names()


def test_a_task_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="'addition' is registered twice"):
        register_task(AdditionTask)
