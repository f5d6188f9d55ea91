"""Rewards: each rule, the traps of answer extraction, the weighted mean and the registry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sspo_cli.rewards import REWARD_CONFIGS, REWARD_FUNCTIONS, scorer
from sspo_cli.rewards.config import (
    BoxedReward,
    ExactReward,
    FormatReward,
    Gsm8kReward,
    MathVerifyReward,
    NumericReward,
    RegexReward,
    infer_format_styles,
)
from sspo_cli.rewards.extract import boxes, gsm8k_answer, last_box, leading_number
from sspo_cli.rewards.functions import GOLD_CHECKS, numbers_equal


def reward(config, completion: str, gold: str, truncated: bool = False) -> float:
    return REWARD_FUNCTIONS[config.name](completion, gold, truncated, config)


def test_every_registered_reward_has_a_function() -> None:
    assert set(REWARD_CONFIGS) == set(REWARD_FUNCTIONS)
    assert set(REWARD_CONFIGS) == {"exact", "numeric", "regex", "boxed", "gsm8k", "math_verify", "format"}
    # Every answer reward but exact (any text is a gold string) checks its gold answers.
    answers = {name for name, config in REWARD_CONFIGS.items() if config.is_answer}
    assert set(GOLD_CHECKS) == answers - {"exact"}


# --------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
        (r"\boxed{1} no wait \boxed{2}", "2"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\fbox{7}", "7"),
        ("the answer is 12", None),  # no box: no answer, never the whole text
        (r"\boxed{3} then \boxed{12", None),  # the last box is cut off: no fallback to an earlier one
        (r"\boxed{ }", None),
    ],
)
def test_last_box(text: str, expected: str | None) -> None:
    assert last_box(text) == expected


def test_boxes_counts_top_level_boxes_and_reports_an_open_one() -> None:
    assert boxes(r"\boxed{a} and \boxed{\frac{b}{c}}") == (["a", r"\frac{b}{c}"], False)
    assert boxes(r"\boxed{a} and \boxed{b") == (["a"], True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so #### 1,234", 1234.0),
        ("#### $18 dollars", 18.0),
        ("#### -3.5.", -3.5),
        ("#### 5\nthen #### 7 apples", 7.0),
        ("#### twelve", None),
        ("the answer is 5", None),
        ("#### 12,34", None),  # not a thousands group: no number
    ],
)
def test_gsm8k_answer(text: str, expected: float | None) -> None:
    assert gsm8k_answer(text) == expected


def test_leading_number_skips_currency_and_units() -> None:
    assert leading_number(" $1,000,000 total") == 1e6
    assert leading_number("x = 4") is None


# --------------------------------------------------------------------------- each reward


def test_exact_and_numeric_keep_their_rules() -> None:
    assert reward(ExactReward(), " 42\n", "42") == 1.0
    assert reward(ExactReward(), "42.0", "42") == 0.0
    assert reward(NumericReward(), "42.0", "42") == 1.0
    assert reward(NumericReward(), "1,234", "1234") == 1.0
    assert reward(NumericReward(), "the answer is 42", "42") == 0.0
    assert numbers_equal("0.1", "0.1001") is False
    assert reward(NumericReward(), "1000000001", "1000000000") == 1.0  # today's relative 1e-9, kept


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{\frac12}", r"\frac{1}{2}", 1.0),
        (r"\boxed{0.5} wait, \boxed{1}", "0.5", 0.0),  # the last box wins
        (r"\boxed{1} wait, \boxed{0.5}", "0.5", 1.0),
        (r"\boxed{\$1,234}", "1234", 1.0),
        (r"\boxed{12 \text{ cm}}", "12", 1.0),
        (r"\boxed{3/4}", "0.75", 1.0),
        (r"\boxed{3/4}", "3", 0.0),  # 3/4 is not the number 3 followed by units
        ("the answer is 0.5", "0.5", 0.0),  # no box
        (r"\boxed{0.5", "0.5", 0.0),  # unclosed
        (r"\boxed{x+1}", r"The answer is \boxed{1+x}.", 1.0),  # a MATH solution as gold: its box
    ],
)
def test_boxed(completion: str, gold: str, expected: float) -> None:
    assert reward(BoxedReward(), completion, gold) == expected


@pytest.mark.parametrize(
    ("completion", "gold", "expected"),
    [
        ("3 + 4 = 7\n#### 7", "She has 3 + 4 = 7 apples.\n#### 7", 1.0),
        ("#### 1,234", "1234", 1.0),
        ("#### $1,234.00", "#### 1,234", 1.0),
        ("#### 7 apples", "7", 1.0),
        ("#### 8\n#### 7", "7", 1.0),
        ("the answer is 7", "7", 0.0),
        ("#### 70", "7", 0.0),
        ("#### 1,000,000,001", "1000000000", 0.0),  # whole numbers compare exactly, not within 1e-9
        ("#### 0.1000000000001", "0.1", 1.0),
    ],
)
def test_gsm8k(completion: str, gold: str, expected: float) -> None:
    assert reward(Gsm8kReward(), completion, gold) == expected


def test_regex_takes_the_first_group_of_the_last_match() -> None:
    answer_tag = RegexReward(pattern=r"<answer>(.*?)</answer>")
    assert reward(answer_tag, "<answer>3</answer> no: <answer> 4 </answer>", "4") == 1.0
    assert reward(answer_tag, "<answer>4</answer> no: <answer>3</answer>", "4") == 0.0
    assert reward(answer_tag, "<answer>4.0</answer>", "4") == 1.0  # numbers compare as numbers
    assert reward(answer_tag, "4", "4") == 0.0  # no match: no answer


def test_regex_needs_a_valid_pattern_with_a_group() -> None:
    with pytest.raises(ValueError, match="capture group"):
        RegexReward(pattern=r"\d+")
    with pytest.raises(ValueError, match="not a valid regular expression"):
        RegexReward(pattern=r"(\d+")


def test_math_verify_is_symbolic_equality() -> None:
    assert reward(MathVerifyReward(), r"so the answer is $\frac{2}{4}$", "1/2") == 1.0
    assert reward(MathVerifyReward(), r"\boxed{x^2 + 2x + 1}", "$(x+1)^2$") == 1.0
    assert reward(MathVerifyReward(), r"\boxed{3}", "4") == 0.0
    assert reward(MathVerifyReward(), "no maths here", "4") == 0.0


@pytest.mark.parametrize(
    ("style", "completion", "expected"),
    [
        ("boxed", r"so \boxed{4}", 1.0),
        ("boxed", r"\boxed{4} or \boxed{5}", 0.0),  # two final answers
        ("boxed", r"\boxed{4} and \boxed{5", 0.0),
        ("boxed", "4", 0.0),
        ("gsm8k", "work\n#### 4", 1.0),
        ("gsm8k", "#### 4\n#### 5", 0.0),
        ("gsm8k", "#### four", 0.0),
    ],
)
def test_format_wants_exactly_one_final_answer(style: str, completion: str, expected: float) -> None:
    assert reward(FormatReward(style=style), completion, "anything") == expected


def test_format_with_a_regex_style() -> None:
    cfg = FormatReward(style="regex", pattern=r"Answer: (\S+)")
    assert reward(cfg, "Answer: 4", "") == 1.0
    assert reward(cfg, "Answer: 4 Answer: 5", "") == 0.0


WHOLE_TEXT_REWARDS = [ExactReward(), NumericReward()]
TRUNCATION_CASES = [
    (RegexReward(pattern=r"=(\d+)"), "=4", "4"),
    (BoxedReward(), r"\boxed{4}", "4"),
    (Gsm8kReward(), "#### 4", "4"),  # perhaps the start of #### 42
    (MathVerifyReward(), r"\boxed{4}", "4"),
    (FormatReward(style="boxed"), r"\boxed{4}", "4"),
]


@pytest.mark.parametrize(("config", "completion", "gold"), TRUNCATION_CASES, ids=lambda c: getattr(c, "name", ""))
def test_a_completion_cut_off_at_max_new_tokens_scores_nothing(config, completion: str, gold: str) -> None:
    assert reward(config, completion, gold, truncated=False) == 1.0
    assert reward(config, completion, gold, truncated=True) == 0.0


@pytest.mark.parametrize("config", WHOLE_TEXT_REWARDS, ids=lambda c: c.name)
def test_whole_text_rewards_score_a_cut_completion_as_it_stands(config) -> None:
    """No answer is extracted, so nothing lucky: with max_new_tokens = 1 a one-token answer has no room for <eos>."""
    assert reward(config, "4", "4", truncated=True) == 1.0
    assert reward(config, "42", "4", truncated=True) == 0.0


def test_every_reward_is_covered_by_the_truncation_cases() -> None:
    covered = {config.name for config, _, _ in TRUNCATION_CASES} | {config.name for config in WHOLE_TEXT_REWARDS}
    assert covered == set(REWARD_CONFIGS)


# --------------------------------------------------------------------------- gold answers


@pytest.mark.parametrize(
    ("config", "gold"),
    [
        (NumericReward(), "two"),
        (Gsm8kReward(), "She has many apples.\n#### many"),
        (BoxedReward(), r"\boxed{}"),
        (MathVerifyReward(), "no maths here"),
        (MathVerifyReward(), "(x+1)^2"),  # math-verify reads this only as LaTeX, in $...$
        (RegexReward(pattern="(a)"), "  "),
    ],
    ids=lambda c: getattr(c, "name", ""),
)
def test_unreadable_gold_answers_are_found(config, gold: str) -> None:
    assert scorer([config]).gold_problem(gold) == (0, GOLD_CHECKS[config.name](gold, config))
    assert GOLD_CHECKS[config.name](gold, config) is not None


def test_readable_gold_answers_pass() -> None:
    rewards = scorer([BoxedReward(), Gsm8kReward(), MathVerifyReward(), NumericReward()])
    assert rewards.gold_problem("1,234") is None
    assert scorer([BoxedReward()]).gold_problem(r"\frac{1}{2}") is None


# --------------------------------------------------------------------------- the weighted mean


def test_weighted_mean_and_correctness() -> None:
    rewards = scorer([BoxedReward(weight=1.0), FormatReward(style="boxed", weight=0.25)])
    both = rewards.grade(r"\boxed{4}", "4")
    assert (both.reward, both.correct) == (1.0, True)
    # Right, but two boxes: the format bonus is lost, the answer still counts as correct.
    right = rewards.grade(r"\boxed{5} \boxed{4}", "4")
    assert right.reward == pytest.approx(1.0 / 1.25) and right.correct
    wrong = rewards.grade(r"\boxed{5}", "4")
    assert wrong.reward == pytest.approx(0.25 / 1.25) and not wrong.correct
    assert rewards.grade(r"\boxed{4}", "4", truncated=True).reward == 0.0


def test_correct_needs_every_answer_reward() -> None:
    rewards = scorer([Gsm8kReward(), ExactReward()])
    assert not rewards.grade("#### 4", "4").correct
    assert rewards.grade("#### 4", "4").reward == 0.5


def test_a_reward_list_needs_an_answer_reward() -> None:
    with pytest.raises(ValueError, match="answer reward"):
        scorer([FormatReward(style="boxed")])


def test_format_style_is_inferred_from_the_answer_reward() -> None:
    inferred = infer_format_styles([RegexReward(pattern="A: (.*)"), FormatReward()])
    assert inferred[1] == FormatReward(style="regex", pattern="A: (.*)")
    assert infer_format_styles([FormatReward(), Gsm8kReward()])[0].style == "gsm8k"
    with pytest.raises(ValueError, match="format needs a style"):
        infer_format_styles([ExactReward(), FormatReward()])
    with pytest.raises(ValueError, match="found boxed, gsm8k"):
        infer_format_styles([BoxedReward(), Gsm8kReward(), FormatReward()])


def test_math_verify_rewards_work_off_the_main_thread() -> None:
    """math-verify's signal-based timeout refuses other threads; the rewards then run without it."""
    from concurrent.futures import ThreadPoolExecutor

    completion = r"so \boxed{\frac{3}{6}}"  # not seen above: the parse cache must not hide the thread
    with ThreadPoolExecutor(1) as pool:
        scores = pool.submit(
            lambda: (reward(BoxedReward(), completion, "0.5"), reward(MathVerifyReward(), completion, "$1/2$"))
        )
        assert scores.result() == (1.0, 1.0)


@given(
    st.integers(min_value=-(10**12), max_value=10**12),
    st.sampled_from(["", "$", " $"]),
    st.sampled_from(["", " apples", "."]),
)
def test_gsm8k_reads_any_integer_as_written(n: int, prefix: str, suffix: str) -> None:
    assert reward(Gsm8kReward(), f"work\n####{prefix} {n:,}{suffix}", str(n)) == 1.0
    assert reward(Gsm8kReward(), f"work\n####{prefix} {n:,}{suffix}", str(n + 1)) == 0.0


@given(st.text(alphabet=st.characters(blacklist_characters="\\")))
def test_without_a_box_there_is_no_answer(text: str) -> None:
    gold = text.strip() or "0"
    assert reward(BoxedReward(), text, gold) == 0.0
    assert reward(FormatReward(style="boxed"), text, gold) == 0.0
