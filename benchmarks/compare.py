"""pyloto beside the two reference bots: the same load, fakes and figures, one after another.

    .venv/bin/python -m benchmarks.compare [--systems inline,background,pyloto] [-n 300]
        [--rate 50 | --concurrency 64] [--llm-latency-ms 500] [--rounds 1] [--wire] [--json]

The same run as `pyloto bench --compare inline,background` (the orchestration is in
`pyloto_cli.bench.compare`), with the systems in any order: the first is the base of the
ratios. Each system gets a fresh fake OpenAI server (a subprocess), a fresh fake Graph API and
the same signed webhooks; with two or more CPUs the system under test is pinned to the first
one and the rest of the run to the others:

- `inline`: benchmarks/reference/inline_bot.py (FastAPI, LLM calls and send before the 200);
- `background`: benchmarks/reference/pywa_bot.py (pywa on FastAPI, handler after the 200);
- `pyloto`: `python -m pyloto_cli serve` with the SQLite queue, as `pyloto bench` runs it, with
  PYLOTO_SEND_RATE_PER_NUMBER=1000 unless the environment sets it (the bots have no limit).

`--rounds N` runs the whole comparison N times (the systems interleaved: inline, pyloto, inline,
pyloto, ...), prints each round's table, then the medians over the rounds and the spread of each
round's ratios: a system past its capacity moves a lot from one run to the next.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from rich.console import Console

from pyloto_cli.bench.compare import (
    SYSTEMS,
    CompareLines,
    parse_systems,
    pinned_here,
    reference_problem,
    run_compare,
    split_cpus,
    webhooks,
)
from pyloto_cli.bench.compare_table import comparison_table, rounds_table
from pyloto_cli.bench.runner import BenchConfig
from pyloto_cli.logs import configure_logging
from pyloto_cli.loops import loop_factory

__all__ = ["main", "webhooks"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="in this order")
    parser.add_argument("-n", "--messages", type=int, default=300)
    parser.add_argument("--rate", type=float, default=50.0, help="webhooks/s, open loop")
    parser.add_argument("--concurrency", type=int, default=None, help="closed loop instead")
    parser.add_argument("--users", type=int, default=None, help="default: one per webhook")
    parser.add_argument("--numbers", type=int, default=1, help="business numbers addressed")
    parser.add_argument("--llm-latency-ms", type=float, default=500.0)
    parser.add_argument("--llm-jitter-ms", type=float, default=50.0)
    parser.add_argument("--llm-error-rate", type=float, default=0.0, help="answered 500")
    parser.add_argument("--graph-latency-ms", type=float, default=0.0)
    parser.add_argument("--drain-timeout", type=float, default=60.0)
    parser.add_argument("--server-log-level", default="INFO", help="pyloto's PYLOTO_LOG_LEVEL")
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument("--rounds", type=int, default=1, help="repeat; medians over rounds")
    parser.add_argument(
        "--wire", action="store_true", help="also the server's acks off the wire (root)"
    )
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print the table (or JSON)."""
    args = _parser().parse_args(argv)
    try:
        systems = parse_systems(args.systems, with_pyloto=False)
    except ValueError as exc:
        raise SystemExit(f"--systems: {exc}") from None
    problem = reference_problem(systems)
    if problem is not None:
        raise SystemExit(f"error: {problem}")
    config = BenchConfig(
        messages=args.messages,
        rate=args.rate,
        concurrency=args.concurrency,
        users=args.users,
        numbers=args.numbers,
        llm_latency_ms=args.llm_latency_ms,
        llm_jitter_ms=args.llm_jitter_ms,
        llm_error_rate=args.llm_error_rate,
        graph_latency_ms=args.graph_latency_ms,
        drain_timeout_s=args.drain_timeout,
        server_log_level=args.server_log_level,
        wire=args.wire,
    )
    console, err = Console(width=140), Console(stderr=True)
    pinning = None if args.no_pin else split_cpus()
    if pinning is None and not args.no_pin:
        err.print("[yellow]one CPU only: nothing pinned[/]")
    configure_logging("console", "WARNING")
    if args.rounds < 1:
        raise SystemExit("--rounds: at least 1")
    rounds = []
    with pinned_here(pinning), asyncio.Runner(loop_factory=loop_factory()) as runner:
        for _ in range(args.rounds):
            reports = runner.run(run_compare(systems, config, pinning, CompareLines(err)))
            rounds.append(reports)
            if not args.json:
                console.print(comparison_table(reports))
    if args.json:
        as_json = [{k: r.to_json() for k, r in reports.items()} for reports in rounds]
        print(json.dumps(as_json[0] if args.rounds == 1 else as_json, indent=2))
    elif args.rounds > 1:
        console.print(rounds_table(rounds))


if __name__ == "__main__":
    main()
