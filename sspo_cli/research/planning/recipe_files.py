"""Recipe files as the workflow reads them: raw YAML data (methods and grid points patch it before
validation), with an optional `sweep:` section split off, and method variants files."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from sspo_cli.recipe import SWEEP_SECTION, WORKFLOW_SECTIONS, RecipeError, read_recipe_data
from sspo_cli.research import ResearchError


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; `what` is "recipe" or the option that named the file."""
    try:
        return read_recipe_data(path)
    except RecipeError as exc:
        if what == "recipe":
            raise
        raise ResearchError(what, f"{path}: {'; '.join(exc.problems)}") from None


def read_recipe_file(path: str | Path, section: str = SWEEP_SECTION) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(recipe data without the workflow sections, the `section` one (`sweep` or `compare`) or None)."""
    data = read_yaml_mapping(path, "recipe")
    sections = {name: data.pop(name, None) for name in WORKFLOW_SECTIONS}
    found = sections[section]
    if found is not None and not isinstance(found, dict):
        raise RecipeError(str(path), [f"{section}: must be a mapping"])
    return data, found


def deep_merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `patch` merged in; mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_variants(path: str | Path) -> dict[str, dict[str, Any]]:
    """`name: {section: {...}}` per method variant, e.g. `sspo-arctan: {objective: {name: sspo, gate: arctan}}`."""
    data = read_yaml_mapping(path, "--variants")
    for name, patch in data.items():
        if not isinstance(patch, dict):
            raise ResearchError(
                "--variants",
                f"{path}: variant {name!r} must be a mapping of recipe sections, got {type(patch).__name__}",
            )
        if "," in str(name) or not str(name).strip():
            raise ResearchError("--variants", f"{path}: {name!r} is not a usable method name (no commas, not empty)")
    return {str(name): patch for name, patch in data.items()}
