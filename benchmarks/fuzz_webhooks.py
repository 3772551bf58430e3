"""The long fuzz of the webhook edge: thousands of hostile requests against a real `pyloto serve`.

    .venv/bin/python -m benchmarks.fuzz_webhooks [-n 5000] [--seed 27] [--json]

Starts `pyloto serve` on 127.0.0.1 (SQLite queue in a temporary data dir, no worker, so the
queue's depth is what was stored) and sends it `n` requests over raw sockets (a client library
refuses some of the headers sent here, such as a non-ASCII byte in the signature), eight at a
time. Each body comes from the project's fixtures (fixtures/webhooks/), its ids made unique,
and is then broken in one of these ways, or not at all:

- `fixture`: as it is; `bytes`: a few bytes inserted, deleted or replaced; `truncated`;
- `field`: one node, anywhere, swapped for a value of another type (huge numbers, floats,
  NaN, text, lists, objects); `nested`: one node wrapped 2 to 100,000 levels deep;
- `utf8`: invalid UTF-8 bytes in a text; `surrogate`: a text replaced by a lone surrogate
  escape (`"\\ud800"`); `random`: random bytes; `oversize`: padded past 3 MiB.

Half of the requests are signed with the server's app secret; the others carry no signature,
one made with another secret, garbage (non-ASCII bytes included) or two headers. Content types
vary (JSON mostly, none, text/plain, garbage). The report counts answers by status code (and
by family, signed or not), and reads the queue's depth before and after: the tasks stored must
be exactly those that the signed requests answered 200 carry (computed here with pyloto's own
splitter), so `unsigned_enqueued` is what was stored without a valid signature.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pyloto_cli.bench.procs import pyloto_serve
from pyloto_cli.domain.errors import MalformedPayload
from pyloto_cli.domain.signature import sign
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.domain.webhook_json import parse_webhook_body
from pyloto_cli.loops import loop_factory
from pyloto_cli.web.body import MAX_BODY_BYTES

ROOT = Path(__file__).resolve().parent.parent
SECRET = b"fuzz-app-secret"
FAMILIES = (
    "fixture",
    "bytes",
    "truncated",
    "field",
    "nested",
    "utf8",
    "surrogate",
    "random",
    "oversize",
)
WEIGHTS = (12, 12, 8, 20, 10, 8, 8, 6, 1)  # oversize bodies are 3 MiB each: a few suffice
SIGNATURES = ("valid", "missing", "other-secret", "garbage", "non-ascii", "twice")
SIGNATURE_WEIGHTS = (10, 2, 2, 2, 3, 1)
CONTENT_TYPES = (b"application/json", None, b"text/plain", b"application/json; charset=utf-8")
DEPTHS = (2, 12, 63, 64, 65, 500, 990, 5000, 100_000)
CONCURRENCY = 8
ANSWER_TIMEOUT_S = 30.0


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _paths(child, (*prefix, index))
    return found


def _replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _replaced(value[head], rest, new)}
    return [_replaced(child, rest, new) if i == head else child for i, child in enumerate(value)]


def _text_paths(value: Any) -> list[tuple[Any, ...]]:
    found = []
    for path in _paths(value):
        node = value
        for step in path:
            node = node[step]
        if isinstance(node, str):
            found.append(path)
    return found


class Bodies:
    """Seeded body maker: the same seed gives the same requests."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        paths = sorted((ROOT / "fixtures" / "webhooks").glob("*.json"))
        self.fixtures = [path.read_bytes() for path in paths]

    def fixture(self, index: int) -> bytes:
        """A fixture with its wamids made unique to this request (so that it would store)."""
        body = self.rng.choice(self.fixtures)
        return body.replace(b"wamid.PYLOTO_", b"wamid.FUZZ%d_" % index)

    def value(self, depth: int = 0) -> Any:
        rng = self.rng
        kind = rng.randrange(9 if depth < 2 else 6)
        scalars: list[Any] = [
            None,
            rng.random() < 0.5,
            rng.choice([2**63, 2**64, 2**70, -(2**63) - 1, 10**400, 10**4000]),
            rng.choice([0.0, -1e308, 1e-320, float("nan"), float("inf")]),
            "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(12))),
            rng.randrange(-(10**6), 10**6),
        ]
        if kind < len(scalars):
            return scalars[kind]
        if kind == 6:
            return [self.value(depth + 1) for _ in range(rng.randrange(3))]
        return {f"k{i}": self.value(depth + 1) for i in range(rng.randrange(3))}

    def make(self, family: str, index: int) -> bytes:
        rng = self.rng
        body = self.fixture(index)
        if family == "fixture":
            return body
        if family == "bytes":
            data = bytearray(body)
            for _ in range(rng.randrange(1, 6)):
                at = rng.randrange(len(data) + 1)
                chunk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
                data[at : at + rng.choice([0, len(chunk)])] = chunk
            return bytes(data)
        if family == "truncated":
            return body[: rng.randrange(len(body))]
        if family == "random":
            return bytes(rng.randrange(256) for _ in range(rng.randrange(300)))
        if family == "oversize":
            return body + b" " * (MAX_BODY_BYTES + 1 - len(body))
        return self.reshaped(family, body)

    def reshaped(self, family: str, body: bytes) -> bytes:
        """Families that change a node of the parsed fixture."""
        rng = self.rng
        value = json.loads(body)
        if family == "field":
            path = rng.choice(_paths(value))
            return json.dumps(_replaced(value, path, self.value()), allow_nan=True).encode()
        texts = _text_paths(value)
        path = rng.choice(texts)
        marker = "\x00fuzz\x00"
        text = json.dumps(_replaced(value, path, marker))
        if family == "nested":
            depth = rng.choice(DEPTHS)
            opening, closing = rng.choice(
                [("[" * depth, "]" * depth), ('{"a":' * depth, "}" * depth)]
            )
            return text.replace(json.dumps(marker), f"{opening}1{closing}", 1).encode()
        if family == "surrogate":
            return text.replace(json.dumps(marker), '"a\\ud800b"', 1).encode()
        # utf8: raw bytes that no UTF-8 decoder takes, inside a string
        junk = rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80\x80"])
        return text.encode().replace(json.dumps(marker).encode(), b'"x' + junk + b'y"', 1)


