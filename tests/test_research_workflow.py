"""compare, eval and sweep end to end: real tiny models, a real MLflow sqlite store, the real CLI in subprocesses."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# One torch thread per process: tiny models gain nothing from more, and spinning OpenMP threads on
# a shared, busy machine make each matrix product many times slower.
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "OMP_NUM_THREADS": "1",
    "COLUMNS": "240",
}
for _name, _value in ENV.items():
    if _name != "COLUMNS":
        os.environ.setdefault(_name, _value)

TINY = {
    "name": "tiny",
    "seed": 0,
    "model": {"tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64}},
    "task": {"name": "addition", "eval_size": 32, "dev_size": 0},
    "rollout": {"prompts_per_step": 4, "group_size": 4},
    "train": {"steps": 4, "checkpoint_every": 4, "warm_start": {"enabled": False}},
    "eval": {"every": 2},
    "tracking": {"experiment": "research-test"},
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a real subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "sspo_cli.cli", *args], env=ENV, capture_output=True, text=True, timeout=600
    )


def cli_in_process(*args: str) -> tuple[int, str]:
    """The same commands through Typer's test runner, without starting a new interpreter: (exit code, output)."""
    from typer.testing import CliRunner

    from sspo_cli.cli.main import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, " ".join(result.output.split())


