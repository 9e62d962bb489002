"""The import structure of legolas_ml: upward imports across its layers, package circles, longest functions.

    python bench/import_graph.py            # the numbers
    python bench/import_graph.py --list     # and every upward import, circle and long function

The layers are ``legolas_ml.layers.LAYERS`` (tests/test_import_contract.py enforces them); this script
only reports, so the before/after of a restructuring is one command anyone can run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from legolas_ml.layers import import_graph, longest_functions, package_cycles, upward_imports  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list every upward import, circle and the 10 longest functions")
    args = parser.parse_args()
    graph = import_graph(ROOT / "legolas_ml")
    upward, cycles, longest = upward_imports(graph), package_cycles(graph), longest_functions([ROOT / "legolas_ml", ROOT / "legolas_assets"])
    print(f"modules {len(graph)}, imports {sum(len(v) for v in graph.values())}")
    print(f"upward imports {len(upward)}, package circles {len(cycles)}")
    print(f"longest function {longest[0][0]} lines ({longest[0][1]}); functions over 80 lines: {sum(1 for n, _ in longest if n > 80)}")
    if args.list:
        for importer, imported, why in upward:
            print(f"  up: {importer} -> {imported} ({why})")
        for cycle in cycles:
            print(f"  circle: {' -> '.join(cycle)}")
        for n, where in longest[:10]:
            print(f"  {n:4d} lines  {where}")


if __name__ == "__main__":
    main()
