"""The package's layers, read from its imports: no circle, and the domain never looks plugins up by name.

The data flows ONNX -> legalised graph -> torch -> crossbar -> evaluation/attack/training -> report/export,
and the import graph follows it: ``cimguard.onnx`` and ``cimguard.sim`` (the domain) know nothing of the
plugin manager, ``cimguard.factories`` turns names into objects, ``cimguard.api`` runs the measurements
and ``cimguard.cli`` parses command lines.  Every import counts, also those inside functions (a lazy
import hides a circle, it does not remove it); only ``if TYPE_CHECKING:`` blocks are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cimguard

PACKAGE_DIR = Path(cimguard.__file__).parent

#: Module prefixes of the domain: they take objects, never names to look up.
DOMAIN = ("cimguard.onnx", "cimguard.sim")
#: What the domain must never reach, directly or through another module.
ABOVE_THE_DOMAIN = ("cimguard.plugins", "cimguard.factories", "cimguard.api", "cimguard.compare", "cimguard.cli",
                    "cimguard.plugin_api", "cimguard.provenance", "cimguard.plot")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(path: Path) -> set[str]:
    """The cimguard modules ``path`` imports (``from cimguard.x import y``: ``cimguard.x.y`` when that is a
    module, else ``cimguard.x``)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("cimguard"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cimguard"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {name for name in found if name in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(GRAPH[start])
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(GRAPH[name])
    return seen


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        on_stack.add(name)
        for target in GRAPH[name]:
            if target not in index:
                connect(target)
                low[name] = min(low[name], low[target])
            elif target in on_stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for name in GRAPH:
        if name not in index:
            connect(name)
    return components


def test_the_walk_sees_the_package():
    # Guards the test itself: it must find the layers and the imports between them.
    assert {"cimguard.onnx.model", "cimguard.sim.crossbar", "cimguard.factories", "cimguard.cli.attack"} <= set(MODULES)
    assert "cimguard.sim.device" in GRAPH["cimguard.sim.crossbar"]
    assert "cimguard.plugins" in GRAPH["cimguard.factories"]


def test_module_graph_has_no_circle():
    assert _cycles() == []


@pytest.mark.parametrize("module", sorted(name for name in MODULES if name.startswith(DOMAIN)))
def test_domain_module_never_reaches_the_plugin_manager(module):
    reached = sorted(name for name in _reachable(module) if name.startswith(ABOVE_THE_DOMAIN))
    assert reached == [], f"{module} imports {reached}"


@pytest.mark.parametrize("module", sorted(name for name in MODULES if name.startswith("cimguard.onnx")))
def test_onnx_layer_knows_nothing_of_the_simulation(module):
    assert not any(name.startswith("cimguard.sim") for name in _reachable(module))


def test_only_the_factories_and_the_commands_import_the_plugin_manager():
    importers = sorted(name for name, targets in GRAPH.items() if "cimguard.plugins" in targets)
    assert importers == ["cimguard.cli", "cimguard.cli.devices", "cimguard.cli.group", "cimguard.cli.plugins",
                         "cimguard.factories"]


def test_the_api_does_not_know_the_command_line():
    for module in ("cimguard.api", "cimguard.compare", "cimguard.factories"):
        assert not any(name.startswith("cimguard.cli") for name in _reachable(module)), module


def test_solve_holds_only_the_contract_and_the_core_check():
    tree = ast.parse(MODULES["cimguard.sim.solve"].read_text())
    defined = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert defined == {"AttackProblem", "WorstCase", "SolverConfig", "Tracker", "Solver", "is_finite", "verified",
                       "BudgetSpent", "anytime_curve"}  # the budget in passes is part of the contract


def test_every_subpackage_is_installed():
    # pyproject lists packages by hand (the plugins folder installs as cimguard_plugins); a missing
    # subpackage would work from the source tree and break in a wheel.
    import tomllib

    root = PACKAGE_DIR.parent
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {_module_name(path) for path in PACKAGE_DIR.rglob("__init__.py")}
    plugins = {".".join(("cimguard_plugins", *path.parent.relative_to(root / "plugins").parts))
               for path in (root / "plugins").rglob("__init__.py")}
    assert "cimguard.sim" in packages and "cimguard_plugins.solvers" in plugins
    assert packages | plugins <= listed
