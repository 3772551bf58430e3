"""PYLOTO_GC_THRESHOLDS: three positive integers as JSON, checked when settings are read."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from pyloto_cli.settings import Settings


def test_python_s_own_thresholds_can_be_put_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYLOTO_GC_THRESHOLDS", "[700, 10, 10]")
    assert Settings(_env_file=None).gc_thresholds == (700, 10, 10)


def test_the_default_makes_collections_rare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PYLOTO_GC_THRESHOLDS", raising=False)
    assert Settings(_env_file=None).gc_thresholds == (1000, 10, 1000)


@pytest.mark.parametrize("raw", ["[0, 10, 10]", "[100, 10]", "[100, 10, -1]"])
def test_a_threshold_that_would_disable_or_garble_collection_is_refused(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("PYLOTO_GC_THRESHOLDS", raw)
    with pytest.raises(ValidationError, match="PYLOTO_GC_THRESHOLDS"):
        Settings(_env_file=None)


def test_thresholds_that_are_not_json_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYLOTO_GC_THRESHOLDS", "100,10,1000")
    with pytest.raises(SettingsError, match="gc_thresholds"):
        Settings(_env_file=None)
