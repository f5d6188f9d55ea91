"""The runs to train, cut into units of work: a population (several seeds of one recipe, or of recipes that differ
only in objective numbers such as a gate temperature, trained together in one process, where the engine can:
`engines/dispatch.py:population_refusal`) or a single run.

How many members a population gets (`--population`): a number caps it, `off` is 1, and `auto` takes (for completions
of at most AUTO_MAX_NEW_TOKENS) as many seeds as the recipe has up to AUTO_MEMBERS, fewer where memory would not hold them (every member keeps its weights, gradients,
AdamW moments and its share of the activations at once), and splits populations until every `--jobs` worker has one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from sspo_cli.engines.dispatch import population_refusal
from sspo_cli.recipe import Recipe
from sspo_cli.research import ResearchError
from sspo_cli.research.planning.plan import PlannedRun

AUTO = "auto"
OFF = "off"
# Per member a population's step gets cheaper up to about 8 members and little after (docs/performance.md).
AUTO_MEMBERS = 8
# A population saves a step's fixed costs (Python, dispatch, small kernels), which dominate short completions; with
# long ones the step is compute and the standalone step's shortcuts (dropping ended rows, trimming) win: on a CPU a
# population of the 65-token sort study was 0.9x, of the 4-token quickstart 1.6x (docs/performance.md).
AUTO_MAX_NEW_TOKENS = 16
MEMORY_SHARE = 0.5  # of the memory available now, what the populations of all jobs may take together
BYTES = 4  # float32


def parse_population(value: str) -> int | None:
    """`--population`: auto (None), off (1) or the most members per population."""
    text = value.strip().lower()
    if text == AUTO:
        return None
    if text == OFF:
        return 1
    try:
        members = int(text)
    except ValueError:
        members = 0
    if members < 1:
        raise ResearchError("--population", f"must be auto, off or a number of members (1 or more), got {value!r}")
    return members


def training_units(plan: Sequence[PlannedRun], population: int | None, jobs: int) -> list[list[PlannedRun]]:
    """`plan` as units of work, in plan order of their first run: the runs of one `Recipe.population_key` (the seeds
    of a recipe, and of its objective's numbers) as populations of at most `population` members (None:
    `auto_members`), balanced in size; everything else one run a unit."""
    groups: dict[str, list[PlannedRun]] = {}
    for planned in plan:
        groups.setdefault(planned.recipe.population_key(), []).append(planned)
    units: list[list[PlannedRun]] = []
    for group in groups.values():
        cap = population if population is not None else auto_members(group[0].recipe, jobs)
        if cap < 2 or len(group) < 2 or population_refusal([p.recipe for p in group]) is not None:
            units += [[planned] for planned in group]
            continue
        parts = math.ceil(len(group) / cap)
        units += [group[i::parts] for i in range(parts)]
    return units if population is not None else busy(units, jobs)


def busy(units: list[list[PlannedRun]], jobs: int) -> list[list[PlannedRun]]:
    """`units` with the largest population halved until there is a unit for each of the `jobs` workers (where
    populations can still be split): 8 seeds and `--jobs 2` train as two populations of 4 side by side."""
    units = list(units)
    while len(units) < jobs:
        largest = max(range(len(units)), key=lambda i: len(units[i]))
        if len(units[largest]) < 2:
            break
        unit = units.pop(largest)
        units[largest:largest] = [unit[0::2], unit[1::2]]
    return units


def auto_members(recipe: Recipe, jobs: int, memory: float | None = None) -> int:
    """Members per population for `auto`: none for long completions (AUTO_MAX_NEW_TOKENS), else AUTO_MEMBERS, or as
    many as `jobs` populations fit in MEMORY_SHARE of `memory` bytes (default: the memory available now)."""
    if recipe.rollout.max_new_tokens > AUTO_MAX_NEW_TOKENS:
        return 1
    budget = (available_memory() if memory is None else memory) * MEMORY_SHARE / max(jobs, 1)
    return max(1, min(AUTO_MEMBERS, int(budget // member_bytes(recipe))))


def member_bytes(recipe: Recipe) -> float:
    """A rough upper bound of one member's memory in a population: weights, gradients and two AdamW moments, and the
    activations an update keeps for its backward (every layer's inputs, the MLP's and the logits) for a mini-batch."""
    tiny = recipe.model.tiny
    if tiny is None:
        return math.inf
    hidden, inner, layers = tiny.hidden_size, tiny.intermediate_size, tiny.num_layers
    vocab = 512  # above any embedded task's alphabet
    parameters = layers * (4 * hidden * hidden + 3 * hidden * inner) + vocab * hidden
    rollout = recipe.rollout
    rows = rollout.prompts_per_step * rollout.group_size
    per_token = layers * (16 * hidden + 4 * inner) + 2 * vocab
    activations = rows * tiny.max_positions * per_token
    return BYTES * (4 * parameters + activations)


def available_memory() -> float:
    """Memory available now (Linux: MemAvailable), else a conservative 4 GiB."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 4.0 * 2**30
