"""Voice notes on the fakes: reply latency end to end, and memory while large ones download.

    .venv/bin/python -m benchmarks.media latency [-n 100] [--rate 10] [--json]
    .venv/bin/python -m benchmarks.media rss [--notes 50] [--mb 16] [--json]

`latency`: pyloto's worker, built by the composition root (`open_roles`: the in-memory queue,
the Graph media fetcher, the OpenAI transcriber, the three LLM stages, the Graph sender), in
one process with the fake Graph API and the fake OpenAI server (transcription 300 ms, each chat
call 500 ms). `-n` voice notes (40 KB each, one user each) are enqueued at `--rate` per second;
a reply's latency runs from its enqueue to the fake Graph API receiving the reply. The target
is p50 ≤ transcription + 2 x LLM + 150 ms (1450 ms): the download, the transcription and the
two chained LLM calls are the critical path.

`rss`: the fake Graph API serves `--notes` voice notes of `--mb` MB each; a child process
downloads all of them at once through the Graph media fetcher into a temporary directory and
then sends each to the fake OpenAI server's transcription endpoint through the OpenAI
transcriber, all at once again, and reports its peak RSS (VmHWM) and its RSS after its imports.
Both directions stream in 64 KB chunks, so the peak stays far below the bytes in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pyloto_cli.bench.report import latency_ms
from pyloto_cli.bootstrap import open_roles
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.fakes.graph_server import FakeGraphServer
from pyloto_cli.fakes.openai_server import FakeOpenAIServer
from pyloto_cli.settings import Settings

TRANSCRIBE_MS = 300.0
LLM_MS = 500.0
SLACK_MS = 150.0
PNID = "200000000000001"
FAKE_TOKEN = "fake-graph-token"  # noqa: S105 - the fake Graph API takes any token


def voice_webhook(n: int, media_id: str, sha256: str) -> dict[str, Any]:
    """A real-shaped voice-note webhook from user `n`."""
    phone = f"1555{n:07d}"
    message = {
        "from": phone,
        "id": f"wamid.BENCH_VOICE_{n:06d}",
        "timestamp": str(int(time.time())),
        "type": "audio",
        "audio": {
            "id": media_id,
            "mime_type": "audio/ogg; codecs=opus",
            "sha256": sha256,
            "voice": True,
        },
    }
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550001000", "phone_number_id": PNID},
        "contacts": [{"profile": {"name": "Bench"}, "wa_id": phone}],
        "messages": [message],
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "100000000000001", "changes": [{"field": "messages", "value": value}]}],
    }


async def run_latency(count: int, rate: float) -> dict[str, Any]:
    """Voice notes through the worker on the fakes; latency from enqueue to the reply's send."""
    latencies = {"transcription": TRANSCRIBE_MS, "event": LLM_MS, "text": LLM_MS}
    latencies["message_type"] = LLM_MS
    async with (
        FakeGraphServer() as graph,
        FakeOpenAIServer(route_latency_ms=latencies) as fake,
    ):
        with tempfile.TemporaryDirectory() as data:
            settings = Settings(
                _env_file=None,
                data_dir=Path(data),
                queue_backend="memory",
                session_store_backend="memory",
                dedupe_backend="memory",
                whatsapp_access_token=FAKE_TOKEN,
                graph_api_url=graph.url,
                openai_api_key="bench-key",
                openai_base_url=fake.base_url,
                send_rate_per_number=1000.0,
                poll_interval=0.005,
            )
            voice = os.urandom(40 * 1024)
            digest = base64.b64encode(hashlib.sha256(voice).digest()).decode()
            media = [graph.add_media(voice, "audio/ogg") for _ in range(count)]
            enqueued: dict[str, float] = {}
            async with open_roles(settings) as roles:
                sink = await roles.sink()
                worker = await roles.worker()
                stop = asyncio.Event()
                running = asyncio.create_task(worker.run(stop))
                started = time.monotonic()
                for n, media_id in enumerate(media):
                    await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
                    tasks = split_webhook(voice_webhook(n, media_id, digest), time.time())
                    enqueued[tasks[0].task_id] = time.monotonic()
                    await sink.enqueue(tasks)
                await _until(lambda: len(graph.messages()) >= count, 60.0)
                stop.set()
                await running
            replied = {
                str(r.body["biz_opaque_callback_data"]): r.at
                for r in graph.messages()
                if isinstance(r.body, dict)
            }
    seconds = [replied[w] - t for w, t in enqueued.items() if w in replied]
    figures = latency_ms(seconds)
    target = TRANSCRIBE_MS + 2 * LLM_MS + SLACK_MS
    return {
        "voice_notes": count,
        "rate_per_s": rate,
        "answered": len(seconds),
        "transcriptions": len(fake.by_route("transcription")),
        "reply_ms": asdict(figures),
        "target_p50_ms": target,
        "met": figures.p50 is not None and figures.p50 <= target,
    }


