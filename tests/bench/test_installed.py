"""`pyloto bench` runs from a plain install: the package never reaches into the checkout."""

from __future__ import annotations

import ast
from pathlib import Path

import pyloto_cli

CHECKOUT_ONLY = ("benchmarks", "tests")


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_no_module_of_the_package_imports_the_checkouts_benchmarks_or_tests() -> None:
    package = Path(pyloto_cli.__file__).parent
    offending = {
        str(path.relative_to(package)): sorted(
            name for name in imported_modules(path) if name.split(".")[0] in CHECKOUT_ONLY
        )
        for path in package.rglob("*.py")
    }
    assert {path: names for path, names in offending.items() if names} == {}
    assert "bench/load.py" in offending  # the walk saw the load generator
