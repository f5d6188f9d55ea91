"""The statistics of a comparison as tables of text: one source for the terminal and for report.md."""

from __future__ import annotations

from dataclasses import dataclass

from sspo_cli.research.analysis.conclusions import Inference, PairedComparison
from sspo_cli.research.analysis.measures import COLLAPSE_RULE, FAILED_RULE, MetricSpec, metric_spec
from sspo_cli.research.analysis.stats import BOOTSTRAP_METHOD, BOOTSTRAP_RESAMPLES, POWER, T_METHOD, interval_name
from sspo_cli.research.reporting.formatting import MISSING, format_interval, format_value


@dataclass(frozen=True)
class TextTable:
    title: str
    headers: tuple[str, ...]
    rows: list[tuple[str, ...]]
    caption: str  # one line, under the table in the terminal and in report.md
    explanation: str = ""  # how the numbers are made, in full: report.md only
    left_columns: int = 1  # the first columns hold names (left-aligned), the rest numbers


HEADLINE_NAMES = {"final_accuracy": "final held-out accuracy", "final_reward": "final held-out mean reward"}


def headline_name(spec: MetricSpec) -> str:
    """What the statistics are about, in words."""
    return HEADLINE_NAMES.get(spec.key, spec.label)


def aggregates_table(inference: Inference) -> TextTable:
    spec = metric_spec(inference.metric)
    rows = [
        (
            g.name,
            str(g.runs),
            str(g.failed),
            str(g.collapsed),
            *(format_interval(spec.kind, i) for i in (g.iqm, g.mean, g.t)),
        )
        for g in inference.groups
    ]
    confidence = f"{inference.confidence:.0%}"
    caption = (
        f"IQM (25% trimmed mean) and mean: {confidence} stratified bootstrap CI over runs; "
        "mean (t): Student-t CI; failed runs score 0"
    )
    explanation = (
        f"IQM: the 25% trimmed mean over every run; IQM and mean: "
        f"{interval_name(BOOTSTRAP_METHOD, inference.confidence)}, strata: tasks; "
        f"mean (t): {interval_name(T_METHOD, inference.confidence)}. Rules: {FAILED_RULE}; {COLLAPSE_RULE}."
    )
    headers = ("method", "runs", "failed", "collapsed", "IQM", "mean", "mean (t)")
    return TextTable(f"{headline_name(spec)} over runs", headers, rows, caption, explanation)


def improvement_table(inference: Inference) -> TextTable:
    names = [g.name for g in inference.groups]
    rows = [
        (x, *("" if x == y else format_interval("float", inference.improvement[(x, y)]) for y in names)) for x in names
    ]
    caption = (
        "P(a run of the row method beats one of the column method) = Mann-Whitney U / (n m); "
        f"{inference.confidence:.0%} bootstrap CI"
    )
    explanation = (
        f"P(row > column): the probability that a run of the row method ends with a higher "
        f"{headline_name(metric_spec(inference.metric))} than a run "
        f"of the column method (Mann-Whitney U / (n m), ties count one half, averaged over tasks); "
        f"{interval_name(BOOTSTRAP_METHOD, inference.confidence)}."
    )
    return TextTable("probability of improvement", ("P(row > column)", *names), rows, caption, explanation)


def paired_table(inference: Inference) -> TextTable:
    spec = metric_spec(inference.metric)
    headers = (
        "first",
        "second",
        "difference",
        "over seeds (t)",
        "detectable",
        "problems",
        "seeds paired",
        "unpaired t-intervals",
        "verdict",
    )
    level = f"{1 - inference.confidence:.0%}"
    caption = (
        f"first - second, {inference.confidence:.0%} paired bootstrap CI over problems and seeds, and Student-t CI "
        "over the per-seed differences; better: both exclude 0; "
        f"detectable: the smallest true difference found with {POWER:.0%} power at the {level} level"
    )
    explanation = (
        f"difference: first minus second in {headline_name(spec)}, from a percentile bootstrap "
        f"({BOOTSTRAP_RESAMPLES:,} resamples) that resamples the held-out problems (the same ones for both methods: "
        "the "
        "pairing) and the seeds (seed s of both together when both ran the same seeds: they share the warm start and "
        f"the random stream). detectable: the smallest true difference this design (these seeds and problems) finds "
        f"with {POWER:.0%} power in a two-sided test at the {level} level, (z_{(1 + inference.confidence) / 2:g} + "
        f"z_{POWER:g}) x the bootstrap standard error, or with Student's t quantiles on the seeds' degrees of freedom "
        "x the per-seed standard error, whichever is larger. over seeds (t): each seed's difference over the shared "
        "problems, with a Student-t interval on n-1 degrees of freedom (paired seeds: scipy.stats.ttest_rel; else "
        "Welch's ttest_ind): a bootstrap over 3 seeds behaves like a normal interval and understates run-to-run "
        "variation, which t with 2 degrees of freedom (4.30 standard errors) does not. X better: both intervals "
        "exclude 0, on the same side; otherwise not distinguishable. unpaired t-intervals: whether the two methods' "
        "Student-t intervals over seeds overlap."
    )
    rows = [paired_row(p, spec) for p in inference.paired]
    title = f"paired differences in {headline_name(spec)}"
    return TextTable(title, headers, rows, caption, explanation, left_columns=2)


def paired_row(pair: PairedComparison, spec: MetricSpec) -> tuple[str, ...]:
    difference = format_interval(spec.kind, pair.difference) if pair.difference is not None else MISSING
    over_seeds = format_interval(spec.kind, pair.over_seeds) if pair.over_seeds is not None else MISSING
    return (
        pair.first,
        pair.second,
        difference,
        over_seeds,
        format_value(spec.kind, pair.detectable),
        str(pair.problems),
        "yes" if pair.seeds_paired else "no",
        "overlap" if pair.unpaired_overlap else "apart",
        pair.verdict,
    )


def statistics_tables(inference: Inference) -> list[TextTable]:
    return [aggregates_table(inference), improvement_table(inference), paired_table(inference)]
