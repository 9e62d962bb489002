"""The floors of ``legolas_ml`` and the import graph they are checked against.

A module may import its own floor or any floor below it, never one above: the ground floor
(``core``: tenant identity and key names, dataset I/O, ids, timestamps, atomic writes, the review
cursor, settings) imports no stage. Within a floor, modules may import each other as long as no
circle forms. ``tests/test_import_contract.py`` fails on an upward import or a circle;
``bench/import_graph.py`` prints the numbers. Imports inside functions count (they are still
dependencies); imports under ``if TYPE_CHECKING:`` do not (they never run).

Pure ``ast``: nothing of the project is imported to read its structure.
"""

from __future__ import annotations

import ast
from pathlib import Path

#: Floors from the ground up; the packages (folders) or top-level modules on each.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("data",),
    ("training",),
    ("evaluation", "runners"),
    ("explain", "lifecycle", "review", "scoring"),
    ("cli", "tracking", "layers"),
)

#: Top-level modules that belong on a floor other than their name's: none, the ground floor is a folder.
PLACED: dict[str, str] = {}

PACKAGE = "legolas_ml"


def floor_of(module: str) -> int | None:
    """The floor of ``legolas_ml.<room>[.<module>]`` (``None`` for the package itself or an unknown room)."""
    parts = module.split(".")
    if parts[0] != PACKAGE or len(parts) < 2:
        return None
    room = PLACED.get(parts[1], parts[1])
    for n, rooms in enumerate(LAYERS):
        if room in rooms:
            return n
    return None


def _module_name(path: Path, root: Path) -> str:
    relative = path.relative_to(root.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, bool]]:
    """``(imported module, lazy)`` for every import of ``PACKAGE`` in ``tree``, relative ones resolved."""
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, lazy) for alias in child.names if alias.name.split(".")[0] == PACKAGE)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] == PACKAGE:
                    # `from legolas_ml.data import store` imports the module legolas_ml.data.store
                    found.extend((f"{target}.{alias.name}", lazy) for alias in child.names)
            visit(child, inner)

    visit(tree, False)
    return found


def import_graph(package_dir: Path) -> dict[str, dict[str, bool]]:
    """``{module: {imported module: lazy}}`` over every module of the package (imports of the package only)."""
    package_dir = Path(package_dir)
    modules = {_module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, dict[str, bool]] = {}
    for module, path in modules.items():
        edges: dict[str, bool] = {}
        for target, lazy in _imports(ast.parse(path.read_text(encoding="utf-8")), module, path.name == "__init__.py"):
            # `from pkg import name` names a module or something defined in pkg: keep the longest known module.
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != module:
                edges[target] = edges.get(target, True) and lazy
        graph[module] = edges
    return graph


def upward_imports(graph: dict[str, dict[str, bool]]) -> list[tuple[str, str, str]]:
    """``(importer, imported, why)`` for every import of a higher floor than the importer's."""
    found = []
    for importer, edges in sorted(graph.items()):
        low = floor_of(importer)
        for imported, lazy in sorted(edges.items()):
            high = floor_of(imported)
            if low is not None and high is not None and high > low:
                why = f"floor {low} imports floor {high}" + (", inside a function" if lazy else "")
                found.append((importer, imported, why))
    return found


def package_cycles(graph: dict[str, dict[str, bool]]) -> list[list[str]]:
    """Every circle of modules (strongly connected components of two or more, Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(cycles)


def longest_functions(folders: list[Path]) -> list[tuple[int, str]]:
    """``(lines, "path:function")`` of every function in ``folders``, longest first."""
    found = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    found.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(Path(folder).parent)}:{node.name}"))
    return sorted(found, reverse=True)
