"""pyloto beside the reference bots and an earlier pyloto: the same load, fakes and figures.

    .venv/bin/python -m benchmarks.compare [--systems inline,background,pyloto]
        [--baseline DIR] [-n 300] [--rate 50 | --concurrency 64] [--llm-latency-ms 500]
        [--llm-jitter-ms 50] [--rounds 1] [--wire] [--keep] [--json]

Runs from a source checkout with the `bench` extra (`pip install -e '.[all]'`). Systems, in
the order given (the first is the base of the ratios):

- `inline`: benchmarks/reference/inline_bot.py (FastAPI, LLM calls and send before the 200);
- `background`: benchmarks/reference/pywa_bot.py (pywa on FastAPI, handler after the 200);
- `pyloto`: `python -m pyloto_cli serve` of this checkout, SQLite queue;
- `baseline`: `pyloto serve` of the checkout given by `--baseline DIR`, run by
  `DIR/.venv/bin/python` with DIR first on PYTHONPATH (its own code, whatever its venv's
  install points at) in a temporary directory; nothing is written into DIR. With `--baseline`
  the systems default to `inline,baseline,pyloto`, and the table also gives pyloto / baseline.

Both pylotos run with PYLOTO_SEND_RATE_PER_NUMBER=1000, PYLOTO_REPLY_CACHE=false and
PYLOTO_COALESCE_WINDOW_SECONDS=0 unless the environment sets them; other PYLOTO_* variables
pass through (a setting the baseline does not know is ignored by it). Each system gets a fresh
fake OpenAI server (a subprocess), a fresh fake Graph API and the same signed webhooks; with two
or more CPUs the system under test is pinned to the first one and the rest of the run to the
others. The "LLM calls per answer" row counts the fake LLM's requests: 3 when every message ran
all three stages.

`--rounds N` runs the whole comparison N times (the systems interleaved), prints each round's
table, then the medians over the rounds and the spread of each round's ratios: a system past
its capacity moves a lot from one run to the next. Exit 1 if pyloto lost or doubled a reply.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from rich.console import Console

from benchmarks.compare_table import comparison_table, rounds_table, summary_lines
from benchmarks.systems import (
    SYSTEMS,
    Baseline,
    CompareConfig,
    CompareLines,
    parse_systems,
    pinned_here,
    reference_problem,
    run_compare,
    split_cpus,
    webhooks,
)
from pyloto_cli.bench.report import BenchReport
from pyloto_cli.bench.runner import BenchConfig
from pyloto_cli.logs import configure_logging
from pyloto_cli.loops import loop_factory

__all__ = ["main", "webhooks"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--systems",
        default=None,
        help=f"in this order, from {', '.join(SYSTEMS)} (default: inline,background,pyloto;"
        " with --baseline: inline,baseline,pyloto)",
    )
    parser.add_argument("--baseline", type=Path, default=None, help="checkout of the baseline")
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
    parser.add_argument("--workers", type=int, default=0, help="pylotos: serve --workers N")
    parser.add_argument("--seed", type=int, default=1, help="the fake LLM's jitter and errors")
    parser.add_argument("--data-dir", type=Path, default=None, help="parent of the run dirs")
    parser.add_argument("--keep", action="store_true", help="keep each system's run dir")
    parser.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    parser.add_argument("--rounds", type=int, default=1, help="repeat; medians over rounds")
    parser.add_argument(
        "--wire", action="store_true", help="also the server's acks off the wire (root)"
    )
    parser.add_argument("--json", action="store_true", help="print the reports as JSON")
    return parser


def _systems(args: argparse.Namespace) -> tuple[list[str], Baseline | None]:
    default = "inline,baseline,pyloto" if args.baseline else "inline,background,pyloto"
    try:
        systems = parse_systems(args.systems or default)
        baseline = None if args.baseline is None else Baseline.at(args.baseline)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    problem = reference_problem(systems, baseline)
    if problem is not None:
        raise SystemExit(f"error: {problem}")
    return systems, baseline


def _bench_config(args: argparse.Namespace) -> BenchConfig:
    return BenchConfig(
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
        workers=args.workers,
        seed=args.seed,
        data_dir=args.data_dir,
        keep=args.keep,
    )


def _print_round(console: Console, reports: dict[str, BenchReport]) -> None:
    console.print(comparison_table(reports))
    for line in summary_lines(reports):
        console.print(line, highlight=False, soft_wrap=True)
    for kind, report in reports.items():
        if report.config.get("workdir"):
            console.print(f"kept ({kind}): {report.config['workdir']}", highlight=False)


def main(argv: list[str] | None = None) -> None:
    """Run the comparison and print the table (or JSON)."""
    args = _parser().parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("--rounds: at least 1")
    systems, baseline = _systems(args)
    console, err = Console(width=160), Console(stderr=True)
    pinning = None if args.no_pin else split_cpus()
    if pinning is None and not args.no_pin:
        err.print("[yellow]one CPU only: nothing pinned[/]")
    configure_logging("console", "WARNING")
    config = CompareConfig(_bench_config(args), pinning, args.wire, baseline)
    rounds = []
    with pinned_here(pinning), asyncio.Runner(loop_factory=loop_factory()) as runner:
        for _ in range(args.rounds):
            reports = runner.run(run_compare(systems, config, CompareLines(err)))
            rounds.append(reports)
            if not args.json:
                _print_round(console, reports)
    if args.json:
        as_json = [{k: r.to_json() for k, r in reports.items()} for reports in rounds]
        print(json.dumps(as_json[0] if args.rounds == 1 else as_json, indent=2))
    elif args.rounds > 1:
        console.print(rounds_table(rounds))
    if any(not r["pyloto"].clean for r in rounds if "pyloto" in r):
        raise SystemExit("error: pyloto lost or doubled a reply")


if __name__ == "__main__":
    main()
