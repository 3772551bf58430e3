"""Fail on code that leans on another package's internals.

A `_`-prefixed module or name is a library's implementation detail: it can change in any
release, so pyloto uses public APIs only. This check reads the source (AST, nothing is imported)
and reports, one line each (`path:line: reason`), exiting 1 when there is any finding:

- an import of another package's private module or name: `import httpx._client`,
  `from httpx._types import X`, `from openai import _models` (dunder names such as
  `__version__` and enum's sunder hooks such as `_missing_` are public, and the project's own
  packages may use their own private names);
- a class that subclasses a class imported from another package and defines a `_`-prefixed
  (non-dunder) method: a replacement of, or an addition beside, the library's internals;
- `getattr`, `setattr` or `hasattr` of a private attribute by its name, on anything but
  `self` or `cls`: reaching into another object's internals by a string.

Usage: `python scripts/check_private_imports.py [PATH ...]` (default: pyloto_cli/ benchmarks/).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATHS = ("pyloto_cli", "benchmarks")
OWN_PACKAGES = frozenset({"pyloto_cli", "benchmarks", "tests", "scripts"})


def is_private(name: str) -> bool:
    """`_x` and `__x` are private; `__x__` (a protocol) and `_x_` (enum's documented hooks,
    e.g. `_missing_`) are public."""
    if not name.startswith("_"):
        return False
    dunder = name.startswith("__") and name.endswith("__")
    sunder = len(name) > 2 and name[1] != "_" and name.endswith("_") and name[-2] != "_"
    return not (dunder or sunder)


def _is_own(module: str | None, level: int) -> bool:
    """A relative import, or one of the project's own packages."""
    return level > 0 or (module or "").split(".")[0] in OWN_PACKAGES


def _private_parts(module: str) -> list[str]:
    return [part for part in module.split(".") if is_private(part)]


def _import_findings(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if not _is_own(alias.name, 0) and _private_parts(alias.name):
                yield f"imports the private module {alias.name}"
        return
    if _is_own(node.module, node.level):
        return
    module = node.module or ""
    if _private_parts(module):
        yield f"imports from the private module {module}"
        return
    for alias in node.names:
        if is_private(alias.name):
            yield f"imports the private name {alias.name} from {module}"


def _external_names(tree: ast.Module) -> set[str]:
    """Names the module binds to something imported from another package."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not _is_own(alias.name, 0):
                    names.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and not _is_own(node.module, node.level):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def _root_name(expr: ast.expr) -> str | None:
    """`a` of `a`, `a.b.C` or `a.b.C[T]`."""
    while isinstance(expr, ast.Attribute | ast.Subscript):
        expr = expr.value
    return expr.id if isinstance(expr, ast.Name) else None


def _subclass_findings(tree: ast.Module, external: set[str]) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if not isinstance(node, ast.ClassDef):
            continue
        bases = [ast.unparse(base) for base in node.bases if _root_name(base) in external]
        if not bases:
            continue
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and is_private(item.name):
                yield (
                    item.lineno,
                    f"class {node.name} subclasses {', '.join(bases)} and defines the private "
                    f"method {item.name}",
                )


_REFLECTION = frozenset({"getattr", "setattr", "hasattr"})


def _reflection_findings(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _REFLECTION
            and len(node.args) >= 2
        ):
            continue
        target, name = node.args[0], node.args[1]
        own = isinstance(target, ast.Name) and target.id in ("self", "cls")
        if own or not isinstance(name, ast.Constant) or not isinstance(name.value, str):
            continue
        if is_private(name.value):
            yield node.lineno, f"{node.func.id} reaches the private attribute {name.value}"


def check_source(source: str, path: str) -> list[str]:
    """Every finding in one module's source, as `path:line: reason`."""
    tree = ast.parse(source, filename=path)
    found: list[tuple[int, str]] = [
        (node.lineno, reason)
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for reason in _import_findings(node)
    ]
    found.extend(_subclass_findings(tree, _external_names(tree)))
    found.extend(_reflection_findings(tree))
    return [f"{path}:{line}: {reason}" for line, reason in sorted(found)]


def python_files(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(path.rglob("*.py"))
        elif path.suffix == ".py":
            yield path


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str]) -> int:
    paths = [Path(arg) for arg in argv] or [ROOT / name for name in DEFAULT_PATHS]
    findings = [
        finding
        for file in python_files(paths)
        for finding in check_source(file.read_text(encoding="utf-8"), _shown(file))
    ]
    for finding in findings:
        print(finding)
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
