"""`pyloto serve` (web + worker) and `pyloto worker` (worker alone)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import signal
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

import typer
import uvicorn
from rich.console import Console

from pyloto_cli import loops
from pyloto_cli.backends import open_metrics
from pyloto_cli.bootstrap import Roles, open_roles, run_worker
from pyloto_cli.cli._boundary import boundary
from pyloto_cli.firstrun import LocalSetup, ensure_local_secrets
from pyloto_cli.logs import configure_logging
from pyloto_cli.ports import NO_METRICS, Metrics
from pyloto_cli.settings import LOOPBACK, Settings, cloud_run_problems, listen_address
from pyloto_cli.tools import ToolUsageError
from pyloto_cli.web.app import create_app
from pyloto_cli.web.header_deadline import HeaderDeadline
from pyloto_cli.web.intake import Intake
from pyloto_cli.worker_thread import threadable, worker_thread
from pyloto_cli.workers import (
    announce_ready,
    listen_for_wakes,
    stop_when_orphaned,
    worker_processes,
)

_console = Console(stderr=True)
_START_WATCH_S = 0.02  # how often serve looks whether uvicorn has started


def _print_first_run(setup: LocalSetup, host: str, port: int) -> None:
    settings = setup.settings
    shown_secret = _local_value(setup, "whatsapp_app_secret", "WHATSAPP_APP_SECRET")
    shown_token = _local_value(setup, "whatsapp_verify_token", "WHATSAPP_VERIFY_TOKEN")
    where = "generated" if setup.generated else "loaded"
    _console.print(f"[bold]pyloto[/] {where} a local app secret and verify token:")
    _console.print(f"  file:         {settings.data_dir / 'local-secrets.json'}")
    _console.print(f"  app secret:   {shown_secret}")
    _console.print(f"  verify token: {shown_token}")
    if "whatsapp_app_secret" in setup.local:
        _console.print(
            "[yellow]Real Meta webhooks will be rejected until WHATSAPP_APP_SECRET is set.[/]"
        )
    if "whatsapp_verify_token" in setup.local:
        _console.print(
            "[yellow]WHATSAPP_VERIFY_TOKEN is not set: give Meta the verify token above, "
            "or set it.[/]"
        )
    _console.print("Try it:")
    _console.print(
        f"  curl -sS -X POST http://{host}:{port}/webhooks/whatsapp "
        f"-H 'Content-Type: application/json' "
        f"-H 'X-Hub-Signature-256: {setup.example_signature}' "
        f"--data-binary @{setup.example_path}",
        soft_wrap=True,
        highlight=False,
    )


def _local_value(setup: LocalSetup, name: str, variable: str) -> str:
    """A value from the local secrets file, to print; one the user configured stays unprinted
    (only the missing one was generated)."""
    value = getattr(setup.settings, name)
    if name not in setup.local or value is None:
        return f"set by {variable} (not shown)"
    secret: str = value.get_secret_value()
    return secret


def _refuse_a_port_in_use(host: str, port: int) -> None:
    """Fail before the first-run files are written: a second `serve` on a taken port must not
    rewrite the example that the first one's curl line points at. Bound as uvicorn binds
    (SO_REUSEADDR), so a port left in TIME_WAIT by a server just stopped is not refused."""
    if port == 0:
        return
    with contextlib.suppress(OSError):  # an unresolvable host is uvicorn's error to report
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise ToolUsageError(
                        f"port {port} is in use; choose another with --port"
                    ) from exc
                raise


def serve(
    host: Annotated[
        str | None,
        typer.Option(
            help="Interface to bind (default: $PYLOTO_HOST; 0.0.0.0 when $PORT is set; "
            "else 127.0.0.1)."
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="Port (default: $PORT, then $PYLOTO_PORT, then 8000)."),
    ] = None,
    worker: Annotated[bool, typer.Option(help="Run the worker in this process.")] = True,
    workers: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Run N `pyloto worker` processes beside the web process (0: the worker runs "
            "inside it). Default: $PYLOTO_WORKERS or 0.",
        ),
    ] = None,
) -> None:
    """Receive Meta's webhooks (and, by default, process them in the same process)."""
    with boundary(_console):
        settings = Settings()
        configure_logging(settings.log_format, settings.log_level, server=True)
        problems = cloud_run_problems(settings)
        if problems:  # before anything is written or bound
            raise ToolUsageError("; ".join(problems))
        bind_host, bind_port, from_platform = listen_address(settings, host, port)
        _refuse_a_port_in_use(bind_host, bind_port)
        if from_platform:
            _console.print(
                f"PORT is set: listening on {bind_host}:{bind_port} (every interface), "
                "as Cloud Run expects; set PYLOTO_HOST to choose another",
                highlight=False,
                soft_wrap=True,
            )
        if settings.whatsapp_app_secret is None or settings.whatsapp_verify_token is None:
            setup = ensure_local_secrets(settings)
            settings = setup.settings
            _print_first_run(setup, LOOPBACK if from_platform else bind_host, bind_port)
        children = settings.workers if workers is None else workers
        in_process = worker and settings.worker_enabled and children == 0
        settings = settings.model_copy(update={"worker_enabled": in_process})
        # uvicorn re-raises the SIGINT/SIGTERM it handled once it has shut down; with
        # Python-level handlers in place that re-raise lands here instead of killing the
        # process, so the worker processes are stopped and the exit is clean.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _after_shutdown)
        children = children if worker else 0
        # before anything imports prometheus_client: its multiprocess mode is chosen then
        metrics = open_metrics(settings, shared=children > 0, fresh=True)
        loops.run(run_server(settings, bind_host, bind_port, children, metrics))