def client_for(out: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{out / 'mlflow.db'}")


def training_runs(client, experiment: str = "research-test"):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return [r for r in client.search_runs([experiment_id], max_results=1000) if "sspo.fingerprint" in r.data.tags]


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`compare --methods grpo,sspo --seeds 2 --jobs 2` once via the CLI (2 worker processes); the tests below read what it left."""
    root = tmp_path_factory.mktemp("compare")
    recipe = root / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(TINY))
    out = root / "runs"
    args = [
        "compare",
        str(recipe),
        "--methods",
        "grpo,sspo",
        "--seeds",
        "2",
        "--jobs",
        "2",
        "-o",
        str(out),
        "--report-dir",
        str(out / "report"),
        "-q",
    ]
    first = cli(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    return {
        "root": root,
        "recipe": recipe,
        "out": out,
        "args": args,
        "first": first,
        "document": json.loads((out / "report" / "compare.json").read_text()),
    }


def test_compare_trains_methods_x_seeds_nested_under_one_parent(compared: dict) -> None:
    document = compared["document"]
    assert [(r["group"], r["seed"], r["reused"]) for r in document["runs"]] == [
        ("grpo", 0, False),
        ("grpo", 1, False),
        ("sspo", 0, False),
        ("sspo", 1, False),
    ]
    client = client_for(compared["out"])
    runs = training_runs(client)
    assert sorted(r.info.run_id for r in runs) == sorted(r["run_id"] for r in document["runs"])
    parent_id = document["mlflow"]["parent_run_id"]
    parent = client.get_run(parent_id)
    assert parent.data.tags["sspo.kind"] == "comparison" and parent.info.status == "FINISHED"
    for run in runs:
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert document["id"] in run.data.tags["sspo.groups"].split()
        assert run.info.run_name == f"tiny-{run.data.tags['sspo.method']}-s{run.data.tags['sspo.seed']}"
    assert {r.data.tags["sspo.objective"] for r in runs} == {"grpo", "sspo"}
    logged = {a.path for a in client.list_artifacts(parent_id)}
    assert {"compare.png", "compare.csv", "compare.json", "report.md"} <= logged
    assert (compared["out"] / "report" / "compare.png").stat().st_size > 10_000


def test_compare_csv_and_json_match_the_printed_table(compared: dict) -> None:
    from sspo_cli.research.analysis.measures import METRICS
    from sspo_cli.research.reporting.formatting import format_value

    rows = {row["method"]: row for row in csv.DictReader((compared["out"] / "report" / "compare.csv").open())}
    groups = {g["name"]: g for g in compared["document"]["groups"]}
    assert set(rows) == set(groups) == {"grpo", "sspo"}
    table_lines = compared["first"].stdout.splitlines()
    for name, row in rows.items():
        line = next(text for text in table_lines if text.startswith(f"│ {name} "))
        for spec in METRICS:
            in_json = groups[name]["metrics"][spec.key]
            assert int(row[f"{spec.key}_n"]) == in_json["n"]
            if in_json["n"] == 0:
                assert row[f"{spec.key}_mean"] == "" and "—" in line
                continue
            assert float(row[f"{spec.key}_mean"]) == pytest.approx(in_json["mean"], rel=1e-12)
            assert float(row[f"{spec.key}_ci_low"]) == pytest.approx(in_json["ci_low"], rel=1e-12)
            half = float(row[f"{spec.key}_ci_high"]) - float(row[f"{spec.key}_mean"])
            assert f"{format_value(spec.kind, in_json['mean'])} ± {format_value(spec.kind, half)}" in line
        # the per-run numbers behind the interval are in the JSON too
        finals = [r["metrics"]["final_accuracy"] for r in compared["document"]["runs"] if r["group"] == name]
        assert sum(finals) / len(finals) == pytest.approx(groups[name]["metrics"]["final_accuracy"]["mean"])
    report = (compared["out"] / "report" / "report.md").read_text()
    assert "![compare](compare.png)" in report and "Student-t" in report


def test_compare_keeps_each_runs_per_problem_results_and_pairs_the_methods(compared: dict) -> None:
    document = compared["document"]
    for run in document["runs"]:
        rows = [json.loads(line) for line in (Path(run["run_dir"]) / "eval_problems.jsonl").read_text().splitlines()]
        summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
        assert len(rows) == 32 and len({r["prompt"] for r in rows}) == 32
        assert (
            sum(r["correct"] for r in rows) / 32 == summary["eval_after"]["accuracy"]
        )  # the trainer's final eval, per problem
        assert sum(r["reward"] for r in rows) / 32 == pytest.approx(summary["eval_after"]["mean_reward"])
    statistics = document["statistics"]
    assert [(g["name"], g["runs"], g["failed"]) for g in statistics["groups"]] == [("grpo", 2, 0), ("sspo", 2, 0)]
    (pair,) = statistics["paired"]
    assert (pair["first"], pair["second"], pair["problems"], pair["seeds_paired"]) == ("grpo", "sspo", 32, True)
    assert not statistics["notes"]
    logged = {a.path for a in client_for(compared["out"]).list_artifacts(document["mlflow"]["parent_run_id"])}
    assert {"statistics.png", "pairs.csv"} <= logged
    for title in (
        "final held-out accuracy over runs",
        "probability of improvement",
        "paired differences in final held-out accuracy",
    ):
        assert title in compared["first"].stdout


def test_second_compare_trains_nothing(compared: dict) -> None:
    client = client_for(compared["out"])
    before = sorted(r.info.run_id for r in training_runs(client))
    problem_files = {p: p.stat().st_mtime_ns for p in compared["out"].glob("tiny-*/eval_problems.jsonl")}
    again = cli(*compared["args"])
    assert again.returncode == 0, again.stdout + again.stderr
    document = json.loads((compared["out"] / "report" / "compare.json").read_text())
    assert all(r["reused"] for r in document["runs"])
    assert sorted(r["run_id"] for r in document["runs"]) == before
    assert sorted(r.info.run_id for r in training_runs(client)) == before  # no new training run in MLflow
    assert document["mlflow"]["parent_run_id"] == compared["document"]["mlflow"]["parent_run_id"]  # same group run
    assert "4 reused" in again.stdout and "0 to train" in again.stdout
    assert compared["document"]["timing"]["runs_trained"] == 4 and document["timing"]["runs_trained"] == 0
    assert compared["document"]["timing"]["runs_per_hour"] > 0
    run_dirs = [p for p in compared["out"].iterdir() if p.name.startswith("tiny-")]
    assert len(run_dirs) == 4
    assert {p: p.stat().st_mtime_ns for p in problem_files} == problem_files  # read back, not evaluated again


def test_compare_existing_runs_by_id_and_by_experiment(compared: dict) -> None:
    from sspo_cli.research.compare import compare_existing
    from sspo_cli.research.workflow import WorkflowOptions

    ids = [r["run_id"] for r in compared["document"]["runs"]]
    code, output = cli_in_process(
        "compare", "--runs", *ids[:3], "-o", str(compared["out"]), "--report-dir", str(compared["root"] / "by-id")
    )
    assert code == 0, output
    document = json.loads((compared["root"] / "by-id" / "compare.json").read_text())
    assert [(g["name"], len(g["run_ids"])) for g in document["groups"]] == [("grpo", 2), ("sspo", 1)]
    options = WorkflowOptions(compared["out"], report_dir=compared["root"] / "by-experiment")
    result = compare_existing("research-test", [], options)
    assert sorted(r.run_id for r in result.records) == sorted(ids)
    assert [s.name for s in result.summaries] == ["grpo", "sspo"]  # alphabetical: the workers' start order is a race
    assert [(r.group, r.seed) for r in result.records] == [("grpo", 0), ("grpo", 1), ("sspo", 0), ("sspo", 1)]
    # the numbers do not depend on where the runs were read from
    trained = {g["name"]: g["metrics"]["final_entropy"]["mean"] for g in compared["document"]["groups"]}
    assert {s.name: s.metrics["final_entropy"].estimate for s in result.summaries} == pytest.approx(trained)


def test_a_reward_headline_evaluates_again_only_runs_whose_file_lacks_rewards(compared: dict) -> None:
    """--metric final_reward pairs per-problem rewards; a file from before rewards were kept (rewritten here
    without them) is completed by evaluating that run's final checkpoint again, with the trainer's answers."""
    runs = compared["document"]["runs"]
    files = [Path(run["run_dir"]) / "eval_problems.jsonl" for run in runs]
    kept = files[0].read_text()
    old_rows = [{"prompt": r["prompt"], "correct": r["correct"]} for r in map(json.loads, kept.splitlines())]
    files[0].write_text("".join(json.dumps(row) + "\n" for row in old_rows))
    untouched = {p: p.stat().st_mtime_ns for p in files[1:]}
    report_dir = compared["root"] / "by-reward"
    ids = [run["run_id"] for run in runs]
    code, output = cli_in_process(
        "compare",
        "--runs",
        *ids,
        "--metric",
        "final_reward",
        "-o",
        str(compared["out"]),
        "--report-dir",
        str(report_dir),
    )
    assert code == 0, output
    assert files[0].read_text() == kept  # evaluated again: the same answers and rewards as the trainer's final eval
    assert {p: p.stat().st_mtime_ns for p in files[1:]} == untouched
    statistics = json.loads((report_dir / "compare.json").read_text())["statistics"]
    assert statistics["metric"] == "final_reward" and not statistics["notes"]
    for group in statistics["groups"]:
        finals = [
            json.loads((Path(r["run_dir"]) / "summary.json").read_text())["eval_after"]["mean_reward"]
            for r in runs
            if r["group"] == group["name"]
        ]
        assert group["t"]["estimate"] == pytest.approx(sum(finals) / len(finals))
    assert "paired differences in final held-out mean reward" in (report_dir / "report.md").read_text()


def test_bad_input_exits_2_naming_the_option(compared: dict) -> None:
    wrong_method = cli("compare", str(compared["recipe"]), "--methods", "grpo,sspo-atan", "-o", str(compared["out"]))
    assert wrong_method.returncode == 2 and "--methods: unknown method 'sspo-atan'" in wrong_method.stderr
    for args, message in (
        (["sweep", str(compared["recipe"]), "--grid", "objective.tau_p=1,2"], "objective has no key 'tau_p'"),
        (["eval", "0123456789abcdef0123456789abcdef"], "TARGET: no MLflow run"),
        (
            ["compare", "--experiment", "no-such-experiment"],
            "--experiment: no MLflow experiment named 'no-such-experiment'",
        ),
        (["compare", str(compared["recipe"]), "--seeds", "0"], "--seeds: must be at least 1"),
        (["compare", str(compared["recipe"]), "--metric", "best_accuracy"], "--metric: unknown headline metric"),
        (["eval", str(compared["out"] / "report")], "TARGET:"),
    ):
        code, output = cli_in_process(*args, "-o", str(compared["out"]))
        assert code == 2 and message in output, (args, code, output)


# --------------------------------------------------------------------------- eval


def test_eval_run_dir_greedy_reproduces_the_runs_final_eval(compared: dict) -> None:
    run = compared["document"]["runs"][0]
    result = cli("eval", run["run_dir"], "-o", str(compared["out"]))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(next((Path(run["run_dir"]) / "evals").glob("eval-addition-eval-*.json")).read_text())
    summary = json.loads((Path(run["run_dir"]) / "summary.json").read_text())
    assert report["decoding"] == "greedy" and report["size"] == 32
    assert report["accuracy"] == summary["eval_after"]["accuracy"]
    assert report["mean_length"] == pytest.approx(summary["eval_after"]["mean_length"])
    nested = client_for(compared["out"]).get_run(report["eval_run_id"])
    assert nested.data.tags["mlflow.parentRunId"] == run["run_id"] and nested.data.tags["sspo.kind"] == "eval"
    assert nested.data.metrics["eval/accuracy"] == report["accuracy"]


def test_eval_by_run_id_with_pass_at_k(compared: dict) -> None:
    from sspo_cli.research.analysis.stats import pass_at_k
    from sspo_cli.research.execution.evaluation import (
        EvalOptions,
        eval_recipe,
        evaluate_target,
        resolve_target,
        save_and_log,
    )

    run = compared["document"]["runs"][1]
    target = resolve_target(run["run_id"], None, compared["out"])
    assert str(target.run_dir) == run["run_dir"]
    recipe = eval_recipe(target, None, None, [])
    options = EvalOptions(size=8, samples=4, temperature=2.0, ks=[1, 2, 4])
    report = save_and_log(
        evaluate_target(run["run_id"], target, recipe, options),
        target,
        recipe,
        options,
        compared["out"],
        None,
        track=True,
    )
    counts = report.correct_per_prompt
    assert len(counts) == 8 and report.samples == 4
    for k in (1, 2, 4):
        assert report.pass_at[k] == pytest.approx(sum(pass_at_k(4, c, k) for c in counts) / 8)
    assert report.accuracy == report.pass_at[1]
    logged = client_for(compared["out"]).get_run(report.eval_run_id)
    assert logged.data.metrics["eval/pass_at_4"] == pytest.approx(report.pass_at[4])
    assert logged.data.tags["mlflow.parentRunId"] == run["run_id"]
    assert json.loads(Path(report.file).read_text())["correct_per_prompt"] == counts


def test_eval_checkpoint_folder_on_another_task_config(compared: dict) -> None:
    from sspo_cli.research.execution.evaluation import EvalOptions, eval_recipe, evaluate_target, resolve_target

    checkpoint = Path(compared["document"]["runs"][2]["run_dir"]) / "checkpoints" / "final"
    target = resolve_target(str(checkpoint), None, compared["out"])
    assert target.run_id == compared["document"]["runs"][2]["run_id"]  # found its run folder
    recipe = eval_recipe(
        target, None, "addition", ["task.min_operand=100", "task.max_operand=199", "task.eval_size=16"]
    )
    report = evaluate_target(str(checkpoint), target, recipe, EvalOptions(size=16))
    assert report.task == "addition" and report.size == 16 and 0.0 <= report.accuracy <= 1.0


# --------------------------------------------------------------------------- sweep


def write_examples(path: Path, start: int) -> None:
    path.write_text(
        "".join(json.dumps({"prompt": f"{a}+{a}=", "answer": str(2 * a)}) + "\n" for a in range(start, start + 24))
    )


def test_sweep_resumes_after_a_failed_and_an_interrupted_point(tmp_path: Path) -> None:
    from sspo_cli.research.sweep import SweepOptions, run_sweep
    from sspo_cli.research.workflow import WorkflowOptions

    data = {**TINY, "name": "sw", "task": {"name": "file", "path": "unused.jsonl", "eval_size": 8, "dev_size": 0}}
    good, late, killed = tmp_path / "good.jsonl", tmp_path / "late.jsonl", tmp_path / "killed.jsonl"
    write_examples(good, 10)
    write_examples(killed, 40)  # late.jsonl is missing at first: that point fails at run time
    data["sweep"] = {"grid": {"task.path": [str(good), str(late), str(killed)], "train.lr": [1e-4]}, "seeds": 1}
    recipe = tmp_path / "sweep.yaml"
    recipe.write_text(yaml.safe_dump(data))
    out = tmp_path / "runs"

    first = run_sweep(recipe, [], SweepOptions(), WorkflowOptions(out))
    states = {o.planned.recipe.task.path: o.state for o in first.outcomes}
    assert states == {str(good): "trained", str(late): "failed", str(killed): "trained"}, [
        o.error for o in first.outcomes
    ]
    assert "task.path" in first.failed[0].error
    assert (first.out_dir / "heatmap.png").is_file() and (first.out_dir / "leaderboard.csv").is_file()
    client = client_for(out)
    assert client.get_run(first.parent_run_id).info.status == "FAILED"

    write_examples(late, 70)
    ids = {o.planned.recipe.task.path: o.run_id for o in first.outcomes}
    client.set_terminated(ids[str(killed)], status="KILLED")  # as if Ctrl-C had stopped it

    second = run_sweep(recipe, [], SweepOptions(), WorkflowOptions(out, jobs=1))
    states = {o.planned.recipe.task.path: o.state for o in second.outcomes}
    assert states == {str(good): "reused", str(late): "trained", str(killed): "trained"}, [
        o.error for o in second.outcomes
    ]
    again = {o.planned.recipe.task.path: o.run_id for o in second.outcomes}
    assert again[str(good)] == ids[str(good)] and again[str(killed)] != ids[str(killed)]
    assert second.parent_run_id == first.parent_run_id and not second.failed
    assert client.get_run(second.parent_run_id).info.status == "FINISHED"
    # good, killed (KILLED), killed again, late: the failed first try of late never reached MLflow
    nested = [r for r in training_runs(client) if r.data.tags.get("mlflow.parentRunId") == second.parent_run_id]
    assert sorted(r.info.status for r in nested) == ["FINISHED", "FINISHED", "FINISHED", "KILLED"]
    rows = list(csv.DictReader((second.out_dir / "leaderboard.csv").open()))
    assert len(rows) == 3 and all(row["seeds"] == "1" for row in rows)
    assert {row["path"] for row in rows} == {str(good), str(late), str(killed)}  # grid columns use the short key names