@dataclass(frozen=True, slots=True)
class FuzzRequest:
    family: str
    signature: str
    body: bytes
    head: bytes

    @property
    def signed(self) -> bool:
        return self.signature == "valid"


def build_request(
    bodies: Bodies, index: int, port: int, families: tuple[str, ...] = FAMILIES
) -> FuzzRequest:
    rng = bodies.rng
    weights = [WEIGHTS[FAMILIES.index(family)] for family in families]
    family = rng.choices(families, weights)[0]
    body = bodies.make(family, index)
    signature = rng.choices(SIGNATURES, SIGNATURE_WEIGHTS)[0]
    headers = [b"Host: 127.0.0.1:%d" % port, b"Content-Length: %d" % len(body)]
    valid = sign(SECRET, body).encode()
    if signature == "valid":
        headers.append(b"X-Hub-Signature-256: " + valid)
    elif signature == "other-secret":
        headers.append(b"X-Hub-Signature-256: " + sign(b"another secret", body).encode())
    elif signature == "garbage":
        junk = bytes(rng.randrange(33, 127) for _ in range(rng.randrange(80)))
        headers.append(b"X-Hub-Signature-256: " + junk)
    elif signature == "non-ascii":
        junk = bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 64)))
        headers.append(b"X-Hub-Signature-256: sha256=" + junk)
    elif signature == "twice":
        headers += [b"X-Hub-Signature-256: " + valid] * 2
    content_type = rng.choices([*CONTENT_TYPES, b"garbage"], (12, 2, 1, 2, 1))[0]
    if content_type == b"garbage":
        content_type = bytes(rng.randrange(33, 256) for _ in range(rng.randrange(1, 30)))
    if content_type is not None:
        headers.append(b"Content-Type: " + content_type)
    head = b"POST /webhooks/whatsapp HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n"
    return FuzzRequest(family, signature, body, head)


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    by_family: Counter[tuple[str, int]] = field(default_factory=Counter)
    by_signed: Counter[tuple[bool, int]] = field(default_factory=Counter)
    no_answer: Counter[str] = field(default_factory=Counter)
    expected_task_ids: set[str] = field(default_factory=set)

    def record(self, request: FuzzRequest, status: int) -> None:
        self.statuses[status] += 1
        self.by_family[(request.family, status)] += 1
        self.by_signed[(request.signed, status)] += 1
        if status == 200 and request.signed:
            try:
                tasks = split_webhook(parse_webhook_body(request.body), 0.0)
            except MalformedPayload:
                return
            self.expected_task_ids.update(task.task_id for task in tasks)


