"""`sspo sweep --search`: real Optuna studies in the output folder's SQLite, real tiny trainings, a real MLflow
store, the real CLI in subprocesses for interruptions and bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
from pathlib import Path

import psutil
import pytest
import yaml
from helpers_reliability import ENV, interrupt, run_sspo, start_sspo, wait_for, write_choice_task

for _name, _value in ENV.items():  # the in-process searches run like the subprocesses: one torch thread
    if _name not in ("COLUMNS", "PYTHONPATH"):
        os.environ.setdefault(_name, _value)


def choice_recipe(tmp_path: Path, steps: int = 10, sweep: dict | None = None, name: str = "srch") -> Path:
    """Prompts `N?` answered N mod 3: a random tiny model scores some accuracy, so trials differ."""
    data = write_choice_task(tmp_path / "choice.jsonl")
    recipe = {
        "name": name,
        "seed": 3,
        "model": {
            "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 64}
        },
        "task": {"name": "file", "path": str(data), "eval_size": 48, "dev_size": 0},
        "rollout": {"prompts_per_step": 4, "group_size": 4, "max_new_tokens": 1},
        "train": {
            "steps": steps,
            "lr": 0.01,
            "checkpoint_every": steps,
            "threads": 1,
            "warm_start": {"enabled": False},
        },
        "eval": {"every": 5, "batch_size": 48},
        "tracking": {"experiment": "search-test"},
    }
    if sweep is not None:
        recipe["sweep"] = sweep
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def study_trials(output_dir: Path) -> list[tuple[int, str]]:
    """(number, state) of every trial in the output folder's study; none while the store is being created."""
    if not (output_dir / "optuna.db").is_file():
        return []
    connection = sqlite3.connect(output_dir / "optuna.db")
    try:
        return connection.execute("select number, state from trials order by number").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        connection.close()


