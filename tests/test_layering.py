"""The layout the README states, checked on the code: imports go one way, and train/ and deploy/ know no task.

    cli -> api -> search -> tasks -> classify, detect -> train, deploy -> run, sources -> cube, profile -> models

Each unit is a package (rubik/train/) or a top-level module (rubik/run.py); a unit may import units of
its own layer or below, never above, and the units form no import loop.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rubik"

# Lowest layer first. Units of one layer may import each other (without loops).
LAYERS = [
    {"errors", "files", "timing", "progress", "digits", "image_folder", "__init__"},
    {"models"},
    {"cube", "profile"},
    {"sources", "run"},
    {"train", "deploy"},
    {"classify", "detect"},
    {"tasks"},
    {"search"},
    {"api", "demo"},
    {"cli"},
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
TASKS = {"classify", "detect", "tasks"}  # what the engine (train/) and the export core (deploy/) must not import


def unit_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path) -> set[str]:
    """The rubik units a module imports (function-level imports included: they are dependencies too)."""
    tree = ast.parse(path.read_text(), str(path))
    package = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]  # ("rubik", "train")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join((*base, node.module)) if node.module else ".".join(base)
            else:
                mod = node.module or ""
            # `from rubik import api` names the unit in the alias, `from rubik.train import x` in the module
            names = [f"{mod}.{a.name}" for a in node.names] if mod.count(".") == 0 else [mod]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "rubik" and len(parts) > 1:
                found.add(parts[1])
    return found


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        unit = unit_of(path)
        edges.setdefault(unit, set()).update(u for u in imports(path) if u != unit)
    return edges


def test_every_unit_has_a_layer():
    missing = sorted(u for u in graph() if u not in LAYER)
    assert not missing, f"give these a layer in LAYERS (and the README's layout): {missing}"


def test_imports_go_down_only():
    upward = sorted(f"{u} -> {v}" for u, vs in graph().items() for v in vs
                    if u in LAYER and v in LAYER and LAYER[v] > LAYER[u] and u != "__init__")
    assert not upward, f"imports against the stated direction: {upward}"


def test_train_and_deploy_know_no_task():
    edges = graph()
    for unit in ("train", "deploy"):
        assert not edges.get(unit, set()) & TASKS, f"{unit}/ imports a task: {edges[unit] & TASKS}"


def test_no_import_loops_between_units():
    edges = graph()
    seen: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(u: str, trail: list[str]) -> None:
        seen[u] = 1
        for v in sorted(edges.get(u, ())):
            if v == "__init__":
                continue
            if seen.get(v) == 1:
                pytest.fail(f"import loop: {' -> '.join(trail[trail.index(v):] + [v]) if v in trail else v}")
            if v not in seen:
                visit(v, trail + [v])
        seen[u] = 2

    for u in sorted(edges):
        if u not in seen:
            visit(u, [u])


def test_the_checker_sees_relative_and_function_level_imports(tmp_path, monkeypatch):
    """The rules would pass vacuously if the parser missed imports: an upward import in a function is caught."""
    path = tmp_path / "rubik" / "train" / "probe.py"
    path.parent.mkdir(parents=True)
    path.write_text("def f():\n    from ..detect import model\n    from rubik import api\n    import rubik.cli\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path / "rubik")
    assert imports(path) == {"detect", "api", "cli"}
    assert unit_of(path) == "train"
