"""Each reward's function, registered beside its config: `(completion, gold, truncated, cfg) -> [0, 1]`.

`truncated` says the completion ended without <eos> (it hit `max_new_tokens`): its last expression
may be the start of a longer one (`#### 4` of `#### 42`), so no reward that extracts an answer
scores it. `exact` and `numeric` judge the whole completion as it stands, so they score it as
before: a `max_new_tokens` equal to the answer's length (no room for <eos>) keeps working. Each answer
reward also has a gold check, run on every row when the task is built: a gold answer the reward
cannot read is an error in the data, not a reward of 1 or 0.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from sspo_cli.rewards import extract
from sspo_cli.rewards.config import (
    BaseRewardConfig,
    BoxedReward,
    ExactReward,
    FormatReward,
    Gsm8kReward,
    MathVerifyReward,
    NumericReward,
    RegexReward,
)

NUMERIC_REL_TOL = 1e-9
MATH_VERIFY_TIMEOUT_S = 5  # math-verify's own default, per parse and per verify
# After a leading number, these make it part of an expression (`3/4`, `2^10`) rather than a number with units.
EXPRESSION_CONTINUES = frozenset("/^*+-_{}()\\")

RewardFunction = Callable[[str, str, bool, Any], float]
GoldCheck = Callable[[str, Any], str | None]  # the reason the gold answer is unusable, or None

REWARD_FUNCTIONS: dict[str, RewardFunction] = {}
GOLD_CHECKS: dict[str, GoldCheck] = {}


def reward_function(config: type[BaseRewardConfig]) -> Callable[[RewardFunction], RewardFunction]:
    """Decorator: the function is the reward whose config model is `config`."""

    def register(function: RewardFunction) -> RewardFunction:
        REWARD_FUNCTIONS[config.model_fields["name"].default] = function
        return function

    return register


def gold_check(config: type[BaseRewardConfig]) -> Callable[[GoldCheck], GoldCheck]:
    def register(function: GoldCheck) -> GoldCheck:
        GOLD_CHECKS[config.model_fields["name"].default] = function
        return function

    return register


def score(value: bool) -> float:
    return 1.0 if value else 0.0


def numbers_equal(completion: str, answer: str) -> bool:
    got, gold = extract.parse_number(completion), extract.parse_number(answer)
    return got is not None and gold is not None and _close(got, gold)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=NUMERIC_REL_TOL, abs_tol=0.0)


def same_number(a: float, b: float) -> bool:
    """Whole numbers exactly (1e9 is not 1e9 + 1, as a relative tolerance would have it), others within 1e-9."""
    return a == b if a.is_integer() and b.is_integer() else _close(a, b)


def same_numbers(answer: str, gold: str) -> bool:
    got, want = extract.parse_number(answer), extract.parse_number(gold)
    return got is not None and want is not None and same_number(got, want)


def _timeout_s() -> int | None:
    """math-verify times out with signal.alarm, which only the main thread may set; elsewhere it refuses."""
    return MATH_VERIFY_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@lru_cache(maxsize=8192)
def _parsed(text: str) -> tuple[Any, ...]:
    """math-verify's reading of `text` (empty when it finds no expression)."""
    from math_verify import parse

    return tuple(parse(text, parsing_timeout=_timeout_s()))


def _verified(gold: tuple[Any, ...], answer: tuple[Any, ...]) -> bool:
    from math_verify import verify

    return bool(gold and answer and verify(list(gold), list(answer), timeout_seconds=_timeout_s()))


def math_equal(gold: str, answer: str) -> bool:
    """Symbolic equality by math-verify; each side is read as one LaTeX expression."""
    return _verified(_parsed(f"${gold}$"), _parsed(f"${answer}$"))


def answers_equal(gold: str, answer: str) -> bool:
    """Equal as numbers (past `$` and units), else symbolically by math-verify."""
    got, want = extract.leading_number(answer), extract.leading_number(gold)
    if got is not None and want is not None and _full_number(answer) and _full_number(gold):
        return same_number(got, want)
    return math_equal(gold, answer)


def _full_number(text: str) -> bool:
    """Whether a number is all `text` says (past `$` and units): `3/4` or `2^10` are left to math-verify."""
    match = extract.LEADING_NUMBER.match(text)
    rest = text[match.end() :].strip() if match else text
    return match is not None and rest[:1] not in EXPRESSION_CONTINUES