async def _until(condition: Any, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("not every voice note was answered in time")
        await asyncio.sleep(0.01)


async def run_rss(notes: int, mb: int) -> dict[str, Any]:
    """Serve `notes` voice notes of `mb` MB; a child downloads them all at once."""
    body = os.urandom(mb * 1024 * 1024)
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    async with FakeGraphServer() as graph, FakeOpenAIServer() as fake:
        ids = [graph.add_media(body, "audio/ogg") for _ in range(notes)]
        command = [sys.executable, "-m", "benchmarks.media", "fetch-child", graph.url, digest]
        command.append(fake.base_url)
        child = await asyncio.create_subprocess_exec(
            *command, *ids, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(err.decode(errors="replace")[-2000:])
    report: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    sent = sum(len(r.body.get("file", b"")) for r in fake.by_route("transcription"))
    report["transcribed_mb"] = round(sent / 1024 / 1024, 1)
    report.update(notes=notes, mb_each=mb, target_peak_mb=200, met=report["peak_mb"] < 200)
    return report


async def fetch_child(url: str, digest: str, openai_url: str, ids: list[str]) -> None:
    """The child of `rss`: every download at once, every transcription at once, then its
    peak RSS, as one JSON line."""
    from pyloto_cli.adapters.llm.openai import OpenAITranscriber, open_openai_client
    from pyloto_cli.adapters.media.graph import GraphMediaFetcher, open_media_client

    settings = Settings(
        _env_file=None,
        concurrency=len(ids),
        openai_api_key="fake-openai-key",
        openai_base_url=openai_url,
    )
    imported_mb = _status_mb("VmRSS")
    with tempfile.TemporaryDirectory() as directory:
        async with open_media_client(settings) as client, open_openai_client(settings) as oa:
            fetcher = GraphMediaFetcher(
                client, access_token=FAKE_TOKEN, api_version="v25.0", base_url=url
            )
            started = time.monotonic()
            fetched = await asyncio.gather(
                *(
                    fetcher.fetch(
                        media_id,
                        sha256=digest,
                        max_bytes=16 * 1024 * 1024,
                        directory=Path(directory),
                    )
                    for media_id in ids
                )
            )
            seconds = time.monotonic() - started
            downloaded_peak_mb = _status_mb("VmHWM")
            transcriber = OpenAITranscriber(oa, model="gpt-4o-mini-transcribe", timeout_s=120)
            started = time.monotonic()
            await asyncio.gather(*(transcriber.transcribe(f.path, f.mime_type) for f in fetched))
            upload_seconds = time.monotonic() - started
    total = sum(f.size for f in fetched)
    line = {
        "downloaded_mb": round(total / 1024 / 1024, 1),
        "download_seconds": round(seconds, 2),
        "peak_after_downloads_mb": downloaded_peak_mb,
        "upload_seconds": round(upload_seconds, 2),
        "rss_after_imports_mb": imported_mb,
        "peak_mb": _status_mb("VmHWM"),
    }
    print(json.dumps(line))


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def main() -> None:
    """Parse the arguments and run one mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    modes = parser.add_subparsers(dest="mode", required=True)
    latency = modes.add_parser("latency")
    latency.add_argument("-n", type=int, default=100)
    latency.add_argument("--rate", type=float, default=10.0)
    latency.add_argument("--json", action="store_true")
    rss = modes.add_parser("rss")
    rss.add_argument("--notes", type=int, default=50)
    rss.add_argument("--mb", type=int, default=16)
    rss.add_argument("--json", action="store_true")
    child = modes.add_parser("fetch-child")
    child.add_argument("url")
    child.add_argument("digest")
    child.add_argument("openai_url")
    child.add_argument("ids", nargs="+")
    args = parser.parse_args()
    if args.mode == "fetch-child":
        asyncio.run(fetch_child(args.url, args.digest, args.openai_url, args.ids))
        return
    if args.mode == "latency":
        report = asyncio.run(run_latency(args.n, args.rate))
    else:
        report = asyncio.run(run_rss(args.notes, args.mb))
    if args.json:
        print(json.dumps(report))
        return
    for key, value in report.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
