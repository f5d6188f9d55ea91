"""The package's shape: its import graph has no circles, the CLI stays free of maths.

Every import counts: module level, under `if TYPE_CHECKING:` and inside functions, since a
function-level import only hides a circle until the function runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "sspo_cli"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imported_modules(path: Path, importer: str, modules: set[str]) -> set[str]:
    """The package's modules that import statements anywhere in the file run.

    `from a import b` names the module a.b where that is one, else a; relative imports are resolved.
    Importing a.b.c also runs the packages a and a.b, except those the importer is itself inside
    (they are already being imported when it runs).
    """
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            named.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = from_module(node, importer, path)
            for alias in node.names:
                named.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    own_packages = {importer.rsplit(".", depth)[0] for depth in range(importer.count(".") + 1)}
    found = set()
    for name in named:
        parts = name.split(".")
        found.update(".".join(parts[:size]) for size in range(1, len(parts) + 1))
    return {name for name in found if name in modules and name not in own_packages}


def from_module(node: ast.ImportFrom, importer: str, path: Path) -> str:
    """The module `from X import ...` names, relative imports resolved."""
    base = node.module or ""
    if node.level:
        parts = importer.split(".")
        anchor = parts[: len(parts) - node.level + (path.name == "__init__.py")]
        base = ".".join([*anchor, base] if base else anchor)
    return base


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules importing it runs."""
    modules = package_modules()
    return {name: imported_modules(path, name, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_import_graph_has_no_circles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_function_level_and_type_checking_imports_count(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sspo_cli.recipe import Recipe\n"
        "def f():\n    from sspo_cli.run import state\n    import sspo_cli.models.kv_cache\n"
    )
    found = imported_modules(source, "sspo_cli.x", set(package_modules()))
    assert found == {
        "sspo_cli.recipe",
        "sspo_cli.run",
        "sspo_cli.run.state",
        "sspo_cli.models",
        "sspo_cli.models.kv_cache",
    }


# --------------------------------------------------------------------------- imports at the top


Imports = list[ast.Import | ast.ImportFrom]


def top_level_imports(tree: ast.Module) -> Imports:
    """The imports a module runs when it is imported: its body's, including those under a top-level
    `try` or `if`, but not under `if TYPE_CHECKING:` (they do not exist at run time)."""
    found: Imports = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                if ast.unparse(node.test) not in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                    visit(block)
            elif isinstance(node, ast.With):
                visit(node.body)

    visit(tree.body)
    return found


def function_level_imports(tree: ast.Module) -> Imports:
    """The imports inside functions and methods, at any depth."""
    found: Imports = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(tree, False)
    return found


def redundant_function_imports(path: Path, importer: str, modules: set[str]) -> list[str]:
    """`line: statement` for each function-level import of a module the file already imports at
    its top: the name is there already (or belongs in the top-level import beside the others)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    at_top: set[str] = set()
    for node in top_level_imports(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")  # `import a.b` imports a and a.b
                at_top.update(".".join(parts[:size]) for size in range(1, len(parts) + 1))
        else:
            base = from_module(node, importer, path)
            at_top.add(base)
            at_top.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules)
    offenders = []
    for node in function_level_imports(tree):
        if isinstance(node, ast.Import):
            named = {alias.name for alias in node.names}
        else:
            named = {from_module(node, importer, path)}
        if named & at_top:
            offenders.append(f"{node.lineno}: {ast.unparse(node)}")
    return offenders


def test_no_function_re_imports_a_module_the_file_imports_at_the_top() -> None:
    """Lazy imports are for the heavy libraries (torch, transformers, mlflow, ...); a module already
    imported at the top needs no second import inside a function."""
    modules = package_modules()
    offenders = [
        f"{path.relative_to(ROOT.parent)}:{line}"
        for name, path in modules.items()
        for line in redundant_function_imports(path, name, set(modules))
    ]
    assert not offenders, "function-level imports of modules imported at the top:\n" + "\n".join(offenders)


def test_the_re_import_finder_ignores_type_checking_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import os\nfrom typing import TYPE_CHECKING\nfrom sspo_cli.run import folder\n"
        "if TYPE_CHECKING:\n    from sspo_cli.recipe import Recipe\n"
        "def f():\n    import os\n    import json\n    from sspo_cli.recipe import Recipe\n"
        "class C:\n    def g(self):\n        from sspo_cli.run.folder import CHECKPOINTS\n"
    )
    found = redundant_function_imports(source, "sspo_cli.m", set(package_modules()))
    assert found == ["7: import os", "12: from sspo_cli.run.folder import CHECKPOINTS"]


# --------------------------------------------------------------------------- layers


def imports_of(prefixes: tuple[str, ...]) -> dict[str, set[str]]:
    return {name: targets for name, targets in import_graph().items() if name.startswith(prefixes)}


def in_folder(module: str, folders: tuple[str, ...]) -> bool:
    """Whether `module` is one of `folders` (dotted, below the package) or inside one of them."""
    return any(module == f"{PACKAGE}.{folder}" or module.startswith(f"{PACKAGE}.{folder}.") for folder in folders)


# The layers, bottom to top, as folders (and the few top-level modules). Data flows upwards: recipe ->
# task/model -> rollout -> objective -> engines -> run records -> research -> command lines. A module
# may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "signals"),
    ("objectives", "rewards"),
    ("tasks",),
    ("recipe",),
    ("models",),
    ("rollout",),
    ("run",),
    ("engines",),
    ("research",),
    ("cli",),
]
# Allowed imports of a layer above, each with its reason.
EXCEPTIONS = {
    # The recipe holds every section's config, and the TRL engine's section lives with that engine
    # (as tasks/config.py and objectives/config.py do); options.py imports nothing of ours.
    ("sspo_cli.recipe", "sspo_cli.engines"),
    ("sspo_cli.recipe", "sspo_cli.engines.trl"),
    ("sspo_cli.recipe", "sspo_cli.engines.trl.options"),
}


def layer_of(module: str) -> int | None:
    for index, folders in enumerate(LAYERS):
        if in_folder(module, folders):
            return index
    return None


def test_every_module_is_in_a_layer_or_an_integration() -> None:
    outside = [
        m for m in package_modules() if m != PACKAGE and layer_of(m) is None and not in_folder(m, ("integrations",))
    ]
    assert outside == []


def test_no_layer_imports_a_layer_above_it() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if (here := layer_of(module)) is not None
        and (there := layer_of(target)) is not None
        and there > here
        and (module, target) not in EXCEPTIONS
    ]
    assert upward == []


# Inside research/, the same rule over its sub-layers, bottom to top: the statistics (pure: records in,
# numbers out), the plans (recipes of the runs to train), their execution (reuse or train, MLflow, records
# read back), the reporting (tables, figures, files), and the workflows at research/'s top (workflow.py,
# compare, sweep, study, search). research/__init__.py holds ResearchError only, for every layer to raise.
RESEARCH = "research"
RESEARCH_LAYERS: list[str] = ["research.analysis", "research.planning", "research.execution", "research.reporting"]


def research_layer_of(module: str) -> int | None:
    """The module's sub-layer of research (len(RESEARCH_LAYERS): the workflows), None outside research."""
    if module == f"{PACKAGE}.{RESEARCH}" or not in_folder(module, (RESEARCH,)):
        return None
    for index, folder in enumerate(RESEARCH_LAYERS):
        if in_folder(module, (folder,)):
            return index
    return len(RESEARCH_LAYERS)


def test_no_research_layer_imports_a_layer_above_it() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if (here := research_layer_of(module)) is not None
        and (there := research_layer_of(target)) is not None
        and there > here
    ]
    assert upward == []


def test_the_research_statistics_are_pure() -> None:
    """research/analysis imports only itself and ResearchError: no run records on disk, no MLflow, no model."""
    for module, targets in imports_of((f"{PACKAGE}.research.analysis",)).items():
        assert all(t == f"{PACKAGE}.{RESEARCH}" or in_folder(t, ("research.analysis",)) for t in targets), module


def test_the_research_root_holds_its_error_only() -> None:
    assert imports_of((f"{PACKAGE}.{RESEARCH}",))[f"{PACKAGE}.{RESEARCH}"] == {f"{PACKAGE}.errors"}


def test_the_research_layer_checks_place_modules() -> None:
    assert research_layer_of("sspo_cli.research") is None and research_layer_of("sspo_cli.run.records") is None
    assert research_layer_of("sspo_cli.research.analysis.stats") == 0
    assert research_layer_of("sspo_cli.research.execution.execute") == 2
    assert research_layer_of("sspo_cli.research.compare") == len(RESEARCH_LAYERS)


NATIVE, TRL, DISPATCH = "engines.native", "engines.trl", "engines.dispatch"


def test_each_engine_stands_on_the_run_layer_not_on_the_other_engine() -> None:
    for module, targets in import_graph().items():
        if in_folder(module, (TRL,)):
            assert not [t for t in targets if in_folder(t, (NATIVE,))], module
        if in_folder(module, (NATIVE,)):
            assert not [t for t in targets if in_folder(t, (TRL, DISPATCH))], module


def test_only_the_dispatch_chooses_the_engine() -> None:
    """Above the engines, only `engines.dispatch` imports an engine's modules; research and the command
    lines reach an engine through it (the recipe's TRL config section aside, see EXCEPTIONS)."""
    importers = {
        name
        for name, targets in import_graph().items()
        if not in_folder(name, ("engines",))
        and any(in_folder(t, (NATIVE, TRL)) and (name, t) not in EXCEPTIONS for t in targets)
    }
    assert importers == set()


def test_the_command_lines_know_nothing_of_maths_or_engines() -> None:
    for module, targets in imports_of((f"{PACKAGE}.cli",)).items():
        assert not [t for t in targets if in_folder(t, ("objectives", NATIVE, TRL))], module


def test_the_maths_knows_nothing_of_the_rest() -> None:
    for module, targets in imports_of(("sspo_cli.objectives",)).items():
        assert all(in_folder(t, ("objectives",)) for t in targets), module


def test_the_integrations_stand_on_the_maths_alone() -> None:
    """The framework plug-ins (verl) see only the objectives, and nothing of ours imports them: the
    framework does."""
    for module, targets in imports_of(("sspo_cli.integrations",)).items():
        assert all(in_folder(t, ("objectives", "integrations")) for t in targets), module
    for module, targets in import_graph().items():
        if not in_folder(module, ("integrations",)):
            assert not [t for t in targets if in_folder(t, ("integrations",))], module


def test_the_rewards_know_nothing_of_the_rest() -> None:
    """Rewards are text against text: tasks and the recipe stand on them, never the other way round."""
    for module, targets in imports_of(("sspo_cli.rewards",)).items():
        assert all(in_folder(t, ("rewards",)) for t in targets), module


def test_the_layer_checks_catch_an_upward_import() -> None:
    assert layer_of("sspo_cli.run.records") < layer_of("sspo_cli.engines.native.loop")
    assert layer_of("sspo_cli.run") == layer_of("sspo_cli.run.state")
    assert not in_folder("sspo_cli.runs", ("run",)) and in_folder("sspo_cli.run.folder", ("run",))


def test_the_engine_table_lists_the_recipes_engines() -> None:
    from typing import get_args

    from sspo_cli.engines.dispatch import ENGINES
    from sspo_cli.recipe import Recipe

    assert set(ENGINES) == set(get_args(Recipe.model_fields["engine"].annotation))


def test_the_command_line_starts_without_the_heavy_libraries() -> None:
    """`sspo --help` imports the CLI modules only: no pydantic, torch, transformers, mlflow or Rich."""
    import subprocess
    import sys

    heavy = ("pydantic", "torch", "transformers", "mlflow", "rich", "sspo_cli.recipe", "sspo_cli.objectives")
    code = f"import sys, sspo_cli.cli.main; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_every_import_of_the_package_names_something_that_exists() -> None:
    """Function-level imports run only when their function does: a module renamed or a name moved
    (as in a merge) must fail here, not in the one command that reaches that line."""
    import importlib.util

    missing = []
    for path in package_modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith(PACKAGE)):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name) and importlib.util.find_spec(f"{node.module}.{alias.name}") is None:
                    missing.append(f"{path.name}: from {node.module} import {alias.name}")
    assert missing == []