def gold_answer(gold: str) -> str:
    """A gold answer for boxed: its last box when it has one (a MATH-style solution), else all of it."""
    return extract.last_box(gold) or gold.strip()


# --------------------------------------------------------------------------- rewards


@reward_function(ExactReward)
def exact(completion: str, gold: str, truncated: bool, cfg: ExactReward) -> float:
    return score(completion.strip() == gold.strip())


@reward_function(NumericReward)
def numeric(completion: str, gold: str, truncated: bool, cfg: NumericReward) -> float:
    return score(numbers_equal(completion, gold))


@reward_function(RegexReward)
def regex(completion: str, gold: str, truncated: bool, cfg: RegexReward) -> float:
    answer = None if truncated else extract.regex_answer(completion, cfg.pattern)
    return score(answer is not None and (answer == gold.strip() or same_numbers(answer, gold)))


@reward_function(BoxedReward)
def boxed(completion: str, gold: str, truncated: bool, cfg: BoxedReward) -> float:
    answer = None if truncated else extract.last_box(completion)
    return score(answer is not None and answers_equal(gold_answer(gold), answer))


@reward_function(Gsm8kReward)
def gsm8k(completion: str, gold: str, truncated: bool, cfg: Gsm8kReward) -> float:
    got, want = None if truncated else extract.gsm8k_answer(completion), gsm8k_gold(gold)
    return score(got is not None and want is not None and same_number(got, want))


def gsm8k_gold(gold: str) -> float | None:
    """The gold number: after the last `####` when the answer is a GSM8K solution, else the answer itself."""
    return extract.gsm8k_answer(gold) if extract.GSM8K_MARKER in gold else extract.leading_number(gold)


@reward_function(MathVerifyReward)
def math_verify(completion: str, gold: str, truncated: bool, cfg: MathVerifyReward) -> float:
    return score(not truncated and _verified(_parsed(gold), _parsed(completion)))


@reward_function(FormatReward)
def format_(completion: str, gold: str, truncated: bool, cfg: FormatReward) -> float:
    return score(not truncated and FORMAT_COUNTS[cfg.style or "boxed"](completion, cfg) == 1)


def _box_count(text: str, cfg: FormatReward) -> int:
    contents, left_open = extract.boxes(text)
    return -1 if left_open else sum(1 for c in contents if c)


def _gsm8k_count(text: str, cfg: FormatReward) -> int:
    return extract.gsm8k_count(text) if extract.gsm8k_answer(text) is not None else 0


def _regex_count(text: str, cfg: FormatReward) -> int:
    return len(extract.regex_answers(text, cfg.pattern or ""))


# Answer style -> how many final answers of that style a completion holds (-1: one left unclosed).
FORMAT_COUNTS: dict[str, Callable[[str, FormatReward], int]] = {
    "boxed": _box_count,
    "gsm8k": _gsm8k_count,
    "regex": _regex_count,
}


# --------------------------------------------------------------------------- gold checks


@gold_check(NumericReward)
def _numeric_gold(gold: str, cfg: NumericReward) -> str | None:
    return None if extract.parse_number(gold) is not None else "is not a number"


@gold_check(RegexReward)
def _regex_gold(gold: str, cfg: RegexReward) -> str | None:
    return None if gold.strip() else "is empty"


@gold_check(BoxedReward)
def _boxed_gold(gold: str, cfg: BoxedReward) -> str | None:
    answer = gold_answer(gold)
    readable = extract.leading_number(answer) is not None or _parsed(f"${answer}$")
    return None if readable else "is neither a number nor an expression math-verify can parse"


@gold_check(Gsm8kReward)
def _gsm8k_gold(gold: str, cfg: Gsm8kReward) -> str | None:
    return None if gsm8k_gold(gold) is not None else "has no number (after its last '####', if it has one)"


@gold_check(MathVerifyReward)
def _math_verify_gold(gold: str, cfg: MathVerifyReward) -> str | None:
    # Read as math-verify reads it: `(x+1)^2` needs `$...$`; wrapping every gold in `$` would read prose as maths.
    return None if _parsed(gold) else "has no expression math-verify can parse (LaTeX needs $...$)"
