"""Without TRL: the native engine trains, TRL's tests skip, and `engine: trl` says how to install it.

TRL is hidden from a child interpreter by a `trl.py` first on its PYTHONPATH that fails to import,
exactly as a missing package does, so these run whether or not the trl extra is installed.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_OVERRIDES, sspo_command


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow store, migrated once here, for the child runs (creating one takes seconds)."""
    from sspo_cli.run.tracking import open_client

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    open_client(uri)
    return uri


@pytest.fixture
def without_trl(tmp_path: Path) -> dict[str, str]:
    blocker = tmp_path / "hide_trl"
    blocker.mkdir()
    (blocker / "trl.py").write_text("raise ModuleNotFoundError(\"No module named 'trl'\", name='trl')\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), str(REPO), env.get("PYTHONPATH", "")])
    return env


ENGINES_WITHOUT_TRL = """
import json, sys
from pathlib import Path
from sspo_cli.recipe import load_recipe
from sspo_cli.engines.dispatch import run_training
from sspo_cli.run.state import RunOptions
from sspo_cli.engines.trl.engine import run_training_trl
from sspo_cli.engines.trl.mapping import TrlEngineError

out, store, overrides = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
recipe = load_recipe("recipes/quickstart.yaml", overrides)
native = run_training(recipe, RunOptions(output_dir=out / "native", tracking_uri=store))
try:
    run_training_trl(recipe.model_copy(update={"engine": "trl"}), RunOptions(output_dir=out / "trl", tracking_uri=store))
except TrlEngineError as exc:
    print(json.dumps({"native_steps": native["steps"], "key": exc.key, "message": str(exc)}))
"""


def test_native_trains_and_trl_engine_asks_for_the_extra(
    tmp_path: Path, without_trl: dict[str, str], store: str
) -> None:
    import json

    overrides = [*TINY_OVERRIDES, "train.steps=1", "task.eval_size=8", "train.threads=1"]
    result = subprocess.run(
        [sys.executable, "-c", ENGINES_WITHOUT_TRL, str(tmp_path), store, *overrides],
        cwd=REPO,
        env=without_trl,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["native_steps"] == 1
    assert report["key"] == "engine"
    assert "install the trl extra: pip install -e '.[trl]'" in report["message"]
    assert not (tmp_path / "trl").exists() or not any((tmp_path / "trl").iterdir())  # nothing written for the TRL run


def test_trl_tests_skip_cleanly_without_trl(without_trl: dict[str, str]) -> None:
    files = ["tests/test_trl_mapping.py", "tests/test_trl_engine.py", "tests/test_trl_crosscheck.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files],
        cwd=REPO,
        env=without_trl,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "failed" not in result.stdout and "error" not in result.stdout.lower()
    for module in ("test_trl_engine.py", "test_trl_crosscheck.py"):
        assert f"tests/{module}" in result.stdout and "could not import 'trl'" in result.stdout


def test_cli_exits_2_with_the_install_hint(tmp_path: Path, without_trl: dict[str, str], store: str) -> None:
    sets = [a for o in [*TINY_OVERRIDES, "train.steps=0", "task.eval_size=8", "engine=trl"] for a in ("--set", o)]
    result = subprocess.run(
        sspo_command(
            "train",
            str(REPO / "recipes" / "quickstart.yaml"),
            *sets,
            "-o",
            str(tmp_path),
            "--tracking-uri",
            store,
            "--quiet",
        ),
        cwd=REPO,
        env=without_trl,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "install the trl extra" in result.stderr and "Traceback" not in result.stderr
