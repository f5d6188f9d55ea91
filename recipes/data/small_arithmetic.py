"""Writes small_arithmetic.jsonl: every `a + b`, `a * b` and `a - b` (a >= b) with a, b in 1..15, one per line.

The recipe `smollm2_small_arithmetic.yaml` reads it; rerun this script to regenerate the file.
"""

import json
from pathlib import Path

NUMBERS = range(1, 16)


def problems() -> list[dict[str, str]]:
    rows = []
    for a in NUMBERS:
        for b in NUMBERS:
            rows.append({"prompt": f"What is {a} + {b}?", "answer": str(a + b)})
            rows.append({"prompt": f"What is {a} * {b}?", "answer": str(a * b)})
            if a >= b:
                rows.append({"prompt": f"What is {a} - {b}?", "answer": str(a - b)})
    return rows


if __name__ == "__main__":
    out = Path(__file__).with_name("small_arithmetic.jsonl")
    out.write_text("".join(json.dumps(row) + "\n" for row in problems()))
    print(f"{out}: {len(problems())} problems")
