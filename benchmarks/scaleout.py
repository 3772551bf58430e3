"""pyloto's scale-out on the embedded queue: goodput with one worker process versus two.

    .venv/bin/python -m benchmarks.scaleout [--workers 1,2] [-n 2000] [--rate 200] [--json]

Each entry of `--workers` is one `pyloto bench` run (`pyloto_cli.bench.run_bench`) of
`pyloto serve --workers N`: the web process takes the webhooks into the SQLite queue and N
`pyloto worker` children process them (0: the worker inside the web process, the default
deployment). Nothing is pinned: the server, its workers, the fake OpenAI server, the fake Graph
API and the load generator share the machine's CPUs. The load should be past one worker's
capacity, so that replies/s (goodput) measures what the workers sustain; the table gives each
run's figures and its ratio to the first. CPU and peak RSS are summed over the web process and
its workers. As in `benchmarks.compare`, PYLOTO_SEND_RATE_PER_NUMBER is 1000 and the reply
cache and coalescing are off unless the environment sets them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import replace

from rich.console import Console
from rich.table import Table

from benchmarks.compare_table import add_count_rows, ratio
from benchmarks.systems import PYLOTO_DEFAULTS
from pyloto_cli.bench import BenchConfig, BenchReport, run_bench
from pyloto_cli.logs import configure_logging
from pyloto_cli.loops import loop_factory

Figure = tuple[str, Callable[[BenchReport], float | None]]
FIGURES: tuple[Figure, ...] = (
    ("replies/s (goodput)", lambda r: r.replies_per_s),
    ("ack ms p50", lambda r: r.ack_ms.p50),
    ("ack ms p99", lambda r: r.ack_ms.p99),
    ("reply ms p50", lambda r: r.e2e_ms.p50),
    ("reply ms p99", lambda r: r.e2e_ms.p99),
    ("CPU ms/msg (web + workers)", lambda r: r.server.cpu_ms_per_msg),
    ("peak RSS MB (sum)", lambda r: r.server.peak_rss_mb),
)


def _label(workers: int) -> str:
    return "in-process" if workers == 0 else f"{workers} worker{'s' if workers > 1 else ''}"


def table(reports: Mapping[int, BenchReport]) -> Table:
    """One column per run, then each run's ratio to the first."""
    runs = list(reports)
    first = reports[runs[0]].config
    title = (
        f"pyloto serve --workers N: {first['messages']} webhooks at {first['rate']:g}/s,"
        f" LLM {first['llm_latency_ms']:g} ms per call, nothing pinned"
    )
    out = Table(title=title, title_justify="left")
    out.add_column("figure")
    for run in runs:
        out.add_column(_label(run), justify="right")
    for run in runs[1:]:
        out.add_column(f"{_label(run)} / first", justify="right")
    for name, get in FIGURES:
        values = [get(reports[r]) for r in runs]
        shown = ["-" if v is None else f"{v:,.1f}" for v in values]
        out.add_row(name, *shown, *(ratio(v, values[0]) for v in values[1:]))
    add_count_rows(out, [reports[r] for r in runs], len(runs) - 1)
    return out


def summary_lines(reports: Mapping[int, BenchReport]) -> list[str]:
    """The figures as plain text: one line per run, then each run's goodput over the first."""
    lines = []
    for workers, report in reports.items():
        c = report.counts
        lines.append(
            f"{_label(workers)}: replies/s {report.replies_per_s}, ack p99 {report.ack_ms.p99} ms,"
            f" reply p50 {report.e2e_ms.p50} ms, CPU {report.server.cpu_ms_per_msg} ms/msg;"
            f" acked {c.acked}, answered {c.answered}, lost {c.lost}, doubled {c.duplicated}"
        )
    runs = list(reports)
    for workers in runs[1:]:
        goodput = ratio(reports[workers].replies_per_s, reports[runs[0]].replies_per_s)
        lines.append(f"goodput {_label(workers)} / {_label(runs[0])}: {goodput}")
    return lines


async def run_all(runs: list[int], config: BenchConfig, err: Console) -> dict[int, BenchReport]:
    """One bench run per worker count, one after another."""
    reports: dict[int, BenchReport] = {}
    for workers in runs:
        err.print(f"[bold]{_label(workers)}[/]: {config.messages} webhooks ...")
        reports[workers] = await run_bench(replace(config, workers=workers))
        c = reports[workers].counts
        err.print(f"  acked {c.acked}, answered {c.answered}, lost {c.lost}")
    return reports


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", default="1,2", help="worker processes per run, in order")
    parser.add_argument("-n", "--messages", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200.0, help="webhooks/s, open loop")
    parser.add_argument("--users", type=int, default=None, help="default: one per webhook")
    parser.add_argument("--llm-latency-ms", type=float, default=500.0)
    parser.add_argument("--llm-jitter-ms", type=float, default=50.0)
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--server-log-level", default="INFO", help="pyloto's PYLOTO_LOG_LEVEL")
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run pyloto once per worker count and print the table (or JSON)."""
    args = _parser().parse_args(argv)
    try:
        runs = [int(w) for w in args.workers.split(",") if w.strip()]
    except ValueError:
        raise SystemExit(f"--workers: comma-separated counts (got {args.workers!r})") from None
    for name, value in PYLOTO_DEFAULTS.items():
        os.environ.setdefault(name, value)
    config = BenchConfig(
        messages=args.messages,
        rate=args.rate,
        users=args.users,
        llm_latency_ms=args.llm_latency_ms,
        llm_jitter_ms=args.llm_jitter_ms,
        drain_timeout_s=args.drain_timeout,
        server_log_level=args.server_log_level,
    )
    configure_logging("console", "WARNING")
    err = Console(stderr=True)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        reports = runner.run(run_all(runs, config, err))
    if args.json:
        print(json.dumps({str(k): r.to_json() for k, r in reports.items()}, indent=2))
    else:
        Console(width=140).print(table(reports))
        for line in summary_lines(reports):
            print(line)


if __name__ == "__main__":
    main()