async def run_server(
    settings: Settings, host: str, port: int, children: int, metrics: Metrics = NO_METRICS
) -> None:
    """Open the roles this process plays first (a backend that cannot be reached is one clear
    error, before anything listens), then serve on them until a signal, with the worker(s)
    beside; then stop gracefully (`_stop_gracefully`)."""
    async with open_roles(settings, metrics=metrics) as roles:
        intake = await roles.intake()
        push = await roles.push()  # a push queue runs its tasks in this process
        pushed = push is not None
        pubsub_push = await roles.pubsub_push()  # so does a Pub/Sub push subscription
        async with _in_process_worker(settings, roles, intake, pushed=pushed) as stop_worker:
            if push is None and not settings.worker_enabled:  # else the processing role said it
                roles.announce("intake")
            _freeze_startup_objects()
            deadline = HeaderDeadline(settings.header_timeout_seconds)
            admin = settings.admin_token
            desk = await roles.conversations() if admin and admin.get_secret_value() else None
            config = uvicorn.Config(
                deadline.wrap(create_app(settings, intake, push, metrics, desk, pubsub_push)),
                http=deadline.protocol,
                host=host,
                port=port,
                log_level="warning",
                log_config=None,  # its warnings and errors go through pyloto's redacting handler
                lifespan="off",
                access_log=False,
                # uvicorn stops after the workers' grace (`_serve_until_stopped`), when webhooks
                # are answered 503 at once: a second is plenty, unless the work itself runs in
                # requests (Cloud Tasks pushes it): those get the grace
                timeout_graceful_shutdown=max(1, int(settings.shutdown_grace_seconds))
                if pushed
                else 1,
            )
            async with worker_processes(settings, children) as pool:
                if pool.children:  # else nothing to wake on each webhook
                    intake.wakers.append(pool.wake)

                async def stop_workers() -> None:
                    grace_s = settings.shutdown_grace_seconds
                    await asyncio.gather(stop_worker(), asyncio.to_thread(pool.stop, grace_s))

                await _serve_until_stopped(uvicorn.Server(config), intake, stop_workers)


