"""The package's imports point one way: a unit imports only from its own layer or below, with no cycle.

Lazy imports inside functions count too: they are how an upward import hides.
"""

import ast
import graphlib
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "retail_vision"

# Bottom to top. A unit is a top-level module or package of retail_vision.
LAYERS = [
    {"errors", "console"},
    {"backbones", "recipe", "data", "run_directory", "classifier", "backbone_layers", "rejection"},
    {"planning", "artifacts"},
    {"training", "export", "evaluation", "prediction", "calibration"},
    {"enrollment"},
    {"cli", "__init__"},
]
LAYER_OF = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}


def _unit(path: pathlib.Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _imported_units(path: pathlib.Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("retail_vision"):
            parts = node.module.split(".")
            if len(parts) > 1:
                units.add(parts[1])
            else:  # from retail_vision import x, y
                units.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            units.update(a.name.split(".")[1] for a in node.names if a.name.startswith("retail_vision."))
    return units


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        graph.setdefault(unit, set()).update(_imported_units(path) - {unit})
    return graph


def test_every_unit_has_a_layer():
    assert set(_graph()) <= set(LAYER_OF), set(_graph()) - set(LAYER_OF)


def test_no_import_points_upward():
    upward = [(unit, imported) for unit, imports in _graph().items() for imported in imports
              if LAYER_OF[imported] > LAYER_OF[unit]]
    assert not upward


def test_no_import_cycle_between_units():
    graphlib.TopologicalSorter(_graph()).prepare()  # raises CycleError on a cycle
