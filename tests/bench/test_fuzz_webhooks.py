"""benchmarks/fuzz_webhooks.py, small: a real `pyloto serve`, every answer counted, the queue's
growth explained by the signed 200s alone."""

from __future__ import annotations

import pytest

from benchmarks.fuzz_webhooks import FAMILIES, fuzz

pytestmark = pytest.mark.e2e


async def test_small_fuzz_answers_every_request_and_stores_nothing_unsigned() -> None:
    result = await fuzz(150, seed=7, families=FAMILIES)
    assert sum(result["statuses"].values()) == 150
    assert result["no_answer"] == 0
    assert result["server_5xx"] == 0, result["by_family"]
    assert result["unsigned_enqueued"] == 0
    assert result["statuses"].get(200, 0) > 0  # some bodies were good and got stored
    # 400 where the HTTP parser refuses a byte in a header before the app sees the request
    assert set(result["unsigned"]) <= {"400", "401", "413"}
