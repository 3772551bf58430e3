"""Messages/s one worker sustains on the durable SQLite queue with a responder that sleeps.

    python -m benchmarks.worker_throughput [-n 3000] [--sleep-ms 500] [--concurrency 256]

The real runtime (SQLite queue, sessions, dedupe; dry-run sender) with the offline responder
wrapped so every reply takes `--sleep-ms`: the figure is what the queue, the worker and the
stores sustain when the LLM, not pyloto, is the slow part. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from pyloto_cli.bootstrap import open_roles
from pyloto_cli.domain.reply import Reply
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.ports import Responder, ResponderRequest
from pyloto_cli.settings import Settings


class SleepingResponder:
    """Waits `delay_s`, then answers like the wrapped responder."""

    def __init__(self, inner: Responder, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s

    async def respond(self, request: ResponderRequest) -> Reply:
        await asyncio.sleep(self.delay_s)
        return await self.inner.respond(request)


def webhook(index: int, users: int) -> dict[str, object]:
    user = f"1555{index % users:07d}"
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "1",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"display_phone_number": "1", "phone_number_id": "2"},
                            "contacts": [{"profile": {"name": "U"}, "wa_id": user}],
                            "messages": [
                                {
                                    "from": user,
                                    "id": f"wamid.tp.{index}",
                                    "timestamp": "1767225600",
                                    "type": "text",
                                    "text": {"body": f"message {index}"},
                                }
                            ],
                        },
                    }
                ],
            }
        ],
    }


async def measure(total: int, sleep_s: float, concurrency: int, data_dir: Path) -> dict[str, float]:
    settings = Settings(
        _env_file=None,
        data_dir=data_dir,
        concurrency=concurrency,
        openai_enabled=False,
        log_level="WARNING",
    )
    async with open_roles(settings) as roles:
        if (await roles.queue_parts()).queue is None:
            raise SystemExit("this queue backend has no pull worker")
        worker = await roles.worker()
        worker.pipeline.responder = SleepingResponder(worker.pipeline.responder, sleep_s)
        for start in range(0, total, 500):
            tasks = [
                t
                for i in range(start, min(total, start + 500))
                for t in split_webhook(webhook(i, total), 0.0)
            ]
            await worker.queue.enqueue(tasks)
        started = time.perf_counter()
        cpu = time.process_time()
        stats = await worker.drain()
        elapsed = time.perf_counter() - started
        cpu_used = time.process_time() - cpu
    return {
        "messages": stats.done,
        "seconds": round(elapsed, 2),
        "messages_per_s": round(stats.done / elapsed, 1),
        "ceiling_per_s": round(concurrency / sleep_s, 1),
        "cpu_ms_per_message": round(cpu_used * 1000 / max(1, stats.done), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3000)
    parser.add_argument("--sleep-ms", type=float, default=500.0)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(measure(args.n, args.sleep_ms / 1000, args.concurrency, Path(tmp)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
