"""The layout: no two modules of pass_hub or training import each other (directly or round a circle), training's
methods use the shared engine and never each other, the engine imports no method, the old pass_hub module paths
still name the moved modules, and pyproject lists every package."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import tomllib
from script_runs import ROOT
from setuptools import find_namespace_packages

import pass_hub

PACKAGES = ("pass_hub", "training")
METHODS = ("pretraining", "finetuning", "cluster_contrast")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere (functions included), outside ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    checking = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                for node in ast.walk(block)}
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in checking:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in modules else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    paths = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def test_no_module_imports_itself_round_a_circle():
    graph = import_graph()
    # A package's __init__ re-exports its modules; a module importing its own package's __init__ is not a circle.
    edges = {module: {target for target in targets if not module.startswith(target + ".")}
             for module, targets in graph.items()}
    circles = []
    for start in edges:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for target in edges.get(node, ()):
                if target == start:
                    circles.append(" -> ".join([*trail, start]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*trail, target]))
    assert not circles, "\n".join(sorted(set(circles)))


def test_training_methods_use_the_engine_and_never_each_other():
    graph = import_graph()
    for module, targets in graph.items():
        kind = module.split(".")[1] if module.count(".") >= 1 else ""
        for target in targets:
            target_kind = target.split(".")[1] if target.count(".") >= 1 else ""
            if kind == "engine":
                assert target_kind not in METHODS, f"{module} (engine) imports the method module {target}"
            if kind in METHODS and target_kind in METHODS:
                assert kind == target_kind, f"{module} imports {target}, another method's"


def test_every_relative_import_names_a_module_of_the_project():
    paths = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    modules = {module_name(path) for path in paths}
    unresolved = []
    for path in paths:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                anchor = package.split(".")
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([node.module] if node.module else []))
                if base not in modules and not all(f"{base}.{alias.name}" in modules for alias in node.names):
                    unresolved.append(f"{path.relative_to(ROOT)}:{node.lineno} from {'.' * node.level}"
                                      f"{node.module or ''}")
    assert not unresolved, "\n".join(unresolved)


@pytest.mark.parametrize("old", sorted(pass_hub.MOVED_MODULES))
def test_old_module_paths_name_the_moved_modules(old):
    moved = importlib.import_module(f"pass_hub.{pass_hub.MOVED_MODULES[old]}")
    assert importlib.import_module(f"pass_hub.{old}") is moved is getattr(pass_hub, old)


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(find_namespace_packages(where=str(ROOT), include=[f"{package}*" for package in PACKAGES]))
    found = {package for package in found if "__pycache__" not in package}
    assert listed - {"pass_hub.model_cards"} == found
