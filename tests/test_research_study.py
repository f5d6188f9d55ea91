"""`sspo compare RECIPE --grid key=...`: a study, the comparison at every grid point (real CLI subprocess, real
MLflow store, tiny real models)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from test_research_workflow import TINY, cli, cli_in_process, client_for, training_runs

STUDY = {**TINY, "compare": {"methods": ["grpo", "sspo"], "seeds": 2, "grid": {"rollout.policy_lag": [0, 5]}}}


@pytest.fixture(scope="module")
def studied(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The recipe's compare section asks for grpo, sspo x 2 seeds at policy_lag 0 and 5; --grid replaces the lags."""
    root = tmp_path_factory.mktemp("study")
    recipe = root / "study.yaml"
    recipe.write_text(yaml.safe_dump(STUDY))
    out = root / "runs"
    args = ["compare", str(recipe), "--grid", "rollout.policy_lag=0,2", "--jobs", "2", "-o", str(out)]
    args += ["--report-dir", str(out / "study"), "-q"]
    first = cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    return {"recipe": recipe, "out": out, "args": args, "first": first}


def test_study_trains_every_point_method_and_seed_nested_in_mlflow(studied: dict) -> None:
    client = client_for(studied["out"])
    runs = training_runs(client)
    assert len(runs) == 8  # 2 points x 2 methods x 2 seeds
    experiment_id = client.get_experiment_by_name("research-test").experiment_id
    workflow = client.search_runs([experiment_id], "tags.`sspo.kind` LIKE '%'")
    (study,) = [r for r in workflow if r.data.tags["sspo.kind"] == "study"]
    points = [r for r in workflow if r.data.tags["sspo.kind"] == "comparison"]
    assert sorted(r.data.params["point"] for r in points) == ["policy_lag=0", "policy_lag=2"]
    assert {r.data.tags["mlflow.parentRunId"] for r in points} == {study.info.run_id}
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {study.info.run_id}
    for point in points:  # each point's comparison finds its own four runs by membership
        group = point.data.tags["sspo.group"]
        members = [r for r in runs if group in r.data.tags["sspo.groups"].split()]
        assert {r.data.tags["sspo.point"] for r in members} == {point.data.params["point"]}
        assert len(members) == 4
    lags = {r.data.tags["sspo.point"]: client.get_metric_history(r.info.run_id, "rollout/policy_lag") for r in runs}
    assert max(m.value for m in lags["policy_lag=2"]) == 2  # --grid replaced the section's 0, 5
    assert max(m.value for m in lags["policy_lag=0"]) == 0


def test_study_table_csv_report_and_figure(studied: dict) -> None:
    folder = studied["out"] / "study"
    rows = list(csv.DictReader((folder / "study.csv").open()))
    assert [(r["rollout.policy_lag"], r["method"]) for r in rows] == [
        ("0", "grpo"),
        ("0", "sspo"),
        ("2", "grpo"),
        ("2", "sspo"),
    ]
    assert all(r["runs"] == "2" and r["collapsed"] == "0" and r["failed"] == "0" for r in rows)
    # Each point is a whole comparison whose own table agrees with the study's row.
    for row in rows:
        document = json.loads((folder / f"point-policy_lag={row['rollout.policy_lag']}" / "compare.json").read_text())
        group = next(g for g in document["groups"] if g["name"] == row["method"])
        assert float(row["final_accuracy"]) == pytest.approx(group["metrics"]["final_accuracy"]["mean"])
    report = (folder / "report.md").read_text()
    assert "| policy_lag=2 | sspo |" in report and "## Separations" in report
    assert "point-policy_lag=0/report.md" in report
    assert (folder / "study.png").stat().st_size > 10_000
    printed = " ".join(studied["first"].stdout.split())
    assert "policy_lag=2" in printed and "collapsed" in printed


def test_each_runs_final_eval_leaves_its_per_problem_answers(studied: dict) -> None:
    """The study pairs problems without evaluating any run again: the final eval wrote them."""
    for run in training_runs(client_for(studied["out"])):
        folder = Path(run.data.tags["sspo.run_dir"])
        rows = [json.loads(line) for line in (folder / "eval_problems.jsonl").read_text().splitlines()]
        summary = json.loads((folder / "summary.json").read_text())
        assert len(rows) == TINY["task"]["eval_size"]
        assert sum(r["correct"] for r in rows) / len(rows) == pytest.approx(summary["eval_after"]["accuracy"])
    document = json.loads((studied["out"] / "study" / "point-policy_lag=0" / "compare.json").read_text())
    assert document["timing"]["phases"]["per-problem eval"] < 1.0


def test_second_study_trains_nothing(studied: dict) -> None:
    again = cli(*studied["args"])
    assert again.returncode == 0, again.stderr
    assert "8 reused" in " ".join(again.stdout.split()) and "0 to train" in again.stdout
    assert len(training_runs(client_for(studied["out"]))) == 8


def test_study_bad_input_exits_2_naming_the_key(studied: dict, tmp_path: Path) -> None:
    out = str(studied["out"])
    code, output = cli_in_process("compare", str(studied["recipe"]), "--grid", "rollout.policy_lagg=0,2", "-o", out)
    assert code == 2 and "policy_lagg" in output, output
    code, output = cli_in_process(
        "compare", "--experiment", "research-test", "--grid", "rollout.policy_lag=1", "-o", out
    )
    assert code == 2 and "--grid" in output, output
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "compare": {"seeds": 0, "methodz": ["grpo"], "metric": "accuracy"}}))
    code, output = cli_in_process("compare", str(bad), "-o", out)
    assert code == 2 and all(key in output for key in ("compare.seeds", "compare.methodz", "compare.metric")), output


@pytest.mark.parametrize("lags", [(0,), (0, 0), (0, 4, 32), (1, 2)])
def test_study_figure_draws_any_numeric_grid_including_zeros_alone(tmp_path: Path, lags: tuple[int, ...]) -> None:
    """A one-point study at lag 0 is valid input: its figure once failed on the smallest positive lag of none."""
    from sspo_cli.research.analysis.measures import GroupSummary
    from sspo_cli.research.analysis.stats import t_interval
    from sspo_cli.research.planning.space import GridAxis
    from sspo_cli.research.reporting.plots import spans_orders_of_magnitude, study_figure

    axis = GridAxis("rollout.policy_lag", tuple(lags))
    points = [{"rollout.policy_lag": lag} for lag in lags]
    labels = [f"policy_lag={lag}-{i}" for i, lag in enumerate(lags)]
    metrics = {key: t_interval([0.4, 0.5, 0.6]) for key in ("final_accuracy", "seq_var", "saturated_frac")}
    summaries = {label: [GroupSummary("grpo", ["a", "b", "c"], [0, 1, 2], metrics, [])] for label in labels}
    figure = study_figure([axis], labels, points, ["grpo"], summaries, tmp_path / "study.png", "lags")
    assert figure.stat().st_size > 10_000
    assert spans_orders_of_magnitude([float(lag) for lag in lags]) is (lags == (0, 4, 32))