def training_runs(output_dir: Path, experiment: str = "search-test"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return [r for r in client.search_runs([experiment_id], max_results=1000) if "sspo.fingerprint" in r.data.tags]


# --------------------------------------------------------------------------- a search in process


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A random search of train.lr over 6 trials with successive-halving pruning, run once."""
    from sspo_cli.research.search import SearchOptions, run_search
    from sspo_cli.research.workflow import WorkflowOptions

    root = tmp_path_factory.mktemp("search")
    space = {"train.lr": {"low": 1.0e-4, "high": 0.1, "log": True}}
    recipe = choice_recipe(root, sweep={"space": space, "search": "random", "pruner": "halving", "trials": 6})
    out = root / "runs"
    result = run_search(recipe, [], SearchOptions(), WorkflowOptions(out))
    return {"root": root, "recipe": recipe, "out": out, "result": result}


def test_search_prunes_trials_on_the_eval_accuracy(searched: dict) -> None:
    result = searched["result"]
    states = [t.state.name for t in result.trials]
    assert len(states) == 6 and "PRUNED" in states and "COMPLETE" in states and "FAIL" not in states
    runs = {r.data.tags["sspo.trial"]: r for r in training_runs(searched["out"])}
    assert len(runs) == 6
    for trial in result.trials:
        run = runs[str(trial.number)]
        assert run.data.tags["mlflow.parentRunId"] == result.parent_run_id  # every trial a nested run
        lines = (Path(run.data.tags["sspo.run_dir"]) / "history.jsonl").read_text().splitlines()
        if trial.state.name == "PRUNED":
            # stopped at the first eval after step 0 (step 5 of 10), ended KILLED and tagged pruned
            assert run.info.status == "KILLED" and run.data.tags["sspo.trial_state"] == "PRUNED"
            assert run.data.tags["sspo.pruned_at_step"] == "5" and len(lines) == 5
            assert list(trial.intermediate_values) == [5]
        else:
            assert run.info.status == "FINISHED" and run.data.tags["sspo.trial_state"] == "COMPLETE"
            assert len(lines) == 10 and sorted(trial.intermediate_values) == [5, 10]
            summary = json.loads((Path(run.data.tags["sspo.run_dir"]) / "summary.json").read_text())
            assert trial.value == summary["eval_after"]["accuracy"]  # the objective: final held-out accuracy
            assert trial.intermediate_values[10] == summary["eval_after"]["accuracy"]


def test_search_writes_figures_tables_and_logs_them(searched: dict) -> None:
    result = searched["result"]
    best = max((t for t in result.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
    assert result.best.number == best.number
    document = json.loads((result.out_dir / "search.json").read_text())
    assert document["best"]["number"] == best.number and document["study"]["name"] == result.plan.study_name
    assert document["space"]["train.lr"]["log"] is True
    assert "runs_trained" not in document["timing"]  # trials are not counted as runs: no false 0 is reported
    rows = list(csv.DictReader((result.out_dir / "trials.csv").open()))
    assert [int(r["trial"]) for r in rows] == list(range(6))
    assert {r["state"] for r in rows} == {"COMPLETE", "PRUNED"}
    assert all(r["pruned_at_step"] == "5" for r in rows if r["state"] == "PRUNED")
    for name in ("history", "importance", "intermediate"):
        assert (result.out_dir / f"{name}.png").stat().st_size > 10_000
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result.tracking_uri)
    logged = {a.path for a in client.list_artifacts(result.parent_run_id)}
    assert {"trials.csv", "search.json", "report.md", "history.png", "importance.png", "intermediate.png"} <= logged
    parent = client.get_run(result.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["sspo.kind"] == "search"
    assert parent.data.metrics["search/best_value"] == best.value
    assert "![importance](importance.png)" in (result.out_dir / "report.md").read_text()


def test_rerunning_a_finished_search_trains_nothing_and_more_trials_extend_it(searched: dict) -> None:
    from sspo_cli.research.search import SearchOptions, run_search
    from sspo_cli.research.workflow import WorkflowOptions

    before = sorted(r.info.run_id for r in training_runs(searched["out"]))
    again = run_search(searched["recipe"], [], SearchOptions(), WorkflowOptions(searched["out"]))
    assert sorted(r.info.run_id for r in training_runs(searched["out"])) == before
    assert [t.number for t in again.trials] == list(range(6)) and again.parent_run_id == searched[
        "result"
    ].parent_run_id
    extended = run_search(searched["recipe"], [], SearchOptions(trials=7), WorkflowOptions(searched["out"]))
    assert len(extended.trials) == 7  # one more trial, with a point not drawn before
    assert extended.trials[6].params["train.lr"] not in {t.params["train.lr"] for t in extended.trials[:6]}


def test_grid_search_visits_every_point_once(tmp_path: Path) -> None:
    from sspo_cli.research.search import SearchOptions, run_search
    from sspo_cli.research.workflow import WorkflowOptions

    recipe = choice_recipe(tmp_path, steps=5)
    out = tmp_path / "runs"
    options = SearchOptions("grid", grid=["train.lr=0.01,0.001", "objective.tau_pos=0.5,2.0"], pruner="none")
    result = run_search(recipe, [], options, WorkflowOptions(out))
    points = sorted((t.params["train.lr"], t.params["objective.tau_pos"]) for t in result.trials)
    assert points == [(0.001, 0.5), (0.001, 2.0), (0.01, 0.5), (0.01, 2.0)]  # --trials defaults to the grid's size
    assert all(t.state.name == "COMPLETE" for t in result.trials)
    recipes = {r.data.params["train.lr"] + "," + r.data.params["objective.tau_pos"] for r in training_runs(out)}
    assert recipes == {"0.01,0.5", "0.01,2.0", "0.001,0.5", "0.001,2.0"}


# --------------------------------------------------------------------------- interruptions


def search_args(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        str(recipe),
        "--search",
        "random",
        "--space",
        "train.lr=1e-3:1e-1:log",
        "--pruner",
        "none",
        "-o",
        str(out),
        "-q",
        *extra,
    ]


def run_folders(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_dir() and (p / "run.json").is_file())


def second_run_is_training(out: Path) -> bool:
    folders = run_folders(out) if out.is_dir() else []
    if len(folders) < 2:
        return False
    history = folders[1] / "history.jsonl"
    return (folders[0] / "summary.json").is_file() and history.is_file() and len(history.read_text().splitlines()) >= 3


def test_interrupted_search_resumes_without_repeating_finished_trials(tmp_path: Path) -> None:
    recipe = choice_recipe(tmp_path, steps=30)
    out = tmp_path / "runs"
    args = search_args(recipe, out, "--trials", "3")
    process = start_sspo(*args)
    wait_for(lambda: second_run_is_training(out), process)
    code, stdout, stderr = interrupt(process, signal.SIGINT)
    assert code == 130, stdout + stderr
    assert "Traceback" not in stderr and "re-run the same command" in stderr
    assert study_trials(out) == [(0, "COMPLETE"), (1, "FAIL")]
    first = {r.data.tags["sspo.trial"]: r for r in training_runs(out)}
    assert first["0"].info.status == "FINISHED" and first["1"].info.status == "KILLED"

    resumed = run_sspo(*args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "queued again" in resumed.stdout
    trials = study_trials(out)
    assert [state for _, state in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    import optuna

    study = optuna.load_study(study_name=next(out.glob("search-*")).name, storage=f"sqlite:///{out / 'optuna.db'}")
    retry = study.trials[2]
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == study.trials[1].params  # the same point again
    runs = training_runs(out)
    by_trial = {}
    for run in runs:
        by_trial.setdefault(run.data.tags["sspo.trial"], []).append(run)
    assert [r.info.run_id for r in by_trial["0"]] == [first["0"].info.run_id]  # trial 0 was not trained again
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED", "FINISHED", "KILLED"]


def test_killed_search_with_workers_resumes(tmp_path: Path) -> None:
    """kill -9 of the search and its worker processes: trials left RUNNING are failed and run again."""
    recipe = choice_recipe(tmp_path, steps=30)
    out = tmp_path / "runs"
    args = search_args(recipe, out, "--trials", "3", "--jobs", "2")
    process = start_sspo(*args)
    wait_for(lambda: any(state == "COMPLETE" for _, state in study_trials(out)), process)
    tree = [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]
    for member in tree:
        member.kill()
    process.communicate()
    complete_before = {number for number, state in study_trials(out) if state == "COMPLETE"}
    finished_before = sorted(r.info.run_id for r in training_runs(out) if r.info.status == "FINISHED")

    resumed = run_sspo(*args)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = study_trials(out)
    assert sum(state == "COMPLETE" for _, state in after) == 3
    assert complete_before <= {number for number, state in after if state == "COMPLETE"}
    finished_after = sorted(r.info.run_id for r in training_runs(out) if r.info.status == "FINISHED")
    assert set(finished_before) <= set(finished_after) and len(finished_after) == 3


# --------------------------------------------------------------------------- bad input


BAD_SEARCHES = {
    "low above high": (
        ["--space", "objective.tau_pos=2:0.5"],
        ["--space: objective.tau_pos", "low (2) must be below high (0.5)"],
    ),
    "log needs low above 0": (
        ["--space", "train.lr=0:0.1:log"],
        ["--space: train.lr", "a log scale needs low > 0, got 0"],
    ),
    "unknown key": (
        ["--space", "objective.tau_p=0.5:2"],
        ["srch.yaml", "objective.tau_p", "objective has no key 'tau_p'"],
    ),
    "value the recipe refuses": (
        ["--space", "objective.tau_pos=-1:2"],
        ["srch.yaml", "objective.tau_pos", "greater than 0"],
    ),
    "not a number": (["--space", "objective.tau_pos=a:2"], ["--space: objective.tau_pos", "'a' is not a number"]),
    "not a range": (["--space", "objective.tau_pos=0.5"], ["--space", "expected dotted.key=low:high"]),
    "grid of ranges": (
        ["--search", "grid", "--space", "train.lr=1e-3:1e-1"],
        ["--search", "grid search needs values", "train.lr"],
    ),
    "bad pruner": (["--pruner", "hyperband"], ["--pruner: unknown value 'hyperband'", "median, halving, none"]),
    "pruning a metric that is no accuracy": (["--metric", "reward_auc"], ["--pruner", "--metric final_accuracy"]),
}


@pytest.mark.parametrize("case", sorted(BAD_SEARCHES))
def test_bad_search_space_is_one_clear_error(case: str, tmp_path: Path) -> None:
    from test_cli_errors import assert_clean_failure

    options, expected = BAD_SEARCHES[case]
    recipe = choice_recipe(tmp_path)
    out = tmp_path / "out"
    search = [] if "--search" in options else ["--search", "tpe"]
    space = [] if "--space" in options else ["--space", "train.lr=1e-3:1e-1:log"]
    result = run_sspo("sweep", str(recipe), *search, *space, *options, "-o", str(out))
    assert_clean_failure(result, expected)
    assert not out.exists()


@pytest.mark.parametrize(
    "section,expected",
    [
        ({"search": "bayes", "space": {"train.lr": {"low": 1e-3, "high": 0.1}}}, ["sweep.search", "'bayes'", "tpe"]),
        (
            {"search": "tpe", "space": {"objective.tau_pos": {"low": 2.0, "high": 1.0}}},
            ["sweep.space.objective.tau_pos", "low (2.0) must be below high (1.0)"],
        ),
        (
            {"search": "tpe", "space": {"objective.tau_pos": {"low": 0.5, "hi": 2.0}}},
            ["sweep.space.objective.tau_pos.hi", "Extra inputs are not permitted"],
        ),
        (
            {"search": "tpe", "space": {"train.lr": {"choices": [0.1, 0.1]}}},
            ["sweep.space.train.lr", "a value is listed twice"],
        ),
        (
            {"search": "tpe", "trials": 0, "space": {"train.lr": {"choices": [0.1]}}},
            ["sweep.trials", "greater than or equal to 1"],
        ),
    ],
)
def test_bad_sweep_section_names_the_file_and_key(section: dict, expected: list[str], tmp_path: Path) -> None:
    from test_cli_errors import assert_clean_failure

    recipe = choice_recipe(tmp_path, sweep=section)
    out = tmp_path / "out"
    result = run_sspo("sweep", str(recipe), "-o", str(out))
    assert_clean_failure(result, [str(recipe), *expected])
    assert not out.exists()


def test_bad_search_value_and_search_options_without_a_search(tmp_path: Path) -> None:
    from test_cli_errors import assert_clean_failure

    recipe = choice_recipe(tmp_path)
    out = tmp_path / "out"
    bad = run_sspo("sweep", str(recipe), "--search", "bayes", "--space", "train.lr=1e-3:1e-1", "-o", str(out))
    assert_clean_failure(bad, ["--search: unknown value 'bayes'", "tpe, random, grid"])
    alone = run_sspo(
        "sweep", str(recipe), "--grid", "train.lr=0.1,0.01", "--space", "train.lr=1e-3:1e-1", "-o", str(out)
    )
    assert_clean_failure(alone, ["--space: belongs to a search"])
    interval = run_sspo("sweep", str(recipe), "--grid", "train.lr=0.1,0.01", "--interval", "wald", "-o", str(out))
    assert_clean_failure(interval, ["--interval: unknown interval 'wald'", "t, bootstrap"])
    assert not out.exists()


def test_space_parsing_and_recipe_types() -> None:
    from sspo_cli.research.planning.space import SpaceParam, parse_space_option, validated_space

    key, param = parse_space_option("train.lr=1e-5:1e-3:log")
    assert key == "train.lr" and (param.low, param.high, param.log) == (1e-5, 1e-3, True)
    _, steps = parse_space_option("train.steps=10:50")
    assert steps.integer
    base = {"name": "x", "objective": {"name": "sspo"}}
    space = validated_space(
        {"objective.tau_pos": SpaceParam(low=1, high=2), "train.steps": steps}, base, [], 0, Path("x.yaml")
    )
    assert (
        not space["objective.tau_pos"].integer and space["objective.tau_pos"].low == 1.0
    )  # a float key: a float range
    assert space["train.steps"].integer  # an integer key keeps an integer range


def test_a_failing_trial_is_recorded_and_the_search_goes_on(tmp_path: Path) -> None:
    from sspo_cli.research.search import SearchOptions, run_search
    from sspo_cli.research.workflow import WorkflowOptions

    recipe = choice_recipe(tmp_path, steps=5)
    good = tmp_path / "choice.jsonl"
    missing = tmp_path / "missing.jsonl"  # a valid recipe value, but no file: the run fails when it starts
    out = tmp_path / "runs"
    result = run_search(
        recipe, [], SearchOptions("grid", grid=[f"task.path={good},{missing}"], pruner="none"), WorkflowOptions(out)
    )
    by_path = {t.params["task.path"]: t for t in result.trials}
    assert by_path[str(good)].state.name == "COMPLETE"
    failed = by_path[str(missing)]
    assert failed.state.name == "FAIL" and "task.path" in failed.user_attrs["error"]
    assert [t.number for t in result.failed_now] == [failed.number]
    from mlflow.tracking import MlflowClient

    assert MlflowClient(result.tracking_uri).get_run(result.parent_run_id).info.status == "FAILED"
    rows = {r["state"]: r for r in csv.DictReader((result.out_dir / "trials.csv").open())}
    assert "task.path" in rows["FAIL"]["error"]
