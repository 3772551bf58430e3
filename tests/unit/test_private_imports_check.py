"""scripts/check_private_imports.py: each kind of reliance on another package's internals is
reported with its line; public and project-own code passes."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from textwrap import dedent
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_private_imports.py"


@pytest.fixture(scope="module")
def check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_private_imports", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run(
    check: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Callable[[str], tuple[int, list[str]]]:
    """Write a source as one module under tmp_path, run the check's CLI on the folder; its exit
    code and output lines."""

    def run_on(source: str) -> tuple[int, list[str]]:
        package = tmp_path / "pkg"
        package.mkdir(exist_ok=True)
        (package / "mod.py").write_text(dedent(source), encoding="utf-8")
        capsys.readouterr()
        code: int = check.main([str(package)])
        return code, capsys.readouterr().out.splitlines()

    return run_on


@pytest.mark.parametrize(
    ("source", "line", "reason"),
    [
        ("import os\nimport httpx._client\n", 2, "imports the private module httpx._client"),
        ("import httpx._client as c\n", 1, "imports the private module httpx._client"),
        ("from httpx._types import URLTypes\n", 1, "private module httpx._types"),
        ("from openai import _models\n", 1, "imports the private name _models from openai"),
        ("from x import public, _private\n", 1, "imports the private name _private from x"),
        ("from a.b._c.d import E\n", 1, "private module a.b._c.d"),
        (
            "def f():\n    from openai._models import FinalRequestOptions\n",
            2,
            "private module openai._models",
        ),
    ],
)
def test_a_private_import_is_reported_with_its_line(
    run: Callable[[str], tuple[int, list[str]]], tmp_path: Path, source: str, line: int, reason: str
) -> None:
    code, findings = run(source)
    assert code == 1
    [finding] = findings
    assert finding.startswith(f"{tmp_path / 'pkg' / 'mod.py'}:{line}: ")
    assert reason in finding


@pytest.mark.parametrize(
    "source",
    [
        """\
        from openai import AsyncOpenAI

        class Client(AsyncOpenAI):
            async def _build_request(self, options):
                return None
        """,
        """\
        import httpx

        class Transport(httpx.AsyncBaseTransport):
            def _send(self):
                return None
        """,
        """\
        import typing
        from openai import AsyncOpenAI as OpenAI

        class Client(typing.Generic[T], OpenAI):
            def __init__(self):
                pass

            def _template_key(self):
                return 1
        """,
    ],
)
def test_a_library_subclass_with_a_private_method_is_reported(
    run: Callable[[str], tuple[int, list[str]]], source: str
) -> None:
    code, findings = run(source)
    assert code == 1
    [finding] = findings
    assert "subclasses" in finding
    assert "defines the private method _" in finding


def test_legitimate_code_passes(run: Callable[[str], tuple[int, list[str]]]) -> None:
    source = """\
    from __future__ import annotations

    import httpx
    from enum import StrEnum
    from openai import AsyncOpenAI, __version__
    from pyloto_cli.adapters import _helpers
    from pyloto_cli.domain._private import thing
    from . import _sibling
    from ._local import _name

    class Kind(StrEnum):
        A = "a"

        @classmethod
        def _missing_(cls, value):
            return cls.A

    class Transport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request):
            return await self.__inner(request)

        def __repr__(self):
            return "Transport"

    class Own:
        def _private_helper(self):
            return AsyncOpenAI

    class OwnChild(Own):
        def _another(self):
            return getattr(self, "_private_helper", None) or hasattr(cls, "_x")
    """
    assert run(source) == (0, [])


@pytest.mark.parametrize(
    ("source", "attribute"),
    [
        ('address = getattr(client, "_target", None)\n', "_target"),
        ('api = getattr(client, "_firestore_api_internal")\n', "_firestore_api_internal"),
        ('setattr(response, "_content", body)\n', "_content"),
        ('if hasattr(client.transport, "_pool"):\n    pass\n', "_pool"),
    ],
)
def test_reaching_a_private_attribute_by_name_is_reported(
    run: Callable[[str], tuple[int, list[str]]], source: str, attribute: str
) -> None:
    code, findings = run(source)
    assert code == 1
    [finding] = findings
    assert finding.endswith(f"reaches the private attribute {attribute}")


def test_a_public_or_dunder_attribute_by_name_passes(
    run: Callable[[str], tuple[int, list[str]]],
) -> None:
    source = 'name = getattr(obj, "__name__", None) or getattr(obj, "name", None)\n'
    assert run(source) == (0, [])
