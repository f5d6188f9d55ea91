"""Finding the final answer in a completion: pure text functions, no I/O.

Each extractor returns None when there is no answer, never the whole text: a completion without
the expected marker has not answered.
"""

from __future__ import annotations

import math
import re

BOX_OPENERS = ("\\boxed{", "\\fbox{")
# A number as written in an answer: optional sign, thousands groups of three, optional decimals.
NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
# `$ 1,234.5 dollars`: an optional currency sign, the number, then anything that is not a digit (units).
LEADING_NUMBER = re.compile(r"\s*\$?\s*(" + NUMBER.pattern + r")(?![\d,])")
GSM8K_MARKER = "####"


def parse_number(text: str) -> float | None:
    """`text` as a finite float, ignoring surrounding whitespace and thousands commas; else None."""
    try:
        value = float(text.strip().replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def leading_number(text: str) -> float | None:
    """The number `text` starts with, past a `$`; units or words after it are ignored. None if none."""
    found = LEADING_NUMBER.match(text)
    return parse_number(found.group(1)) if found else None


def boxes(text: str) -> tuple[list[str], bool]:
    """Contents of the top-level `\\boxed{...}` (or `\\fbox{...}`) in order, and whether one is left open."""
    contents: list[str] = []
    position = 0
    while (start := _next_box(text, position)) is not None:
        opener_end = start + text[start:].index("{") + 1
        close = _closing_brace(text, opener_end)
        if close is None:
            return contents, True
        contents.append(text[opener_end:close].strip())
        position = close + 1
    return contents, False


def last_box(text: str) -> str | None:
    """The content of the last `\\boxed{...}`; None if there is none, it is empty, or the last one is unclosed."""
    contents, left_open = boxes(text)
    if left_open or not contents or not contents[-1]:
        return None
    return contents[-1]


def _next_box(text: str, position: int) -> int | None:
    found = [i for i in (text.find(opener, position) for opener in BOX_OPENERS) if i >= 0]
    return min(found) if found else None


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the `}` that closes the group opened just before `start`; escaped braces do not count."""
    depth = 1
    index = start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return index
        index += 1
    return None


def gsm8k_answer(text: str) -> float | None:
    """The number on the line after the last `####`; None without a marker or a number there."""
    if GSM8K_MARKER not in text:
        return None
    after = text.rsplit(GSM8K_MARKER, 1)[1]
    return leading_number(after.split("\n", 1)[0])


def gsm8k_count(text: str) -> int:
    return text.count(GSM8K_MARKER)


def regex_answers(text: str, pattern: str) -> list[str]:
    """The first group of every match of `pattern` (matches where the group took no part are skipped)."""
    return [m.group(1) for m in re.finditer(pattern, text) if m.group(1) is not None]


def regex_answer(text: str, pattern: str) -> str | None:
    found = regex_answers(text, pattern)
    return found[-1].strip() if found else None
