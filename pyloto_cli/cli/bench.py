"""`pyloto bench`: latency and throughput of the real pipeline against local fakes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pyloto_cli.bench import BenchConfig, BenchReport, run_bench
from pyloto_cli.cli._boundary import EXIT_FAILURE, boundary, print_json
from pyloto_cli.logs import configure_logging
from pyloto_cli.loops import loop_factory


class _Bars:
    """Two Rich bars (webhooks acknowledged, replies received) on stderr."""

    def __init__(self, progress: Progress, total: int) -> None:
        self._progress = progress
        self._acked = progress.add_task("webhooks acked", total=total)
        self._answered = progress.add_task("replies", total=total)

    def update(self, *, sent: int, acked: int, answered: int, total: int) -> None:
        self._progress.update(self._acked, completed=acked, total=total)
        self._progress.update(self._answered, completed=answered, total=total)


def _table(report: BenchReport) -> Table:
    cfg = report.config
    load = f"{cfg['rate']:g}/s open loop"
    if cfg["mode"] == "closed":
        load = f"closed loop, {cfg['concurrency']} in flight"
    title = (
        f"pyloto bench: {cfg['messages']} webhooks, {load}, LLM {cfg['llm_latency_ms']:g} ms"
        f" ± {cfg['llm_jitter_ms']:g} ms, errors {cfg['llm_error_rate']:.0%}"
    )
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in report.rows():
        table.add_row(name, value)
    return table


def _run(config: BenchConfig, err: Console) -> BenchReport:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        bars = _Bars(progress, config.messages)
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(run_bench(config, bars))


def bench(
    messages: Annotated[
        int, typer.Option("--messages", "-n", min=1, help="Webhooks to send.")
    ] = 300,
    rate: Annotated[float, typer.Option(min=0.1, help="Webhooks per second (open loop).")] = 50.0,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Closed loop: webhooks in flight (ignores --rate).")
    ] = None,
    users: Annotated[
        int | None, typer.Option(min=1, help="Distinct senders (default: one per webhook).")
    ] = None,
    numbers: Annotated[
        int, typer.Option(min=1, help="Business numbers (sends are paced per number).")
    ] = 1,
    greetings: Annotated[
        float,
        typer.Option(min=0, max=1, help="Share of webhooks that are greetings (reply cache)."),
    ] = 0.0,
    llm_latency_ms: Annotated[float, typer.Option(min=0, help="Fake LLM latency.")] = 500.0,
    llm_jitter_ms: Annotated[float, typer.Option(min=0, help="± uniform jitter on it.")] = 50.0,
    llm_error_rate: Annotated[
        float, typer.Option(min=0, max=1, help="Fraction of LLM calls answered 500.")
    ] = 0.0,
    graph_latency_ms: Annotated[float, typer.Option(min=0, help="Fake Graph API latency.")] = 0.0,
    drain_timeout: Annotated[
        float, typer.Option(min=0, help="Seconds to wait for replies after the last webhook.")
    ] = 30.0,
    server_log_level: Annotated[str, typer.Option(help="The server's PYLOTO_LOG_LEVEL.")] = "INFO",
    data_dir: Annotated[
        Path | None, typer.Option(help="Parent of the run's temporary data directory.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the fake LLM's jitter and errors.")] = 1,
    keep: Annotated[
        bool, typer.Option(help="Keep the run's directory (server log, SQLite files).")
    ] = False,
    workers: Annotated[
        int, typer.Option(min=0, help="`pyloto serve --workers N` (worker processes).")
    ] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object last.")] = False,
) -> None:
    """Latency and throughput: real server, real pipeline, real HTTP, fake LLM and Graph API.

    Defaults: 300 webhooks at 50/s, LLM 500 ± 50 ms, no LLM errors (about 10 s).

    PYLOTO_* settings in the environment reach the server (e.g. PYLOTO_CONCURRENCY; note
    PYLOTO_SEND_RATE_PER_NUMBER, 80/s by default, caps replies per business number).
    With PYLOTO_REPLY_CACHE=true and --greetings 0.3, the reply cache's hit rate is shown.

    The comparison with the reference bots is in the source checkout:
    `python -m benchmarks.compare` (see docs/bench.md).

    Exit 1 if an acknowledged webhook was never answered or was answered twice.
    """
    console, err = Console(), Console(stderr=True)
    configure_logging("console", "WARNING")
    config = BenchConfig(
        messages=messages,
        rate=rate,
        concurrency=concurrency,
        users=users,
        numbers=numbers,
        greetings=greetings,
        llm_latency_ms=llm_latency_ms,
        llm_jitter_ms=llm_jitter_ms,
        llm_error_rate=llm_error_rate,
        graph_latency_ms=graph_latency_ms,
        drain_timeout_s=drain_timeout,
        server_log_level=server_log_level,
        data_dir=data_dir,
        seed=seed,
        keep=keep,
        workers=workers,
    )
    with boundary(err):
        report = _run(config, err)
    if as_json:
        print_json(report.to_json())
    else:
        console.print(_table(report))
        if report.config.get("workdir"):
            console.print(f"kept: {report.config['workdir']}", highlight=False)
    if not report.clean:
        counts = report.counts
        err.print(f"[bold red]error:[/] {counts.lost} lost, {counts.duplicated} doubled")
        raise typer.Exit(EXIT_FAILURE)


def register(app: typer.Typer) -> None:
    """Add `pyloto bench` to the app."""
    app.command()(bench)
