"""Recipe files as the workflow reads them: raw YAML data (methods and grid points patch it before
validation), with an optional `sweep:` section split off, and method variants files."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from sspo_cli.recipe import RecipeError
from sspo_cli.research import ResearchError

SWEEP_SECTION = "sweep"


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; `what` is "recipe" or the option that named the file."""
    path = Path(path)
    if not path.is_file():
        raise _bad_file(what, path, "file not found" if not path.exists() else "not a file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise _bad_file(what, path, f"malformed YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise _bad_file(what, path, "the top level must be a mapping")
    return data


def _bad_file(what: str, path: Path, message: str) -> ValueError:
    if what == "recipe":
        return RecipeError(str(path), [message])
    return ResearchError(what, f"{path}: {message}")


def read_recipe_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(recipe data without the sweep section, the sweep section or None)."""
    data = read_yaml_mapping(path, "recipe")
    sweep = data.pop(SWEEP_SECTION, None)
    if sweep is not None and not isinstance(sweep, dict):
        raise RecipeError(str(path), [f"{SWEEP_SECTION}: must be a mapping (grid, seeds, metric)"])
    return data, sweep


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
            raise ResearchError("--variants", f"{path}: variant {name!r} must be a mapping of recipe sections, got {type(patch).__name__}")
        if "," in str(name) or not str(name).strip():
            raise ResearchError("--variants", f"{path}: {name!r} is not a usable method name (no commas, not empty)")
    return {str(name): patch for name, patch in data.items()}
