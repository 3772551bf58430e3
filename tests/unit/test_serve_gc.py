"""`serve` and `worker` leave start-up objects out of later garbage collections."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pyloto_cli.cli.serve import _freeze_startup_objects


@pytest.fixture
def unfreeze() -> Iterator[None]:
    try:
        yield
    finally:
        gc.unfreeze()


@pytest.mark.usefixtures("unfreeze")
def test_startup_objects_are_left_out_of_later_collections() -> None:
    startup = {"made": "at start-up"}

    _freeze_startup_objects()

    assert gc.get_freeze_count() > 0
    assert not any(obj is startup for obj in gc.get_objects())


@pytest.mark.usefixtures("unfreeze")
def test_cycles_made_after_start_up_are_still_collected() -> None:
    _freeze_startup_objects()
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle

    assert gc.collect() >= 1
