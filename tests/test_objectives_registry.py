"""The list of objectives: adding one touches `sspo_cli.objectives` only, and every command sees it.

`toy_objective.py` registers a sixth objective from outside the package; the real `sspo` then
runs in a subprocess that imported it first, as an objective of `sspo_cli.objectives` would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from conftest import REPO, TINY_OVERRIDES

from sspo_cli.objectives import METRIC_KEYS, BaseObjectiveConfig, objective_names, register_objective

TESTS = Path(__file__).resolve().parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def sspo_with_toy(*args: str) -> subprocess.CompletedProcess[str]:
    """`sspo ARGS` in a new interpreter that has registered the toy objective."""
    code = "import toy_objective; from sspo_cli.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600
    )


def test_a_registered_objective_is_a_method_of_compare(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    sets = [
        a
        for o in [*TINY_OVERRIDES, "train.steps=2", "task.eval_size=8", "tracking.experiment=toy"]
        for a in ("--set", o)
    ]
    options = ["--methods", "toy,grpo", "--seeds", "1", "-o", str(out), "--report-dir", str(out / "report"), "-q"]
    result = sspo_with_toy("compare", "recipes/quickstart.yaml", *options, *sets)
    assert result.returncode == 0, result.stdout + result.stderr

    document = json.loads((out / "report" / "compare.json").read_text())
    assert [g["name"] for g in document["groups"]] == ["toy", "grpo"]
    toy_run = next(r for r in document["runs"] if r["group"] == "toy")
    assert not toy_run["reused"]
    summary = json.loads((Path(toy_run["run_dir"]) / "summary.json").read_text())
    assert summary["objective"] == "toy" and summary["steps"] == 2
    history = [json.loads(line) for line in (Path(toy_run["run_dir"]) / "history.jsonl").read_text().splitlines()]
    assert all(set(METRIC_KEYS) <= set(row) for row in history)


def test_a_registered_objective_is_in_the_recipe_and_the_default_methods(tmp_path: Path) -> None:
    validated = sspo_with_toy("validate", "recipes/quickstart.yaml", "--set", "objective.name=toy")
    assert validated.returncode == 0, validated.stderr
    assert "name: toy" in validated.stdout
    code = "import toy_objective\nfrom sspo_cli.research.compare import parse_methods\nprint(*(m.name for m in parse_methods(None, {})))"
    listed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )
    assert listed.stdout.split() == [*objective_names(), "toy"], listed.stderr


def test_without_it_the_name_is_unknown() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sspo_cli.cli.main",
            "validate",
            "recipes/quickstart.yaml",
            "--set",
            "objective.name=toy",
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "objective.name" in result.stderr and "'toy'" in result.stderr


def test_registering_once_the_recipe_model_exists_is_an_error() -> None:
    import sspo_cli.recipe  # noqa: F401  (builds the recipe model from the objectives registered so far)

    with pytest.raises(RuntimeError, match="before sspo_cli.recipe"):

        @register_objective
        class Late(BaseObjectiveConfig):
            name: Literal["late"] = "late"

    assert "late" not in objective_names()


def test_a_name_is_registered_once() -> None:
    from sspo_cli.objectives import SspoConfig

    with pytest.raises(ValueError, match="'sspo' is registered twice"):
        register_objective(SspoConfig)
