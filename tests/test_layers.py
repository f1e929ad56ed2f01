"""The import-layer contract: every import of the package runs down the floors, and none runs in a circle.

Floors, top to bottom (a module may import its own floor or any floor below it):

    clients   cli, demo, tui
    wings     judge, export, models, bench   (independent: no wing imports another)
    train     mlxsft.train
    floor     model, rundir, store, hub, generate, token_rows, untrained_tokens, hosts, launch, devmodel
    data      mlxsft.data
    base      config, events, errors, safeio, typed_yaml, blas, kernel_cache

Every import statement counts, including those inside functions: a function-local import
that only hides a circle from Python still is one. The check reads the source (AST), so it
needs no third-party tool and imports nothing.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FLOORS = {
    "base": [
        "mlxsft",
        "mlxsft.config",
        "mlxsft.events",
        "mlxsft.errors",
        "mlxsft.safeio",
        "mlxsft.typed_yaml",
        "mlxsft.blas",
        "mlxsft.kernel_cache",
    ],
    "data": ["mlxsft.data"],
    "floor": [
        "mlxsft.model",
        "mlxsft.rundir",
        "mlxsft.runlock",
        "mlxsft.store",
        "mlxsft.hub",
        "mlxsft.generate",
        "mlxsft.token_rows",
        "mlxsft.untrained_tokens",
        "mlxsft.hosts",
        "mlxsft.launch",
        "mlxsft.devmodel",
    ],
    "train": ["mlxsft.train"],
    "wings": ["mlxsft.judge", "mlxsft.export", "mlxsft.models", "mlxsft.bench"],
    "clients": ["mlxsft.cli", "mlxsft.demo", "mlxsft.tui"],
}
ORDER = list(FLOORS)
WINGS = FLOORS["wings"]

# Circles inside export/ that the export part of issue 13 removes (one exporter pipeline,
# the core split into source/staging/parity). Each entry must still be a real circle: the
# test fails on a stale entry, so this list can only shrink, and must end empty.
KNOWN_EXPORT_CIRCLES: set[frozenset[str]] = set()


def module_files() -> dict[str, Path]:
    """Every module of the package (tui/ installs as mlxsft.tui), by dotted name."""
    found = {}
    for top, prefix in ((ROOT / "mlxsft", ["mlxsft"]), (ROOT / "tui", ["mlxsft", "tui"])):
        for dirpath, dirnames, filenames in os.walk(top):  # followlinks=False: a mlxsft/tui link is not walked
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                if not name.endswith(".py"):
                    continue
                parts = prefix + list(Path(dirpath).relative_to(top).parts) + [name[:-3]]
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = Path(dirpath) / name
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports anywhere in its source (relative imports resolved)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module, else a name of pkg
                targets.add(f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module)
    return {_owner(t, known) for t in targets if t.split(".")[0] == "mlxsft"} - {None, name}


def _owner(target: str, known: set[str]) -> str | None:
    """The module a dotted import target lands in (`mlxsft.rundir.RunDir` -> `mlxsft.rundir`)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def floor_of(module: str) -> tuple[str, str]:
    """(floor, unit): the longest prefix in FLOORS decides; the unit is that prefix."""
    best = None
    for floor, units in FLOORS.items():
        for unit in units:
            inside = module == unit or (unit != "mlxsft" and module.startswith(unit + "."))  # the root: itself only
            if inside and (best is None or len(unit) > len(best[1])):
                best = (floor, unit)
    if best is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS in tests/test_layers.py")
    return best


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def test_every_module_is_on_a_floor(graph):
    for module in graph:
        floor_of(module)  # raises with the module's name
    with pytest.raises(AssertionError, match="on no floor"):
        floor_of("mlxsft.brand_new_module")  # a new top-level module must be placed on purpose


def test_no_import_runs_up_a_floor_or_across_wings(graph):
    wrong = []
    for module, targets in sorted(graph.items()):
        floor, unit = floor_of(module)
        for target in sorted(targets):
            target_floor, target_unit = floor_of(target)
            if ORDER.index(target_floor) > ORDER.index(floor):
                wrong.append(f"{module} ({floor}) imports {target} ({target_floor})")
            elif floor == target_floor == "wings" and target_unit != unit:
                wrong.append(f"{module} ({unit}) imports another wing: {target}")
    assert not wrong, "imports that run upward:\n" + "\n".join(wrong)


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_no_import_circles(graph):
    found = set(circles(graph))
    new = [sorted(c) for c in found - KNOWN_EXPORT_CIRCLES]
    assert not new, "modules that import each other in a circle:\n" + "\n".join(", ".join(c) for c in new)
    stale = [sorted(c) for c in KNOWN_EXPORT_CIRCLES - found]
    assert not stale, f"KNOWN_EXPORT_CIRCLES lists circles that are gone; remove them: {stale}"


def test_the_check_sees_an_upward_import_and_a_circle():
    """The contract catches what it claims to: an upward import and a two-module circle."""
    fake = {
        "mlxsft.config": {"mlxsft.train.loop"},
        "mlxsft.train.loop": {"mlxsft.config"},
        "mlxsft.judge.verdict": {"mlxsft.export.peft"},
        "mlxsft.export.peft": set(),
    }
    assert frozenset({"mlxsft.config", "mlxsft.train.loop"}) in circles(fake)
    assert ORDER.index(floor_of("mlxsft.train.loop")[0]) > ORDER.index(floor_of("mlxsft.config")[0])
    assert floor_of("mlxsft.judge.verdict")[1] != floor_of("mlxsft.export.peft")[1]


def test_imports_are_read_from_function_bodies_and_relative_forms(tmp_path):
    source = tmp_path / "loop.py"
    source.write_text("from ..config import Recipe\n\ndef f():\n    from ..judge import verdict\n")
    known = {"mlxsft.config", "mlxsft.judge", "mlxsft.judge.verdict", "mlxsft.train.loop"}
    assert imports_of("mlxsft.train.loop", source, known) == {"mlxsft.config", "mlxsft.judge.verdict"}
