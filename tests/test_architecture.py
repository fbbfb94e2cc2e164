"""Layers point one way: constants <- storage, quiet <- data <- models <- train / evaluate / export
(siblings that never import each other) <- modes <- main. Read from every module's imports (AST), absolute
and relative, so a wrong-way import anywhere in the package, even inside a function, fails here."""

import ast

from helpers import ROOT


LAYERS = {"constants": 0, "config": 0.5, "storage": 0.5, "quiet": 0.5, "data": 1, "models": 2, "train": 3,
          "evaluate": 3, "export": 3, "stages": 3.5, "modes": 4, "main": 5}


def absolute_module(node, path):
    """The module an ImportFrom in file `path` reads from: `from ..models import x` in tfcxr/train/loop.py
    is tfcxr.models (a package's __init__.py and its modules share the folder as their package)."""
    if not node.level:
        return node.module
    package = path.relative_to(ROOT).parent.parts  # ("tfcxr", "train")
    base = package[:len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def imported_parts(source, path):
    """The tfcxr top-level parts (data, models, storage, ...) the module `path` imports, absolutely or relatively."""
    parts = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = absolute_module(node, path)
            names = [f"{module}.{alias.name}" for alias in node.names] if module == "tfcxr" else [module]
        else:
            continue
        parts |= {name.split(".")[1] for name in names if name.startswith("tfcxr.")}
    return parts


def wrong_imports(path, source):
    """'<file> imports tfcxr.<part>' for each import of its own layer's siblings or of a layer above."""
    part = path.relative_to(ROOT / "tfcxr").parts[0].removesuffix(".py")
    if part == "__init__":
        return []
    wrong = []
    for imported in sorted(imported_parts(source, path) - {part}):
        if imported not in LAYERS or part not in LAYERS:
            wrong.append(f"{path.relative_to(ROOT)} imports tfcxr.{imported}: give both parts a layer in LAYERS")
        elif LAYERS[imported] >= LAYERS[part]:
            wrong.append(f"{path.relative_to(ROOT)} imports tfcxr.{imported}")
    return wrong


def test_layers_point_one_way():
    wrong = [line for path in sorted((ROOT / "tfcxr").rglob("*.py")) for line in wrong_imports(path, path.read_text())]
    assert not wrong, "\n".join(wrong)


def test_relative_and_absolute_imports_are_both_read():
    loop, data_init = ROOT / "tfcxr" / "train" / "loop.py", ROOT / "tfcxr" / "data" / "__init__.py"
    cases = [
        (loop, "from ..evaluate import metrics", ["tfcxr/train/loop.py imports tfcxr.evaluate"]),  # a sibling
        (loop, "def run():\n    from ..modes import train", ["tfcxr/train/loop.py imports tfcxr.modes"]),  # upward
        (loop, "from .. import main, constants", ["tfcxr/train/loop.py imports tfcxr.main"]),
        (loop, "from ...elsewhere import x", []),  # above the package: not tfcxr's
        (loop, "from . import callbacks\nfrom .callbacks import x\nfrom ..models import layers", []),  # own, lower
        (data_init, "from ..models import layers", ["tfcxr/data/__init__.py imports tfcxr.models"]),
        (data_init, "from . import pipeline\nfrom .. import constants", []),
        (loop, "import tfcxr.export.saved_model\nfrom tfcxr import stages",
         ["tfcxr/train/loop.py imports tfcxr.export", "tfcxr/train/loop.py imports tfcxr.stages"]),
    ]
    for path, source, expected in cases:
        assert wrong_imports(path, source) == expected, source