async def _serve_until_stopped(
    server: uvicorn.Server, intake: Intake, stop_workers: Callable[[], Awaitable[None]]
) -> None:
    """Serve; on the first SIGTERM or SIGINT stop gracefully: webhooks are answered 503 from
    then on (Meta delivers them again), the workers finish what they can within the grace and
    release the rest, and only then does uvicorn stop listening. A second signal stops it now.

    The handlers replace uvicorn's once it has started (it installs its own as it starts)."""
    serving = asyncio.create_task(server.serve())
    while not server.started and not serving.done():  # noqa: ASYNC110 - uvicorn's is a flag
        await asyncio.sleep(_START_WATCH_S)
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []

    async def stop_gracefully() -> None:
        intake.drain()
        try:
            await stop_workers()
        finally:
            server.should_exit = True

    def on_signal() -> None:
        if stopping:  # a second signal: stop now
            server.should_exit = True
            return
        stopping.append(asyncio.create_task(stop_gracefully()))

    # signals reach only the main thread: elsewhere uvicorn's own handling stays
    ours = not serving.done() and threading.current_thread() is threading.main_thread()
    for sig in (signal.SIGINT, signal.SIGTERM) if ours else ():
        loop.add_signal_handler(sig, on_signal)
    try:
        await serving
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM) if ours else ():
            loop.remove_signal_handler(sig)
            signal.signal(sig, _after_shutdown)
        if stopping:
            await stopping[0]


async def _no_worker() -> None:
    """Nothing to stop."""


@contextlib.asynccontextmanager
async def _in_process_worker(
    settings: Settings, roles: Roles, intake: Intake, *, pushed: bool
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """The worker in this process: on its own thread (SQLite, Redis, Pub/Sub), on the web loop
    (the memory queue), or none (not wanted, or a push queue). Yields what stops it early (the
    worker on the web loop stops with the block, after the web side)."""
    if not settings.worker_enabled or pushed:
        yield _no_worker
        return
    if threadable(settings):
        async with worker_thread(
            settings, roles.sqlite, intake, on_failure=_stop_serving, metrics=roles.metrics
        ) as stop:
            yield stop
        return
    worker = await roles.runner()
    intake.wakers.append(worker.notify)
    async with run_worker(worker):
        yield _no_worker


def _stop_serving() -> None:
    """The worker thread failed: stop as on SIGTERM (uvicorn shuts down gracefully) so that a
    supervisor restarts a process that works, instead of one that acks and never answers."""
    os.kill(os.getpid(), signal.SIGTERM)


def _freeze_startup_objects() -> None:
    """Leave what start-up made (modules, clients, prompts: most of the heap) out of every
    later garbage collection: a full collection then walks only what the traffic made, instead
    of holding the GIL for tens of milliseconds while acks wait."""
    gc.collect()
    gc.freeze()


def _after_shutdown(signum: int, frame: object) -> None:
    """Swallow the signal uvicorn re-raises after its graceful shutdown."""


async def run_worker_process(settings: Settings, metrics: Metrics = NO_METRICS) -> None:
    """Open the processing role and run its worker until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(stop_when_orphaned(stop, settings.parent_pid))
    try:
        async with open_roles(settings, metrics=metrics) as roles:
            worker = await roles.runner()
            _freeze_startup_objects()
            stop_listening = listen_for_wakes(loop, settings.wake_fd, worker.notify)
            announce_ready(settings.ready_fd)
            try:
                await worker.run(stop)
            finally:
                stop_listening()
    finally:
        watcher.cancel()


def worker() -> None:
    """Process the queue without serving HTTP (more workers on one queue)."""
    with boundary(_console):
        settings = Settings()
        configure_logging(settings.log_format, settings.log_level, server=True)
        # a child of `serve --workers N` adds to its parent's /metrics; a lone worker has none
        under_serve = settings.parent_pid is not None
        metrics = open_metrics(settings, shared=True, fresh=False) if under_serve else NO_METRICS
        loops.run(run_worker_process(settings, metrics))


def register(app: typer.Typer) -> None:
    """Add these commands to the app."""
    app.command()(serve)
    app.command()(worker)
