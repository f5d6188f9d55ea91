import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from hypothesis import settings
except ImportError:  # the verl environment (.ci/verl_tests) has no property tests and no hypothesis
    pass
else:
    # Property tests check values, not speed: a first example that imports scipy, or a machine shared with a
    # training run, must not fail on hypothesis' default 200 ms deadline.
    settings.register_profile("sspo", deadline=None)
    settings.load_profile("sspo")

# Nothing in the tests may reach a hub: without these a lookup hangs for ~48 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]

# A recipe small enough for a unit test: 1-layer model, no warm start, a handful of steps.
TINY_OVERRIDES = [
    "model.tiny.hidden_size=32",
    "model.tiny.num_layers=1",
    "model.tiny.num_heads=2",
    "model.tiny.num_kv_heads=1",
    "model.tiny.intermediate_size=64",
    "train.warm_start.enabled=false",
    "rollout.prompts_per_step=4",
    "rollout.group_size=4",
    "task.eval_size=32",
    "task.dev_size=0",
    "train.steps=4",
    "eval.every=2",
    "train.checkpoint_every=2",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY_OVERRIDES)


def sspo_command(*args: str) -> list[str]:
    """The real CLI, run as a user runs it (a subprocess of this interpreter)."""
    return [sys.executable, "-m", "sspo_cli.cli.main", *args]


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory) -> Path:
    """A small real model folder (byte-level BPE tokenizer with a chat template, tiny Qwen2): see tests/model_folder.py."""
    from model_folder import build_model_folder

    return build_model_folder(tmp_path_factory.mktemp("model") / "tiny-chat-qwen2")


def write_sums_file(folder: Path) -> Path:
    """A small data file of sums (prompt "a+b", answer the sum) for file-task recipes."""
    data = folder / "sums.jsonl"
    data.write_text(
        "".join(json.dumps({"prompt": f"{a}+{b}", "answer": str(a + b)}) + "\n" for a in range(6) for b in range(6))
    )
    return data


def assert_clean_failure(result: subprocess.CompletedProcess[str], expected: list[str]) -> None:
    """Bad input: exit code 2, one error message naming each of `expected`, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    assert result.stderr.count("error:") == 1, output
    for text in expected:
        assert text in result.stderr, f"{text!r} not in: {result.stderr}"
