"""Bad input, through the real CLI: one readable message naming the file and the key, exit 2,
no traceback, and nothing written (no run folder, no MLflow run, not even the output dir).

The corpus of recipes and data files is tests/bad_inputs/; cases that need a folder, a store
or a model built on the spot are made in a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import assert_clean_failure
from helpers_reliability import BAD_INPUTS, count_runs, mlflow_store, run_sspo

# file in tests/bad_inputs -> text the message must contain (the file, the key, the why)
RECIPE_CASES = {
    "malformed_yaml.yaml": ["malformed_yaml.yaml", "line 5, column 6"],
    "unknown_key.yaml": ["unknown_key.yaml", "rollout.group_sise", "did you mean 'group_size'"],
    "wrong_type.yaml": ["wrong_type.yaml", "train.steps", "'many'"],
    "temperature_out_of_range.yaml": ["temperature_out_of_range.yaml", "rollout.temperature", "greater than 0"],
    "epsilon_out_of_range.yaml": ["epsilon_out_of_range.yaml", "objective.eps_low", "less than 1"],
    "size_out_of_range.yaml": ["size_out_of_range.yaml", "rollout.group_size", "greater than or equal to 2"],
    "unknown_objective.yaml": ["unknown_objective.yaml", "objective.name", "'ppo'", "sspo"],
    "unknown_gate.yaml": ["unknown_gate.yaml", "objective.gate", "'tanh'", "sigmoid"],
    "unknown_task.yaml": ["unknown_task.yaml", "task.name", "'multiplication'", "addition"],
    "lora_rank_zero.yaml": ["lora_rank_zero.yaml", "model.lora.rank", "greater than or equal to 1"],
    "length_buckets_zero.yaml": [
        "length_buckets_zero.yaml",
        "performance.length_buckets",
        "greater than or equal to 1",
    ],
    "update_attention_unknown.yaml": [
        "update_attention_unknown.yaml",
        "performance.update_attention",
        "'flash'",
        "eager",
    ],
    "lora_negative_dropout.yaml": ["lora_negative_dropout.yaml", "model.lora.dropout", "greater than or equal to 0"],
    "prompt_template_unknown_field.yaml": ["prompt_template_unknown_field.yaml", "task.prompt_template", "{answer}"],
    "policy_lag_negative.yaml": ["policy_lag_negative.yaml", "rollout.policy_lag", "greater than or equal to 0"],
    "policy_lag_and_sync_interval.yaml": ["policy_lag_and_sync_interval.yaml", "rollout", "set one of them"],
    "sort_answer_longer_than_max_new_tokens.yaml": [
        "sort_answer_longer_than_max_new_tokens.yaml",
        "rollout.max_new_tokens 16",
        "65 tokens",
    ],
    "sort_longer_than_max_positions.yaml": [
        "sort_longer_than_max_positions.yaml",
        "model.tiny.max_positions 64",
        "130 tokens",
    ],
    "micro_batch_out_of_range.yaml": [
        "micro_batch_out_of_range.yaml",
        "performance.micro_batch_size",
        "greater than or equal to 1",
    ],
    "trl_importance_mode_unknown.yaml": [
        "trl_importance_mode_unknown.yaml",
        "trl.vllm_importance_sampling_mode",
        "'per_token'",
        "token_truncate",
    ],
}
# Recipes that validate but whose data or model cannot be used: caught by `train`, before any write.
INPUT_CASES = {
    "missing_data_file.yaml": ["missing_data_file.yaml", "task.path", "no_such_data.jsonl", "not found"],
    "empty_data_file.yaml": ["empty_data_file.yaml", "task.path", "empty.jsonl", "empty"],
    "data_without_columns.yaml": [
        "data_without_columns.yaml",
        "task.prompt_column",
        "question_only.jsonl",
        "'question'",
    ],
    "missing_model_path.yaml": ["missing_model_path.yaml", "model.path", "no_such_model_folder", "does not exist"],
    "lora_unknown_target.yaml": [
        "lora_unknown_target.yaml",
        "model.lora.target_modules",
        "'query' matches no module",
        "q_proj",
    ],
    "chat_template_without_one.yaml": ["chat_template_without_one.yaml", "model.chat_template", "no chat template"],
    "system_prompt_without_chat.yaml": [
        "system_prompt_without_chat.yaml",
        "task.system_prompt",
        "task.prompt_template",
    ],
    "unreadable_gold_answer.yaml": [
        "task.reward[0]",
        "'gsm8k'",
        "data row 3",
        "gsm8k_gold_without_number.jsonl",
        "thirty",
    ],
}


def assert_nothing_written(output_dir: Path, *stores: Path) -> None:
    assert not output_dir.exists(), sorted(p.name for p in output_dir.iterdir())
    for store in stores:
        assert count_runs(store) == 0


@pytest.mark.parametrize("name", sorted(RECIPE_CASES))
@pytest.mark.parametrize("command", ["train", "validate"])
def test_bad_recipe(name: str, command: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = [command, name] + (["-o", str(out)] if command == "train" else [])
    result = run_sspo(*args, cwd=BAD_INPUTS)
    assert_clean_failure(result, RECIPE_CASES[name])
    assert_nothing_written(out)


@pytest.mark.parametrize("name", sorted(INPUT_CASES))
def test_bad_data_or_model(name: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_sspo("train", name, "-o", str(out), cwd=BAD_INPUTS)
    assert_clean_failure(result, INPUT_CASES[name])
    assert_nothing_written(out)


def test_a_relative_data_path_is_read_beside_the_recipe_from_any_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_sspo("train", str(BAD_INPUTS / "unreadable_gold_answer.yaml"), "-o", str(out), cwd=tmp_path)
    assert_clean_failure(result, [f"'{BAD_INPUTS / 'gsm8k_gold_without_number.jsonl'}'", "data row 3"])
    assert_nothing_written(out)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("performance.micro_batch_size=-3", "greater than or equal to 1"),
        ("performance.gradient_checkpointing=maybe", "'maybe'"),
    ],
)
def test_bad_memory_setting(setting: str, expected: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_sspo("train", "base.yaml", "--set", setting, "-o", str(out), cwd=BAD_INPUTS)
    assert_clean_failure(result, ["base.yaml", setting.split("=")[0], expected])
    assert_nothing_written(out)


def test_set_that_names_no_key(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_sspo("train", "base.yaml", "--set", "rollout.group_sise=4", "-o", str(out), cwd=BAD_INPUTS)
    assert_clean_failure(result, ["base.yaml", "--set rollout.group_sise", "did you mean 'group_size'"])
    assert_nothing_written(out)


@pytest.mark.parametrize("value", ["0", "many", "-2"])
def test_bad_population_size(value: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_sspo("compare", "base.yaml", "--population", value, "-o", str(out), cwd=BAD_INPUTS)
    assert_clean_failure(result, ["--population", "auto, off or a number", repr(value)])
    assert_nothing_written(out)


# --------------------------------------------------------------------------- models that are not causal LMs


def save_encoder(folder: Path, kind: str) -> Path:
    """A real encoder checkpoint (config.json + safetensors, no tokenizer) made with transformers."""
    from transformers import BertConfig, BertForMaskedLM, DistilBertConfig, DistilBertForMaskedLM

    if kind == "bert":
        model = BertForMaskedLM(
            BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
        )
    else:
        model = DistilBertForMaskedLM(DistilBertConfig(vocab_size=40, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["distilbert", "bert"])
def test_model_folder_that_is_not_a_causal_lm(kind: str, tmp_path: Path) -> None:
    # BERT has a causal-LM class (BertLMHeadModel), so only its missing end-of-sequence token gives it away.
    folder = save_encoder(tmp_path / kind, kind)
    out = tmp_path / "out"
    result = run_sspo("train", "base.yaml", "--set", f"model.path={folder}", "-o", str(out), cwd=BAD_INPUTS)
    assert_clean_failure(result, ["base.yaml", "model.path", "not a causal language model"])
    assert_nothing_written(out)


# --------------------------------------------------------------------------- run folders given to --resume


def test_resume_of_a_folder_that_does_not_exist(tmp_path: Path) -> None:
    result = run_sspo("train", "--resume", str(tmp_path / "gone"))
    assert_clean_failure(result, ["--resume", str(tmp_path / "gone"), "does not exist"])


def test_resume_of_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    folder = tmp_path / "some-folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a run")
    result = run_sspo("train", "--resume", str(folder))
    assert_clean_failure(result, ["--resume", "some-folder", "not a run folder", "run.json"])
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_resume_of_a_file(tmp_path: Path) -> None:
    result = run_sspo("train", "--resume", str(BAD_INPUTS / "base.yaml"))
    assert_clean_failure(result, ["--resume", "base.yaml", "is not a folder"])


def test_resume_with_a_damaged_run_json(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(BAD_INPUTS / "base.yaml", folder / "recipe.yaml")
    (folder / "run.json").write_text("{not json")
    result = run_sspo("train", "--resume", str(folder))
    assert_clean_failure(result, ["--resume", "run.json", "damaged"])


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["base.yaml"], "takes no RECIPE"),
        (["--set", "train.steps=3"], "takes no --set"),
        (["-o", "elsewhere"], "takes no --output-dir"),
    ],
)
def test_resume_takes_only_the_run_folder(extra: list[str], expected: str, tmp_path: Path) -> None:
    result = run_sspo("train", *extra, "--resume", str(tmp_path), cwd=BAD_INPUTS)
    assert_clean_failure(result, ["--resume", expected])


def test_train_without_recipe_or_resume() -> None:
    result = run_sspo("train")
    assert_clean_failure(result, ["RECIPE", "--resume RUN_DIR"])


# --------------------------------------------------------------------------- MLflow stores and output dirs


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make a file or folder unwritable even for root (chattr +i), or skip where that is impossible."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if (
        shutil.which("chattr") is None
        or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0
    ):
        pytest.skip("cannot make a path read-only for root here (no chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.fixture
def empty_store(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    return mlflow_store(tmp_path_factory, tmp_path / "store")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def train_base(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_sspo("train", "base.yaml", "-o", str(out), *extra, cwd=BAD_INPUTS, timeout=120)


def test_tracking_uri_in_a_missing_folder(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/nonexistent/dir/x.db"
    result = train_base(tmp_path / "out", "--tracking-uri", uri)
    assert_clean_failure(result, ["--tracking-uri", "nonexistent/dir", "does not exist"])
    assert_nothing_written(tmp_path / "out")
    assert not (tmp_path / "nonexistent").exists()


def test_tracking_uri_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    result = train_base(tmp_path / "out", "--tracking-uri", f"sqlite:///{tmp_path}/plain-file/x.db")
    assert_clean_failure(result, ["--tracking-uri", "plain-file", "is not a folder"])
    assert_nothing_written(tmp_path / "out")


def test_tracking_uri_that_is_not_a_database(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not an sqlite database, just text" * 100)
    result = train_base(tmp_path / "out", "--tracking-uri", f"sqlite:///{junk}")
    assert_clean_failure(result, ["--tracking-uri", "junk.db", "cannot be written", "not a database"])
    assert_nothing_written(tmp_path / "out")


def test_tracking_store_that_cannot_be_written(tmp_path: Path, empty_store: Path) -> None:
    store = empty_store
    with read_only(store):
        result = train_base(tmp_path / "out", "--tracking-uri", f"sqlite:///{store}")
    assert_clean_failure(result, ["--tracking-uri", "mlflow.db", "cannot be written"])
    assert_nothing_written(tmp_path / "out", store)


def test_tracking_store_locked_by_another_writer(tmp_path: Path, empty_store: Path) -> None:
    store = empty_store
    holder = sqlite3.connect(store, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = train_base(tmp_path / "out", "--tracking-uri", f"sqlite:///{store}")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert_clean_failure(result, ["--tracking-uri", "mlflow.db", "cannot be written", "locked"])
    assert_nothing_written(tmp_path / "out", store)


def test_tracking_server_that_cannot_be_reached(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    result = train_base(tmp_path / "out", "--tracking-uri", uri)
    assert_clean_failure(result, ["--tracking-uri", uri, "cannot be reached"])
    assert_nothing_written(tmp_path / "out")


def test_output_dir_under_a_regular_file(tmp_path: Path) -> None:
    (tmp_path / "plain-file").write_text("")
    out = tmp_path / "plain-file" / "runs"
    result = train_base(out)
    assert_clean_failure(result, ["--output-dir", "plain-file", "is not a folder"])
    assert (tmp_path / "plain-file").read_text() == ""


def test_output_dir_that_cannot_be_written(tmp_path: Path) -> None:
    out = tmp_path / "locked"
    out.mkdir()
    with read_only(out):
        result = train_base(out)
    assert_clean_failure(result, ["--output-dir", "locked", "cannot write"])
    assert list(out.iterdir()) == []


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_sspo("train", "unknown_key.yaml", "-o", str(tmp_path / "out"), "--debug", cwd=BAD_INPUTS)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "RecipeError" in result.stderr


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["engine=trl", "trl.use_vllm=true"], "trl.use_vllm"),  # sections the CLI once listed by hand lacked
        (["engine=trl", "rollout.updates_per_rollout=3"], "rollout.updates_per_rollout"),
        (["engine=trl", "model.lora.rank=4"], "model.lora"),
        (["engine=trl", "rollout.behaviour_logprobs=sampler"], "rollout.behaviour_logprobs"),  # vLLM's only
        (["engine=trl", "trl.vllm_importance_sampling_correction=true"], "trl.vllm_importance_sampling_correction"),
    ],
)
def test_an_engine_refusal_names_the_recipe_file_and_key(overrides: list[str], key: str) -> None:
    sets = [a for o in overrides for a in ("--set", o)]
    result = run_sspo("validate", "base.yaml", *sets, cwd=BAD_INPUTS)
    assert_clean_failure(result, [f"base.yaml: {key}: "])


def test_lora_without_peft_says_how_to_install_it(tmp_path: Path) -> None:
    """peft is hidden from the child by a `peft.py` first on its PYTHONPATH that fails to import."""
    from helpers_reliability import ENV, sspo_args

    blocker = tmp_path / "hide_peft"
    blocker.mkdir()
    (blocker / "peft.py").write_text("raise ModuleNotFoundError(\"No module named 'peft'\", name='peft')\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(blocker), ENV["PYTHONPATH"]])}
    out = tmp_path / "out"
    result = subprocess.run(
        sspo_args("train", "base.yaml", "--set", "model.lora.rank=4", "-o", str(out)),
        cwd=BAD_INPUTS,
        env=env,
        capture_output=True,
        text=True,
    )
    assert_clean_failure(result, ["model.lora", "pip install -e '.[lora]'"])
    assert_nothing_written(out)
