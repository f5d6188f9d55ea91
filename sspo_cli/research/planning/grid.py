"""Grids of recipe values: `--grid key=v1,v2` and a section's grid as axes, their cartesian product, and
the short labels of its points."""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from typing import Any

from sspo_cli.research import ResearchError
from sspo_cli.research.planning.space import GridAxis


def parse_grid_option(text: str) -> GridAxis:
    """`objective.tau_pos=0.5,1,2` or `objective.tau_pos=[0.5, 1, 2]`; each value parsed as YAML."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise ResearchError("--grid", f"{text!r}: expected dotted.key=v1,v2,...")
    try:
        if raw.strip().startswith("["):
            values = yaml.safe_load(raw)
        else:
            values = [yaml.safe_load(part) for part in raw.split(",")]
    except yaml.YAMLError as exc:
        raise ResearchError(
            "--grid", f"{key}: values {raw!r} are not valid YAML ({str(exc).splitlines()[0]})"
        ) from None
    return grid_axis(key, values, "--grid")


def grid_axis(key: str, values: Any, where: str) -> GridAxis:
    if not isinstance(values, list) or not values:
        raise ResearchError(where, f"{key}: needs a non-empty list of values")
    if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
        raise ResearchError(where, f"{key}: a value is listed twice")
    return GridAxis(key, tuple(values))


def merge_axes(from_file: Sequence[GridAxis], from_cli: Sequence[GridAxis]) -> list[GridAxis]:
    """--grid replaces the file's values for the same key and adds new keys after the file's."""
    merged = {axis.key: axis for axis in from_file}
    for axis in from_cli:
        merged[axis.key] = axis
    return list(merged.values())


def grid_points(axes: Sequence[GridAxis]) -> list[dict[str, Any]]:
    """The cartesian product, first axis slowest."""
    return [dict(zip((a.key for a in axes), combo)) for combo in itertools.product(*(a.values for a in axes))]


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key shares: objective.tau_pos -> tau_pos."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            suffix = ".".join(parts[-size:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        out[key] = suffix
    return out


def point_label(point: dict[str, Any], names: dict[str, str]) -> str:
    return " ".join(f"{names[key]}={show_value(value)}" for key, value in point.items()) or "base"


def show_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else "null" if value is None else str(value)
