"""The floors of legolas_ml hold: no upward import, no circle, and the ground floor imports no stage.

legolas_ml/layers.py names the floors; this test reads the code's own imports (ast, nothing
imported) and fails naming every offending import.
"""

from __future__ import annotations

from pathlib import Path

from legolas_ml.layers import LAYERS, floor_of, import_graph, package_cycles, upward_imports

ROOT = Path(__file__).resolve().parents[1]


def test_no_module_imports_a_floor_above_its_own():
    upward = upward_imports(import_graph(ROOT / "legolas_ml"))
    assert not upward, "upward imports (legolas_ml/layers.py names the floors):\n" + "\n".join(f"{a} -> {b}: {why}" for a, b, why in upward)


def test_no_circle_of_modules():
    cycles = package_cycles(import_graph(ROOT / "legolas_ml"))
    assert not cycles, f"modules that import each other in a circle: {cycles}"


def test_every_room_of_legolas_ml_is_on_a_floor():
    rooms = {p.name for p in (ROOT / "legolas_ml").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    rooms |= {p.stem for p in (ROOT / "legolas_ml").glob("*.py") if p.stem != "__init__"}
    unplaced = sorted(room for room in rooms if floor_of(f"legolas_ml.{room}") is None)
    assert not unplaced, f"rooms on no floor of legolas_ml/layers.py LAYERS {LAYERS}: {unplaced}"


def test_the_contract_fails_on_an_upward_import(tmp_path):
    """The check itself can fail: a ground-floor module that imports a stage is caught, and so is a circle."""
    package = tmp_path / "legolas_ml"
    for room in ("core", "training"):
        (package / room).mkdir(parents=True)
        (package / room / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "core" / "ids.py").write_text("def f():\n    from legolas_ml.training import config\n")
    (package / "training" / "config.py").write_text("from legolas_ml.core import ids\n")
    (package / "training" / "a.py").write_text("from . import b\n")
    (package / "training" / "b.py").write_text("from legolas_ml.training.a import x\n")
    graph = import_graph(package)
    assert upward_imports(graph) == [("legolas_ml.core.ids", "legolas_ml.training.config", "floor 0 imports floor 2, inside a function")]
    assert ["legolas_ml.training.a", "legolas_ml.training.b"] in package_cycles(graph)
