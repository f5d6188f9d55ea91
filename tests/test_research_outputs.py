"""Per-run metrics, group summaries and the files of a comparison, on hand-made runs (no training)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from sspo_cli.research.analysis.measures import (
    METRICS,
    Curves,
    RunRecord,
    Threshold,
    auto_threshold,
    failed_record,
    is_collapsed,
    rank,
    run_metrics,
    summarize,
)
from sspo_cli.research.analysis.stats import Interval, t_interval
from sspo_cli.research.reporting.formatting import best_groups, cell, format_interval, format_value
from sspo_cli.research.reporting.outputs import Findings, comparison_document, markdown_table, write_csv, write_json
from sspo_cli.research.reporting.tables import comparison_table, leaderboard_table


def make_run(
    group: str, seed: int, accuracy: list[float], reward: list[float], seq_var: list[float], wall: float
) -> RunRecord:
    steps = list(range(1, len(reward) + 1))
    curves = Curves(
        eval_steps=[0, 2, 4][: len(accuracy)],
        eval_accuracy=accuracy,
        steps=steps,
        reward=reward,
        seq_var=seq_var,
        saturated_frac=[0.1 * seed] * len(steps),
        entropy=[2.0 - 0.1 * s for s in steps],
    )
    return RunRecord(f"{group}-{seed}", group, seed, wall, curves, run_name=f"{group}-s{seed}")


RUNS = [
    make_run("grpo", 0, [0.40, 0.50, 0.55], [0.1, 0.2, 0.3, 0.4], [0.01, 0.02, math.nan, 0.03], 10.0),
    make_run("grpo", 1, [0.40, 0.45, 0.60], [0.2, 0.2, 0.2, 0.2], [0.02, 0.02, 0.02, 0.02], 12.0),
    make_run("grpo", 2, [0.40, 0.40, 0.50], [0.0, 0.1, 0.1, 0.3], [0.03, 0.01, 0.01, 0.03], 11.0),
    make_run("sspo", 0, [0.40, 0.60, 0.70], [0.3, 0.4, 0.5, 0.6], [0.001, 0.002, 0.001, 0.002], 13.0),
    make_run("sspo", 1, [0.40, 0.55, 0.65], [0.2, 0.4, 0.4, 0.6], [0.002, 0.002, 0.002, 0.002], 14.0),
]


def test_run_metrics_by_hand() -> None:
    values = run_metrics(RUNS[0], threshold=0.5)
    assert values["final_accuracy"] == 0.55
    assert values["best_accuracy"] == 0.55
    # reward 0.1..0.4 at steps 1..4: trapezoids 0.15 + 0.25 + 0.35 = 0.75 over span 3 = 0.25
    assert values["reward_auc"] == pytest.approx(0.25)
    assert values["steps_to_threshold"] == 2  # the eval at step 2 reaches 0.50
    assert values["seq_var"] == pytest.approx(0.02)  # the NaN step is left out
    assert values["saturated_frac"] == 0.0
    assert values["final_entropy"] == pytest.approx(1.6)  # last 10% of 4 steps = the last step
    assert values["wall_seconds"] == 10.0
    assert math.isnan(run_metrics(RUNS[2], threshold=0.65)["steps_to_threshold"])


def test_summaries_are_t_intervals_over_seeds() -> None:
    grpo, sspo = summarize(RUNS, threshold=0.5)
    assert (grpo.name, grpo.seeds, sspo.seeds) == ("grpo", [0, 1, 2], [0, 1])
    assert grpo.metrics["final_accuracy"] == t_interval([0.55, 0.60, 0.50])
    assert grpo.metrics["final_accuracy"].half_width == pytest.approx(4.302652729749464 * 0.05 / math.sqrt(3))
    assert sspo.metrics["wall_seconds"].half_width == pytest.approx(12.706204736174694 * math.sqrt(0.5) / math.sqrt(2))
    # steps to threshold 0.6: grpo only seed 1 reaches it (at step 4), sspo both at step 2
    grpo, sspo = summarize(RUNS, threshold=0.6)
    assert grpo.metrics["steps_to_threshold"].n == 1 and grpo.metrics["steps_to_threshold"].estimate == 4
    assert "[1/3]" in cell(grpo, next(s for s in METRICS if s.key == "steps_to_threshold"))


def test_best_per_column_follows_each_metrics_direction() -> None:
    best = best_groups(summarize(RUNS, threshold=0.5))
    assert best["final_accuracy"] == {"sspo"}
    assert best["seq_var"] == {"sspo"}  # lower is better
    assert best["wall_seconds"] == {"grpo"}
    assert "final_entropy" not in best  # no direction
    tied = [make_run("a", 0, [0.5], [0.1], [0.1], 1.0), make_run("b", 0, [0.5], [0.2], [0.1], 1.0)]
    best = best_groups(summarize(tied, threshold=0.5))
    assert "final_accuracy" not in best  # when every group ties, nothing is "best"
    assert best["reward_auc"] == {"b"}
    # 0.01% and 0.02% both print as 0.0%: a tie as the reader sees it, so no highlight
    tied[0].curves.saturated_frac, tied[1].curves.saturated_frac = [0.0001], [0.0002]
    assert "saturated_frac" not in best_groups(summarize(tied, threshold=0.5))


def test_auto_threshold_is_halfway_to_the_best_final_mean() -> None:
    threshold = auto_threshold(RUNS)
    # start 0.40; best final mean sspo (0.70 + 0.65) / 2 = 0.675 -> 0.5375
    assert threshold.value == pytest.approx(0.5375)
    assert "halfway" in threshold.how


def test_ranking_puts_missing_values_last() -> None:
    summaries = summarize(RUNS, threshold=0.6)
    assert [s.name for s in rank(summaries, "final_accuracy")] == ["sspo", "grpo"]
    assert [s.name for s in rank(summaries, "seq_var")] == ["sspo", "grpo"]


def test_formatting() -> None:
    assert format_value("percent", 0.6543) == "65.4%"
    assert format_value("sci", 0.000123456) == "0.000123"
    assert format_value("seconds", 12.345) == "12.3s"
    assert format_value("float", math.nan) == "—"
    assert format_interval("percent", Interval(0.5, 0.469, 0.531, 3)) == "50.0% ± 3.1%"
    assert format_interval("float", Interval(0.5, math.nan, math.nan, 1)) == "0.500 (n=1)"
    assert format_interval("percent", Interval(0.5, 0.42, 0.55, 3, "bootstrap")) == "50.0% [42.0%, 55.0%]"


def render(table) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=400, no_color=True).print(table)
    return buffer.getvalue()


def test_csv_json_and_table_carry_the_same_numbers(tmp_path: Path) -> None:
    threshold = Threshold(0.6, "--threshold")
    summaries = summarize(RUNS, threshold.value)
    write_csv(tmp_path / "compare.csv", summaries, "method")
    write_json(
        tmp_path / "compare.json",
        comparison_document("comparison", "abc", Findings("t", summaries, RUNS, [], threshold)),
    )
    table_text = render(comparison_table(summaries, threshold, "t"))
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    document = json.loads((tmp_path / "compare.json").read_text())
    assert [row["method"] for row in rows] == ["grpo", "sspo"] == [g["name"] for g in document["groups"]]
    for row, group, summary in zip(rows, document["groups"], summaries):
        table_line = next(line for line in table_text.splitlines() if f" {summary.name} " in line)
        for spec in METRICS:
            interval = summary.metrics[spec.key]
            in_json = group["metrics"][spec.key]
            assert int(row[f"{spec.key}_n"]) == in_json["n"] == interval.n
            if interval.n == 0:
                assert row[f"{spec.key}_mean"] == "" and in_json["mean"] is None
                continue
            assert float(row[f"{spec.key}_mean"]) == in_json["mean"] == interval.estimate
            # the table shows exactly these numbers (formatted), rebuilt here from the CSV alone
            mean_csv = float(row[f"{spec.key}_mean"])
            if interval.n >= 2:
                half_csv = float(row[f"{spec.key}_ci_high"]) - mean_csv
                assert half_csv == pytest.approx(in_json["half_width"], rel=1e-9)
                expected = f"{format_value(spec.kind, mean_csv)} ± {format_value(spec.kind, half_csv)}"
            else:
                expected = f"{format_value(spec.kind, mean_csv)}"
            assert expected in table_line, (spec.key, expected, table_line)
    # per-run values in the JSON are the inputs of the intervals
    grpo_final = [r["metrics"]["final_accuracy"] for r in document["runs"] if r["group"] == "grpo"]
    assert t_interval(grpo_final).estimate == pytest.approx(document["groups"][0]["metrics"]["final_accuracy"]["mean"])
    assert document["interval"].startswith("95% CI, Student-t")
    assert "**" in markdown_table(summaries, "method")  # best cells in bold in report.md


def test_leaderboard_table_lists_failures() -> None:
    summaries = rank(summarize(RUNS, threshold=0.5), "final_accuracy")
    text = render(leaderboard_table(summaries, "final_accuracy", "sweep", {"grpo": 2}))
    grpo_line = next(line for line in text.splitlines() if " grpo " in line)
    assert " 2 " in grpo_line
    assert text.index(" sspo ") < text.index(" grpo ")


def test_failed_runs_stay_in_the_statistics_by_the_stated_rule() -> None:
    failed = failed_record("sspo", 2, "addition", "TooManySkips: ...")
    values = run_metrics(failed, threshold=0.5)
    assert values["final_accuracy"] == 0.0 and values["best_accuracy"] == 0.0
    assert math.isnan(values["reward_auc"]) and math.isnan(values["seq_var"])
    _, sspo = summarize([*RUNS, failed], threshold=0.5)
    assert (sspo.failed, len(sspo.run_ids)) == (1, 3)
    # the failed run is a third seed at 0%: mean (0.70 + 0.65 + 0) / 3, a t-interval over 3 values
    assert sspo.metrics["final_accuracy"] == t_interval([0.70, 0.65, 0.0])
    assert sspo.metrics["reward_auc"].n == 2 and "[2/3]" in cell(
        sspo, next(s for s in METRICS if s.key == "reward_auc")
    )


def test_collapse_rule_flags_without_dropping() -> None:
    collapsed = make_run("grpo", 3, [0.40, 0.30, 0.15], [0.1, 0.1, 0.0, 0.0], [0.01] * 4, 9.0)
    kept = make_run("grpo", 4, [0.40, 0.30, 0.25], [0.1, 0.1, 0.0, 0.0], [0.01] * 4, 9.0)
    assert is_collapsed(collapsed) and not is_collapsed(kept)  # 0.15 < 0.5 * 0.40 <= 0.25
    assert not any(is_collapsed(r) for r in RUNS)
    grpo, _ = summarize([*RUNS, collapsed], threshold=0.5)
    assert grpo.collapsed == 1 and grpo.metrics["final_accuracy"] == t_interval([0.55, 0.60, 0.50, 0.15])


def test_bootstrap_summaries_are_scipys_stratified_bootstrap_of_the_mean() -> None:
    import numpy as np
    from scipy import stats

    grpo, _ = summarize(RUNS, threshold=0.5, method="bootstrap")
    interval = grpo.metrics["final_accuracy"]
    expected = stats.bootstrap(
        ([0.55, 0.60, 0.50],),
        np.mean,
        n_resamples=10_000,
        method="percentile",
        rng=np.random.default_rng(0),
        vectorized=True,
    ).confidence_interval
    assert interval.estimate == pytest.approx(0.55)
    assert (interval.low, interval.high) == pytest.approx((expected.low, expected.high))
    assert interval.method == "bootstrap"
    assert "[" in cell(grpo, METRICS[0]) and "±" not in cell(grpo, METRICS[0])
