"""Input files for `enqueue` and `replay`: files, directories (sorted by name) and stdin."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pyloto_cli.tools import ToolUsageError


@dataclass(frozen=True, slots=True)
class Source:
    """One input: a file (read when needed) or bytes already read (stdin).

    `name` is stable wherever the command runs: a file given directly is named by its file
    name, a file found in a directory by its path from the directory's parent
    (`pricing/001.json`), stdin by `-`.
    """

    name: str
    path: Path | None = None
    data: bytes | None = None

    def read(self) -> bytes:
        """The file's bytes (OSError when it cannot be read)."""
        if self.data is not None:
            return self.data
        if self.path is None:
            return b""
        return self.path.read_bytes()


def _walk(directory: Path, suffixes: frozenset[str]) -> list[Source]:
    found = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    base = directory.resolve().parent
    return [Source(p.resolve().relative_to(base).as_posix(), path=p) for p in found]


def expand(
    targets: Sequence[str], suffixes: Iterable[str], stdin: BinaryIO | None = None
) -> list[Source]:
    """The sources `targets` name, in order; directories expand to their files sorted by path.

    `-` reads `stdin` once. A target that does not exist is a ToolUsageError.
    """
    wanted = frozenset(s.lower() for s in suffixes)
    sources: list[Source] = []
    for target in targets:
        if target == "-":
            if stdin is None:
                raise ToolUsageError("`-` needs a standard input")
            sources.append(Source("-", data=stdin.read()))
            continue
        path = Path(target)
        if path.is_dir():
            sources.extend(_walk(path, wanted))
        elif path.is_file():
            sources.append(Source(path.name, path=path))
        else:
            raise ToolUsageError(f"no such file or directory: {target}")
    return sources