class Connection:
    """One kept-alive HTTP/1.1 connection, opened again whenever the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def exchange(self, request: FuzzRequest) -> int:
        """Send the request; the answer's status (0 when the connection ended without one).

        A kept-alive connection the server closed after its last answer (as after a 500) ends
        at once without a byte: the request is sent again, once, on a new connection."""
        reused = self.streams is not None
        status = await self.send(request)
        if status == -1 and reused:
            status = await self.send(request)
        return max(status, 0)

    async def send(self, request: FuzzRequest) -> int:
        """The status; 0 when the connection ended mid-answer, -1 when before any byte."""
        if self.streams is None:
            self.streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self.streams
        writer.write(request.head + request.body)  # buffered: read the answer while it goes
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = 0
                close = False
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                    elif name.strip().lower() == b"connection":
                        close = value.strip().lower() == b"close"
                await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            self.close()
            return -1 if not exc.partial else 0
        except ConnectionError:
            self.close()
            return -1
        if close:
            self.close()
        return status

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def _depth(client: httpx.AsyncClient, url: str) -> int:
    depth: int = (await client.get(f"{url}/readyz")).json()["queue"]["depth"]
    return depth


async def fuzz(count: int, seed: int, families: tuple[str, ...] = FAMILIES) -> dict[str, Any]:
    """Start the server, send `count` requests (bodies of `families`), and report what it
    answered and stored."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        env = {
            **os.environ,
            "PYLOTO_DATA_DIR": str(workdir / "data"),
            "WHATSAPP_APP_SECRET": SECRET.decode(),
            "WHATSAPP_VERIFY_TOKEN": "fuzz-verify",
            "OPENAI_ENABLED": "false",
            "PYLOTO_WORKER_ENABLED": "false",
            "PYLOTO_LOG_FORMAT": "json",
            "PYLOTO_LOG_LEVEL": "WARNING",
        }
        async with pyloto_serve(workdir, env) as server, httpx.AsyncClient() as client:
            port = int(server.url.rsplit(":", 1)[1])
            bodies = Bodies(seed)
            requests = [build_request(bodies, i, port, families) for i in range(count)]
            before = await _depth(client, server.url)
            tally = Tally()
            started = time.perf_counter()
            await _send_all(requests, port, tally)
            elapsed = time.perf_counter() - started
            after = await _depth(client, server.url)
            log_5xx = _tracebacks(server.log)
    stored = after - before
    return {
        "requests": count,
        "seed": seed,
        "seconds": round(elapsed, 1),
        "statuses": dict(sorted(tally.statuses.items())),
        "signed": {str(k[1]): v for k, v in sorted(tally.by_signed.items()) if k[0]},
        "unsigned": {str(k[1]): v for k, v in sorted(tally.by_signed.items()) if not k[0]},
        "by_family": {
            family: {str(s): n for (f, s), n in sorted(tally.by_family.items()) if f == family}
            for family in families
        },
        "server_5xx": sum(n for status, n in tally.statuses.items() if status >= 500),
        "no_answer": tally.statuses.get(0, 0),
        "queue_depth_before": before,
        "queue_depth_after": after,
        "stored": stored,
        "expected_from_signed_200s": len(tally.expected_task_ids),
        "unsigned_enqueued": stored - len(tally.expected_task_ids),
        "server_log_errors": log_5xx,
    }


async def _send_all(requests: list[FuzzRequest], port: int, tally: Tally) -> None:
    queue: asyncio.Queue[FuzzRequest] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)

    async def sender() -> None:
        connection = Connection(port)
        try:
            while not queue.empty():
                request = queue.get_nowait()
                tally.record(request, await connection.exchange(request))
        finally:
            connection.close()

    await asyncio.gather(*(sender() for _ in range(CONCURRENCY)))


def _tracebacks(log: Path) -> int:
    """Lines of the server's log at ERROR level (an unhandled exception logs one)."""
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "ERROR", "critical"):
            count += 1
    return count


def print_table(result: dict[str, Any]) -> None:
    statuses = sorted({int(s) for row in result["by_family"].values() for s in row})
    print(
        f"{result['requests']} requests (seed {result['seed']}) in {result['seconds']} s "
        f"against pyloto serve on 127.0.0.1"
    )
    header = f"{'family':<12}" + "".join(f"{s:>7}" for s in statuses)
    print(header)
    for family, row in result["by_family"].items():
        print(f"{family:<12}" + "".join(f"{row.get(str(s), 0):>7}" for s in statuses))
    for label in ("signed", "unsigned"):
        row = result[label]
        print(f"{label:<12}" + "".join(f"{row.get(str(s), 0):>7}" for s in statuses))
    print(f"{'all':<12}" + "".join(f"{result['statuses'].get(s, 0):>7}" for s in statuses))
    print(
        f"5xx: {result['server_5xx']}  no answer: {result['no_answer']}  "
        f"server log errors: {result['server_log_errors']}"
    )
    print(
        f"queue depth {result['queue_depth_before']} -> {result['queue_depth_after']}: "
        f"{result['stored']} stored, {result['expected_from_signed_200s']} carried by signed "
        f"200s, unsigned enqueued: {result['unsigned_enqueued']}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the fuzz once and print its table; exit 1 on a 5xx, a lost answer or an unsigned
    task stored."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", "--requests", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument(
        "--families", default=",".join(FAMILIES), help="comma-separated body families to send"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    families = tuple(name for name in args.families.split(",") if name)
    unknown = set(families) - set(FAMILIES)
    if unknown or not families:
        parser.error(f"families are {', '.join(FAMILIES)}; unknown: {', '.join(sorted(unknown))}")
    # the splitter run here to count the tasks a body carries logs what the server logs too
    logging.getLogger("pyloto").addHandler(logging.NullHandler())
    logging.getLogger("pyloto").propagate = False
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        result = runner.run(fuzz(args.requests, args.seed, families))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    failed = result["server_5xx"] or result["no_answer"] or result["unsigned_enqueued"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
