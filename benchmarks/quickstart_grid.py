"""The quickstart's learning grid: warm-start seeds x torch threads x bf16 autocast, each cell a real `sspo train`.

    python benchmarks/quickstart_grid.py --seeds 0-4 --threads 1,2 --bf16 auto --caps native,avx2 --jobs 2

Every cell runs from a cold warm-start cache in its own output folder (`--shared-cache` reuses one
cache across cells instead, for exploring RL settings on fixed warm starts), then `sspo eval --split
dev` scores the final policy on the dev split. `--caps avx2` caps the CPU kernels at AVX2 (ATen, MKL
and oneDNN), which reproduces an AVX2-only CPU's rounding on an AVX-512 machine. One-thread cells may
run `--jobs` at a time; wall times are then upper bounds. Each cell's figures are appended to `--log`
as one JSON line, and the table is printed in Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sspo_cli.engines.native.tuning import kernel_environment

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Cell:
    seed: int
    threads: int
    bf16: str
    caps: str

    @property
    def name(self) -> str:
        return f"s{self.seed}-t{self.threads}-bf16{self.bf16}-{self.caps}"


def integers(text: str) -> list[int]:
    """'0-4' or '0,2,3' -> the integers."""
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(part) for part in text.split(",")]


def cell_env(cell: Cell) -> dict[str, str]:
    return kernel_environment(cell.caps, os.environ) | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def sspo(*args: str) -> list[str]:
    return [sys.executable, "-m", "sspo_cli.cli.main", *args]


def run_cell(cell: Cell, root: Path, recipe: Path, extra: list[str], shared_cache: Path | None) -> dict:
    out = root / cell.name
    out.mkdir(parents=True, exist_ok=True)
    if shared_cache is not None and not (out / ".cache").exists():
        shared_cache.mkdir(parents=True, exist_ok=True)
        (out / ".cache").symlink_to(shared_cache.resolve())
    overrides = [f"train.warm_start.seed={cell.seed}", f"train.threads={cell.threads}"]
    if cell.bf16 != "auto":
        overrides.append(f"performance.autocast_bf16={cell.bf16 == 'on'}")
    sets = [arg for key in [*overrides, *extra] for arg in ("--set", key)]
    started = time.perf_counter()
    train = subprocess.run(
        sspo("train", str(recipe), *sets, "-o", str(out), "--quiet"), env=cell_env(cell), capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if train.returncode != 0:
        return {"cell": cell.name, "error": train.stderr.strip().splitlines()[-1:]}
    (summary_file,) = sorted(out.glob("*/summary.json"))[-1:]
    summary = json.loads(summary_file.read_text())
    dev = subprocess.run(
        sspo("eval", str(summary_file.parent), "--split", "dev", "--no-track"),
        env=cell_env(cell),
        capture_output=True,
        text=True,
    )
    dev_after = re.search(r"accuracy\s*│\s*([\d.]+)%", dev.stdout)
    return {
        "cell": cell.name,
        **cell.__dict__,
        "extra": extra,
        "fingerprint": summary["fingerprint"],  # of the resolved recipe: the same figure for the same settings
        "warm_steps": summary["warm_start"]["steps"],
        "warm_dev": summary["warm_start"]["dev_accuracy"],
        "warm_cached": summary["warm_start"]["cached"],
        "before": summary["eval_before"]["accuracy"],
        "after": summary["eval_after"]["accuracy"],
        "evals": [e["accuracy"] for e in summary["evals"]],
        "dev_after": float(dev_after.group(1)) / 100 if dev_after else None,
        "wall_s": wall,
    }


def row(result: dict) -> str:
    if "error" in result:
        return f"| {result['cell']} | failed: {result['error']} |"
    gain = 100 * (result["after"] - result["before"])
    dev_after = "-" if result["dev_after"] is None else f"{result['dev_after']:.1%}"
    curve = " ".join(f"{a:.0%}" for a in result["evals"])
    return (
        f"| {result['seed']} | {result['threads']} | {result['bf16']} | {result['caps']} | {result['warm_steps']} | "
        f"{result['warm_dev']:.1%} -> {dev_after} | {result['before']:.1%} -> {result['after']:.1%} | {gain:+.1f} | "
        f"{curve} | {result['wall_s']:.0f} s |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "quickstart.yaml")
    parser.add_argument("--seeds", default="0-4", help="Warm-start seeds: 0-4 or 0,3,4.")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--bf16", default="auto", help="Comma list of auto, on, off.")
    parser.add_argument("--caps", default="native", help="Comma list of native, avx2.")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="Extra recipe override (repeatable).")
    parser.add_argument("--jobs", type=int, default=1, help="One-thread cells run this many at a time.")
    parser.add_argument("--root", type=Path, default=Path("/tmp/sspo-quickstart-grid"))
    parser.add_argument("--shared-cache", type=Path, default=None, help="One warm-start cache for every cell.")
    parser.add_argument("--log", type=Path, default=REPO / "benchmarks" / "results" / "quickstart_grid.jsonl")
    args = parser.parse_args(argv)

    cells = [
        Cell(seed, threads, bf16, caps)
        for caps in args.caps.split(",")
        for bf16 in args.bf16.split(",")
        for threads in integers(args.threads)
        for seed in integers(args.seeds)
    ]
    print(
        "| warm-start seed | threads | bf16 | caps | warm-start steps | dev before -> after | held-out before -> after "
        "| gain | held-out at each eval | wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for threads in sorted({cell.threads for cell in cells}):
        batch = [cell for cell in cells if cell.threads == threads]
        jobs = max(1, args.jobs // threads)
        with ThreadPoolExecutor(jobs) as pool:
            for result in pool.map(lambda c: run_cell(c, args.root, args.recipe, args.extra, args.shared_cache), batch):
                print(row(result), flush=True)
                results.append(result)
                args.log.parent.mkdir(parents=True, exist_ok=True)
                with args.log.open("a") as log:
                    log.write(json.dumps({**result, "time": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
    gains = [100 * (r["after"] - r["before"]) for r in results if "error" not in r]
    if gains:
        print(f"\nheld-out gain: min {min(gains):+.1f}, mean {sum(gains) / len(gains):+.1f} over {len(gains)} cells")


if __name__ == "__main__":
    main()
