"""Layers point one way: constants <- storage, quiet <- data <- models <- train / evaluate / export
(siblings that never import each other) <- modes <- main. Read from every module's imports (AST), so a
wrong-way import anywhere in the package, even inside a function, fails here."""

import ast

from helpers import ROOT


LAYERS = {"constants": 0, "config": 0.5, "storage": 0.5, "quiet": 0.5, "data": 1, "models": 2, "train": 3,
          "evaluate": 3, "export": 3, "stages": 3.5, "modes": 4, "main": 5}


def imported_parts(path):
    """The tfcxr top-level parts (data, models, io, ...) a module imports."""
    parts = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            module = node.module
            names = [f"{module}.{alias.name}" for alias in node.names] if module == "tfcxr" else [module]
        parts |= {name.split(".")[1] for name in names if name.startswith("tfcxr.")}
    return parts


def test_layers_point_one_way():
    package = ROOT / "tfcxr"
    wrong = []
    for path in sorted(package.rglob("*.py")):
        part = path.relative_to(package).parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        for imported in imported_parts(path) - {part}:
            if LAYERS[imported] >= LAYERS[part]:
                wrong.append(f"{path.relative_to(ROOT)} imports tfcxr.{imported}")
    assert not wrong, "\n".join(wrong)
