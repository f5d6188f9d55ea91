"""What a comparison concludes about final accuracy, on constructed runs and per-problem results (no training):
robust aggregates, the probability-of-improvement matrix, paired differences, failed and collapsed runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from sspo_cli.research.analysis.conclusions import ProblemScores, infer
from sspo_cli.research.analysis.measures import Curves, RunRecord, Threshold, failed_record, summarize
from sspo_cli.research.analysis.stats import t_interval
from sspo_cli.research.execution.problems import read_problem_scores, write_problem_scores
from sspo_cli.research.reporting.outputs import Findings, comparison_document, write_pairs_csv, write_report
from sspo_cli.research.reporting.plots import statistics_figure
from sspo_cli.research.reporting.statistics_text import statistics_tables

PROMPTS = tuple(f"{a}+{a}=" for a in range(200))
START = 0.45


def run(group: str, seed: int, correct: np.ndarray) -> tuple[RunRecord, ProblemScores]:
    """A finished run whose final eval is `correct` (one 0/1 per problem of PROMPTS)."""
    accuracy = float(correct.mean())
    curves = Curves(eval_steps=[0, 10], eval_accuracy=[START, accuracy], steps=[1, 10], reward=[0.1, 0.2])
    record = RunRecord(f"{group}-{seed}", group, seed, 1.0, curves, run_name=f"{group}-s{seed}", task="addition")
    return record, ProblemScores(PROMPTS, tuple(float(c) for c in correct))


def constructed(drops: tuple[int, ...] = (9, 10, 11)) -> tuple[list[RunRecord], dict[str, ProblemScores]]:
    """'base' solves a seed-dependent share (60/70/80%: a large seed variance); 'worse' solves the same
    problems on the same seed except `drops[seed]` of them, chosen at random: a consistent loss of about 5 points."""
    rng = np.random.default_rng(7)
    records, problems = [], {}
    for seed, (share, drop) in enumerate(zip((0.6, 0.7, 0.8), drops)):
        base = (rng.random(len(PROMPTS)) < share).astype(float)
        worse = base.copy()
        worse[rng.choice(np.flatnonzero(base), size=drop, replace=False)] = 0.0
        for group, correct in (("base", base), ("worse", worse)):
            record, scores = run(group, seed, correct)
            records.append(record)
            problems[record.run_id] = scores
    return records, problems


def test_paired_comparison_separates_methods_whose_unpaired_intervals_overlap() -> None:
    records, problems = constructed()
    inference = infer(records, ["base", "worse"], problems)
    base, worse = inference.groups
    assert base.t.low < worse.t.high  # Student-t intervals over the 3 seeds overlap ...
    (pair,) = inference.paired
    assert pair.unpaired_overlap and pair.seeds_paired and pair.problems == 200
    assert pair.difference.low > 0  # ... the paired bootstrap does not
    assert pair.verdict == "base better"
    truth = np.mean([problems[r.run_id].accuracy for r in records if r.group == "base"]) - np.mean(
        [problems[r.run_id].accuracy for r in records if r.group == "worse"]
    )
    assert pair.difference.estimate == pytest.approx(truth)
    # the power hint: (z_0.975 + z_0.8) bootstrap standard errors (larger here than t over the consistent seeds)
    assert pair.detectable == pytest.approx(2.801585 * pair.difference.standard_error, rel=1e-6)


def test_aggregates_and_improvement_matrix_are_the_estimators_on_the_runs() -> None:
    records, problems = constructed()
    inference = infer(records, ["base", "worse"], problems)
    base = inference.groups[0]
    finals = [r.curves.eval_accuracy[-1] for r in records if r.group == "base"]
    assert base.iqm.estimate == pytest.approx(stats.trim_mean(finals, 0.25))
    assert base.mean.estimate == pytest.approx(np.mean(finals))
    assert base.t == t_interval(finals)
    worse_finals = [r.curves.eval_accuracy[-1] for r in records if r.group == "worse"]
    expected = stats.mannwhitneyu(finals, worse_finals).statistic / 9
    assert inference.improvement[("base", "worse")].estimate == pytest.approx(expected)
    assert inference.improvement[("base", "worse")].estimate + inference.improvement[
        ("worse", "base")
    ].estimate == pytest.approx(1)


def test_failed_runs_count_as_every_problem_wrong() -> None:
    records, problems = constructed()
    records = [r for r in records if not (r.group == "worse" and r.seed == 2)]
    records.append(failed_record("worse", 2, "addition", "TooManySkips: 5 skipped updates in a row"))
    inference = infer(records, ["base", "worse"], problems)
    worse = inference.groups[1]
    assert (worse.runs, worse.failed) == (3, 1)
    finals = [r.curves.eval_accuracy[-1] for r in records if r.group == "worse" and not r.failed]
    assert worse.mean.estimate == pytest.approx(np.mean([*finals, 0.0]))
    (pair,) = inference.paired
    assert pair.seeds_paired  # the failed seed keeps its place in the pairing, with zeros
    assert pair.difference.estimate > 0.2


def test_collapsed_runs_are_counted_and_kept() -> None:
    records, problems = constructed()
    collapsed, scores = run("worse", 3, np.zeros(len(PROMPTS)))  # 0% after starting at 45%
    inference = infer([*records, collapsed], ["base", "worse"], {**problems, collapsed.run_id: scores})
    assert inference.groups[1].collapsed == 1 and inference.groups[1].runs == 4
    assert not inference.paired[0].seeds_paired  # seeds 0-3 against 0-2: seeds drawn per method


def test_pairs_without_per_problem_results_say_why() -> None:
    records, problems = constructed()
    missing = records[0].run_id
    inference = infer(records, ["base", "worse"], {k: v for k, v in problems.items() if k != missing})
    (pair,) = inference.paired
    assert pair.difference is None and math.isnan(pair.detectable)
    assert pair.verdict == f"not paired: no per-problem results for {records[0].run_name}"


def test_only_shared_problems_are_paired() -> None:
    records, problems = constructed()
    shorter = {
        k: ProblemScores(v.prompts[:150], v.correct[:150]) if k.startswith("worse") else v for k, v in problems.items()
    }
    assert infer(records, ["base", "worse"], shorter).paired[0].problems == 150


def test_problem_scores_file_round_trip(tmp_path: Path) -> None:
    scores = ProblemScores(("1+1=", "2+2="), (1.0, 0.0))
    write_problem_scores(tmp_path / "eval_problems.jsonl", scores)
    assert read_problem_scores(tmp_path / "eval_problems.jsonl") == scores
    assert scores.accuracy == 0.5
    (tmp_path / "broken.jsonl").write_text("{not json")
    assert read_problem_scores(tmp_path / "broken.jsonl") is None


def test_statistics_reach_the_tables_json_csv_report_and_figure(tmp_path: Path) -> None:
    records, problems = constructed()
    inference = infer(records, ["base", "worse"], problems)
    aggregates, improvement, paired = statistics_tables(inference)
    assert [row[0] for row in aggregates.rows] == ["base", "worse"]
    assert improvement.rows[0][1] == "" and improvement.rows[0][2].startswith(
        f"{inference.improvement[('base', 'worse')].estimate:.3f}"
    )
    assert paired.rows[0][-1] == "base better" and paired.rows[0][7] == "overlap"
    threshold = Threshold(0.6, "--threshold")
    summaries = summarize(records, threshold.value)
    findings = Findings("t", summaries, records, [], threshold, inference=inference)
    document = comparison_document("comparison", "id", findings)
    statistics = json.loads(json.dumps(document))["statistics"]
    assert statistics["paired"][0]["verdict"] == "base better"
    assert statistics["paired"][0]["difference"] == pytest.approx(inference.paired[0].difference.estimate)
    assert {(p["x"], p["y"]) for p in statistics["probability_of_improvement"]} == {
        ("base", "worse"),
        ("worse", "base"),
    }
    rows = (write_pairs_csv(tmp_path / "pairs.csv", inference)).read_text().splitlines()
    assert rows[0].startswith("first,second,difference,ci_low,ci_high") and rows[1].startswith("base,worse,")
    figure = statistics_figure(inference, tmp_path / "statistics.png", "constructed")
    assert figure.stat().st_size > 10_000
    timing = {"total_seconds": 1.0, "training_seconds": 0.0, "overhead_seconds": 1.0, "overhead_fraction": 1.0}
    report = write_report(tmp_path / "report.md", findings, [figure], "method", "", timing)
    text = report.read_text()
    assert (
        "### paired differences in final held-out accuracy" in text
        and "| base | worse |" in text
        and "![statistics](statistics.png)" in text
    )


def test_problem_scores_keep_rewards_and_a_file_without_them_has_no_reward_values(tmp_path: Path) -> None:
    scores = ProblemScores(("1+1=", "2+2="), (1.0, 0.0), (1.0, 0.25))
    write_problem_scores(tmp_path / "eval_problems.jsonl", scores)
    assert read_problem_scores(tmp_path / "eval_problems.jsonl") == scores
    assert scores.has("final_reward") and scores.values("final_reward") == (1.0, 0.25)
    (tmp_path / "old.jsonl").write_text('{"prompt": "1+1=", "correct": 1}\n{"prompt": "2+2=", "correct": 0}\n')
    old = read_problem_scores(tmp_path / "old.jsonl")
    assert old is not None and old.has("final_accuracy") and not old.has("final_reward")


def reward_runs() -> tuple[list[RunRecord], dict[str, ProblemScores]]:
    """No run answers any problem exactly, but 'base' earns more partial credit than 'worse' on the same
    problems of the same seed: what a headline of exact accuracy cannot see."""
    rng = np.random.default_rng(11)
    records, problems = [], {}
    for seed, level in enumerate((0.5, 0.6, 0.7)):
        base = np.clip(level + 0.1 * rng.standard_normal(len(PROMPTS)), 0.0, 0.95)
        worse = np.clip(base - 0.05 * rng.random(len(PROMPTS)), 0.0, 0.95)
        for group, reward in (("base", base), ("worse", worse)):
            curves = Curves(eval_steps=[0, 10], eval_accuracy=[0.0, 0.0], eval_reward=[0.4, float(reward.mean())])
            record = RunRecord(f"{group}-{seed}", group, seed, 1.0, curves, run_name=f"{group}-s{seed}", task="t")
            records.append(record)
            problems[record.run_id] = ProblemScores(PROMPTS, (0.0,) * len(PROMPTS), tuple(float(r) for r in reward))
    return records, problems


def test_a_reward_headline_pairs_the_per_problem_rewards_where_accuracy_sees_nothing(tmp_path: Path) -> None:
    records, problems = reward_runs()
    by_accuracy = infer(records, ["base", "worse"], problems)
    assert by_accuracy.paired[0].verdict == "not distinguishable"
    by_reward = infer(records, ["base", "worse"], problems, metric="final_reward")
    (pair,) = by_reward.paired
    assert by_reward.metric == "final_reward" and pair.verdict == "base better"
    means = {g: np.mean([problems[r.run_id].reward for r in records if r.group == g]) for g in ("base", "worse")}
    assert pair.difference.low < means["base"] - means["worse"] < pair.difference.high
    assert by_reward.groups[0].t.estimate == pytest.approx(means["base"])
    aggregates, _, paired = statistics_tables(by_reward)
    assert aggregates.title == "final held-out mean reward over runs" and "%" not in aggregates.rows[0][4]
    assert paired.title == "paired differences in final held-out mean reward"


def test_a_reward_headline_without_per_problem_rewards_says_so() -> None:
    records, problems = reward_runs()
    without = {k: ProblemScores(v.prompts, v.correct) for k, v in problems.items()}
    pair = infer(records, ["base", "worse"], without, metric="final_reward").paired[0]
    assert pair.difference is None and pair.verdict.startswith("not paired: no per-problem results")


def test_a_problem_level_separation_that_seeds_do_not_carry_is_not_distinguishable() -> None:
    """Per seed the second method loses 13, 13 and 37 points of 128 problems: the bootstrap over problems
    and 3 seeds excludes 0, Student's t over the three seed differences (2 degrees of freedom) does not."""
    rng = np.random.default_rng(3)
    records, problems = [], {}
    for seed, drop in enumerate((0.13, 0.13, 0.37)):
        first = (rng.random(len(PROMPTS)) < 0.65).astype(float)
        lost = np.flatnonzero(first)[: int(round(drop * len(PROMPTS)))]
        second = first.copy()
        second[lost] = 0.0
        for group, correct in (("first", first), ("second", second)):
            record, scores = run(group, seed, correct)
            records.append(record)
            problems[record.run_id] = scores
    (pair,) = infer(records, ["first", "second"], problems).paired
    assert pair.difference.excludes(0.0) and pair.difference.estimate > 0.15
    assert pair.over_seeds.df == 2 and not pair.over_seeds.excludes(0.0)
    assert not pair.separated and pair.verdict == "not distinguishable"
    assert pair.detectable > pair.difference.estimate  # the seeds' t sets what this design can detect


def test_three_runs_a_side_can_never_pass_the_rank_test() -> None:
    from sspo_cli.research.study import SEPARATION_LEVEL, rank_test_p

    smallest = rank_test_p([0.1, 0.2, 0.3], [0.7, 0.8, 0.9])  # every run of one side above every run of the other
    assert smallest == pytest.approx(0.1) and smallest > SEPARATION_LEVEL
    assert rank_test_p([0.1, 0.2, 0.3, 0.35], [0.7, 0.8, 0.9, 0.95]) < SEPARATION_LEVEL
    assert rank_test_p([0.5, 0.5], [0.5, 0.5]) == 1.0 and rank_test_p([], [0.5]) == 1.0
