"""`serve` and `worker` leave start-up objects out of later collections and collect the young
generation less often."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pyloto_cli.cli.serve import YOUNG_GC_THRESHOLD, _freeze_startup_objects


@pytest.fixture
def gc_state() -> Iterator[None]:
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.usefixtures("gc_state")
def test_startup_objects_are_frozen_and_the_young_threshold_raised() -> None:
    gc.set_threshold(700, 11, 12)
    startup = {"made": "at start-up"}

    _freeze_startup_objects()

    assert gc.get_freeze_count() > 0
    assert not any(obj is startup for obj in gc.get_objects())  # out of every collection
    assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, 11, 12)  # the older ones are kept


@pytest.mark.usefixtures("gc_state")
def test_cycles_made_after_start_up_are_still_collected() -> None:
    _freeze_startup_objects()
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle

    assert gc.collect() >= 1
