"""Print pyproject.toml's dependencies (and those of the extras named) one per line, for
`pip install -r`: the Dockerfile installs them in a layer of their own, rebuilt only when
pyproject.toml changes, not on every edit of the source."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """The project's dependencies, then each extra's, in pyproject's order."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [name for name in extras if name not in optional]
    if unknown:
        raise SystemExit(f"no such extra in {pyproject}: {', '.join(unknown)}")
    found: list[str] = list(project["dependencies"])
    for name in extras:
        found.extend(optional[name])
    return found


if __name__ == "__main__":
    pyproject, *extras = sys.argv[1:] or ["pyproject.toml"]
    sys.stdout.write("".join(f"{line}\n" for line in requirements(Path(pyproject), extras)))
