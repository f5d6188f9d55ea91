"""What a comparison can conclude about its headline metric (final held-out accuracy, or mean reward).

Per method: the interquartile mean and the mean with stratified bootstrap intervals, next to the
Student-t interval; for each ordered pair the probability of improvement; for each pair the paired
bootstrap of the accuracy difference over the shared held-out problems and seeds, with the smallest
difference the design could detect. Failed runs count (measures.FAILED_RULE: every problem scores 0),
collapsed runs count with their own scores. Pure: records and per-problem scores in, numbers out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sspo_cli.research.analysis.measures import (
    HEADLINE_METRICS,
    RunRecord,
    group_records,
    is_collapsed,
    run_metrics,
    strata_of,
)
from sspo_cli.research.analysis.stats import (
    CONFIDENCE,
    POWER,
    Interval,
    improvement_interval,
    iqm_bootstrap_interval,
    mean_bootstrap_interval,
    minimum_detectable_difference,
    paired_difference_interval,
    seed_difference_interval,
    t_interval,
)

if TYPE_CHECKING:
    import numpy as np


HEADLINE_METRIC = HEADLINE_METRICS[0]


@dataclass(frozen=True)
class ProblemScores:
    """Per problem (by prompt): 1.0 if the run answered it correctly, else 0.0; and the task's reward for it
    (empty when the file was written before rewards were kept)."""

    prompts: tuple[str, ...]
    correct: tuple[float, ...]
    reward: tuple[float, ...] = ()

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct) if self.correct else math.nan

    def values(self, metric: str) -> tuple[float, ...]:
        """The per-problem values whose mean is `metric` (one of HEADLINE_METRICS); empty if not kept."""
        return self.reward if metric == "final_reward" else self.correct

    def has(self, metric: str) -> bool:
        return len(self.values(metric)) == len(self.prompts)


@dataclass(frozen=True)
class GroupStatistics:
    name: str
    runs: int
    failed: int
    collapsed: int
    iqm: Interval
    mean: Interval
    t: Interval


@dataclass(frozen=True)
class PairedComparison:
    """`first` minus `second` in the headline metric over the problems both were evaluated on.

    Two intervals judge it: the bootstrap over problems and seeds (`difference`), and Student's t over the
    per-seed differences (`over_seeds`), whose few degrees of freedom the bootstrap cannot see. A method is
    called better only when both exclude 0: run-to-run variation dominates a handful of seeds.
    """

    first: str
    second: str
    difference: Interval | None  # None: no paired comparison possible (see `note`)
    detectable: float  # the minimum detectable difference of this design (the larger of the two intervals')
    seeds_paired: bool
    problems: int
    unpaired_overlap: bool  # the two methods' Student-t intervals over seeds overlap
    note: str = ""
    over_seeds: Interval | None = None  # the per-seed t interval; NaN bounds with under 2 seeds a side

    @property
    def separated(self) -> bool:
        both = (self.difference, self.over_seeds)
        if any(interval is None or not interval.excludes(0.0) for interval in both):
            return False
        return (self.difference.estimate > 0) == (self.over_seeds.estimate > 0)

    @property
    def verdict(self) -> str:
        if self.difference is None:
            return f"not paired: {self.note}"
        if not self.separated:
            return "not distinguishable"
        return f"{self.first if self.difference.estimate > 0 else self.second} better"


@dataclass(frozen=True)
class Inference:
    metric: str
    confidence: float
    groups: list[GroupStatistics]
    improvement: dict[tuple[str, str], Interval]  # (x, y) -> P(x > y)
    paired: list[PairedComparison]
    notes: list[str]

    @property
    def detectable_median(self) -> float:
        """The typical smallest detectable difference over the pairs (NaN if no pair has one)."""
        import statistics

        values = [p.detectable for p in self.paired if math.isfinite(p.detectable)]
        return statistics.median(values) if values else math.nan


def infer(
    records: Sequence[RunRecord],
    order: Sequence[str],
    problems: Mapping[str, ProblemScores],
    notes: Sequence[str] = (),
    confidence: float = CONFIDENCE,
    metric: str = HEADLINE_METRIC,
) -> Inference:
    """The statistics of `metric` (one of HEADLINE_METRICS): its per-problem values are what the pairs resample."""
    by_group = {name: members for name, members in group_records(records, order).items() if members}
    scores = {name: [run_metrics(r, math.nan)[metric] for r in members] for name, members in by_group.items()}
    groups = [group_statistics(name, members, scores[name], confidence) for name, members in by_group.items()]
    strata = {name: strata_of(members, scores[name]) for name, members in by_group.items()}
    improvement = {
        (x, y): improvement_interval(strata[x], strata[y], confidence) for x, y in itertools.permutations(by_group, 2)
    }
    t_of = {g.name: g.t for g in groups}
    paired = [
        paired_comparison(
            (x, by_group[x]), (y, by_group[y]), problems, intervals_overlap(t_of[x], t_of[y]), confidence, metric
        )
        for x, y in itertools.combinations(by_group, 2)
    ]
    return Inference(metric, confidence, groups, improvement, paired, list(notes))


def group_statistics(
    name: str, members: Sequence[RunRecord], scores: Sequence[float], confidence: float
) -> GroupStatistics:
    strata = strata_of(members, scores)
    return GroupStatistics(
        name,
        runs=len(members),
        failed=sum(r.failed for r in members),
        collapsed=sum(is_collapsed(r) for r in members),
        iqm=iqm_bootstrap_interval(strata, confidence),
        mean=mean_bootstrap_interval(strata, confidence),
        t=t_interval(scores, confidence),
    )


def intervals_overlap(a: Interval, b: Interval) -> bool:
    """Undefined intervals (one seed) are taken to overlap: they cannot tell anything apart."""
    if not (a.defined and b.defined):
        return True
    return a.low <= b.high and b.low <= a.high


# --------------------------------------------------------------------------- paired


def paired_comparison(
    first_group: tuple[str, Sequence[RunRecord]],
    second_group: tuple[str, Sequence[RunRecord]],
    problems: Mapping[str, ProblemScores],
    unpaired_overlap: bool,
    confidence: float,
    metric: str = HEADLINE_METRIC,
) -> PairedComparison:
    (first, first_runs), (second, second_runs) = first_group, second_group
    missing = [
        r.run_name
        for r in [*first_runs, *second_runs]
        if not r.failed and (r.run_id not in problems or not problems[r.run_id].has(metric))
    ]
    shared = shared_prompts([problems[r.run_id] for r in [*first_runs, *second_runs] if r.run_id in problems])
    seeds_paired = seeds_match(first_runs, second_runs)
    reason = (
        f"no per-problem results for {', '.join(missing)}"
        if missing
        else "fewer than 2 problems in common"
        if len(shared) < 2
        else ""
    )
    if reason:
        return PairedComparison(first, second, None, math.nan, seeds_paired, len(shared), unpaired_overlap, reason)
    first_matrix = problem_matrix(first_runs, problems, shared, metric)
    second_matrix = problem_matrix(second_runs, problems, shared, metric)
    difference = paired_difference_interval(first_matrix, second_matrix, seeds_paired, confidence)
    first_seeds, second_seeds = first_matrix.mean(axis=1), second_matrix.mean(axis=1)
    over_seeds = seed_difference_interval(first_seeds, second_seeds, seeds_paired, confidence)
    detectables = (
        minimum_detectable_difference(difference.standard_error, confidence, POWER),
        minimum_detectable_difference(over_seeds.standard_error, confidence, POWER, over_seeds.df),
    )
    detectable = max((value for value in detectables if math.isfinite(value)), default=math.nan)
    return PairedComparison(
        first, second, difference, detectable, seeds_paired, len(shared), unpaired_overlap, over_seeds=over_seeds
    )


def shared_prompts(scores: Sequence[ProblemScores]) -> list[str]:
    """The prompts every run was evaluated on, in the first run's order."""
    if not scores:
        return []
    common = set(scores[0].prompts).intersection(*(s.prompts for s in scores[1:]))
    return [p for p in scores[0].prompts if p in common]


def seeds_match(first_runs: Sequence[RunRecord], second_runs: Sequence[RunRecord]) -> bool:
    """Seed s of one method and seed s of the other share their warm start and random stream (every
    random choice of a step derives from the seed), so they are paired when both have the same seeds."""
    first, second = sorted(r.seed for r in first_runs), sorted(r.seed for r in second_runs)
    return first == second and len(set(first)) == len(first)


def problem_matrix(
    runs: Sequence[RunRecord], problems: Mapping[str, ProblemScores], prompts: Sequence[str], metric: str
) -> np.ndarray:
    """[run (by seed), problem] value of `metric`'s per-problem score; a failed run scores 0 (FAILED_RULE)."""
    import numpy as np

    rows = []
    for record in sorted(runs, key=lambda r: r.seed):
        if record.failed:
            rows.append(np.zeros(len(prompts)))
            continue
        by_prompt = dict(zip(problems[record.run_id].prompts, problems[record.run_id].values(metric)))
        rows.append(np.array([by_prompt[p] for p in prompts]))
    return np.vstack(rows)
