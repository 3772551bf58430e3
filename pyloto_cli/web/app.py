"""The ASGI app: Meta's verify handshake and webhook, health checks, the Cloud Tasks endpoint.

The webhook does three things and nothing else: check the signature over the raw bytes, split
the payload into tasks, and store them. The 200 goes out only after the store committed; if
storing fails the answer is 503 so that Meta retries. Whatever else a request holds is refused
with a 4xx and nothing stored: a missing, repeated or malformed signature 401; a body not
received within the body timeout 408, above Meta's 3 MiB maximum 413 (both as soon as it is
known, without reading the rest, and the connection closed); a content type other than JSON,
a body that is not UTF-8 JSON of a webhook's shape, or nested too deep, 400.
"""

from __future__ import annotations

import hmac
import logging
import time

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from pyloto_cli.domain.errors import MalformedPayload, SignatureError, WebhookRejected
from pyloto_cli.domain.signature import verify_signature
from pyloto_cli.domain.webhook import split_webhook
from pyloto_cli.domain.webhook_json import parse_webhook_body
from pyloto_cli.logs import get_logger, log_event
from pyloto_cli.pipeline.conversations import ConversationDesk
from pyloto_cli.ports import NO_METRICS, Metrics
from pyloto_cli.settings import Settings
from pyloto_cli.web.admin import admin_routes, authorized
from pyloto_cli.web.body import CLOSE, read_body
from pyloto_cli.web.intake import Intake
from pyloto_cli.web.pubsub_push import PubSubPushRole, process_pubsub_push
from pyloto_cli.web.tasks import PushRole, process_pushed

_log = get_logger("web")


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def _intake(request: Request) -> Intake:
    intake: Intake = request.app.state.intake
    return intake


async def verify_handshake(request: Request) -> Response:
    """GET: echo `hub.challenge` when the mode is subscribe and the verify token matches."""
    params = request.query_params
    expected = _settings(request).whatsapp_verify_token
    token = params.get("hub.verify_token", "")
    if params.get("hub.mode") != "subscribe":
        reason = "verify mode is not subscribe"
    elif expected is None:
        reason = "no verify token configured"
    elif not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        reason = "verify token mismatch"
    else:
        return PlainTextResponse(params.get("hub.challenge", ""))
    log_event(_log, "webhook_rejected", reason=reason, method="GET")
    _metrics(request).webhook_rejected("verify_token")
    return PlainTextResponse("forbidden", status_code=403)


async def receive_webhook(request: Request) -> Response:
    """POST: signed body -> tasks -> durable store -> 200 (or 4xx/503, nothing half-done)."""
    intake = _intake(request)
    settings = _settings(request)
    metrics = _metrics(request)
    started = time.perf_counter()
    if intake.draining:  # stopping: what is stored now might wait for the next process
        metrics.webhook_rejected("draining")
        return PlainTextResponse("shutting down", status_code=503, headers=CLOSE)
    try:
        body = await read_body(request, settings.body_timeout_seconds)
        secret = settings.whatsapp_app_secret
        if secret is None:  # serve generates one; a runtime without one accepts nothing
            raise MalformedPayload("no app secret configured")
        verify_signature(secret.get_secret_value().encode(), body, _signature_header(request))
        _check_content_type(request)
        tasks = split_webhook(parse_webhook_body(body), time.time())
    except WebhookRejected as exc:
        log_event(_log, "webhook_rejected", reason=str(exc), status=exc.status_code)
        metrics.webhook_rejected(type(exc).__name__)
        headers = CLOSE if exc.status_code in (408, 413) else None
        return PlainTextResponse(str(exc), status_code=exc.status_code, headers=headers)
    except ClientDisconnect:
        return Response(status_code=400)
    log_event(_log, "webhook_received", logging.DEBUG, items=len(tasks), bytes=len(body))
    metrics.webhook_received()
    try:
        result = await intake.store(tasks)
    except Exception as exc:  # storing failed: Meta must retry, so never 200
        _log.exception("webhook_store_failed", extra={"fields": {"error": type(exc).__name__}})
        return PlainTextResponse("temporarily unavailable", status_code=503)
    intake.notify()
    metrics.tasks_enqueued(len(result.enqueued))
    metrics.duplicates_skipped("enqueue", len(result.duplicates))
    log_event(
        _log,
        "webhook_enqueued",
        enqueued=len(result.enqueued),
        duplicates=len(result.duplicates),
        ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return PlainTextResponse("OK")


def _signature_header(request: Request) -> bytes | None:
    """The one `X-Hub-Signature-256` value as sent (bytes); several are a refusal."""
    values = [value for name, value in request.headers.raw if name == b"x-hub-signature-256"]
    if len(values) > 1:
        raise SignatureError("several X-Hub-Signature-256 headers")
    return values[0] if values else None


def _check_content_type(request: Request) -> None:
    """Meta sends `application/json`; a body declared as anything else is not a webhook (a
    request without the header is read as JSON, as curl and test clients send it)."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    media_type, *params = declared.split(";")
    charset = "utf-8"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    if media_type.strip().lower() != "application/json" or charset not in ("utf-8", "utf8"):
        raise MalformedPayload("Content-Type must be application/json (UTF-8)")


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return PlainTextResponse("ok")


async def readyz(request: Request) -> Response:
    """Readiness: the queue and stores are open and answer, and the process is not stopping."""
    if _intake(request).draining:
        return JSONResponse({"ready": False, "error": "shutting down"}, status_code=503)
    try:
        checks = await _intake(request).check_ready()
    except Exception as exc:  # readiness reports, it does not crash
        return JSONResponse({"ready": False, "error": type(exc).__name__}, status_code=503)
    return JSONResponse({"ready": True, **checks})


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus exposition; with an admin token set, only for `Authorization: Bearer` it."""
    token = _settings(request).admin_token
    if token is not None and token.get_secret_value() and not authorized(request, token):
        return PlainTextResponse(
            "unauthorized", status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )
    metrics = _metrics(request)
    admin = _intake(request).admin
    if admin is not None:  # the queue's own view, read now: other processes change it too
        try:
            metrics.queue_stats(await admin.stats())
        except Exception as exc:  # the other metrics still answer; the gauges keep their value
            log_event(_log, "metrics_queue_stats_failed", error=type(exc).__name__)
    body, content_type = metrics.render()
    return Response(body, headers={"Content-Type": content_type})


def create_app(
    settings: Settings,
    intake: Intake,
    push: PushRole | None = None,
    metrics: Metrics = NO_METRICS,
    conversations: ConversationDesk | None = None,
    pubsub_push: PubSubPushRole | None = None,
) -> Starlette:
    """The ASGI app over roles the caller opened (and closes): `intake` takes webhooks in;
    `push`, for a push queue (Cloud Tasks), runs what `/tasks/process` is given; `pubsub_push`
    what a Pub/Sub push subscription sends to `/pubsub/push`. `GET /metrics` exists only when
    `settings.metrics` is on (else 404); the admin API over `conversations` only when
    PYLOTO_ADMIN_TOKEN is set (web/admin.py)."""
    routes = [
        Route("/webhooks/whatsapp", verify_handshake, methods=["GET"]),
        Route("/webhooks/whatsapp", receive_webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/tasks/process", process_pushed, methods=["POST"]),
        Route("/pubsub/push", process_pubsub_push, methods=["POST"]),
    ]
    if settings.metrics:
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    token = settings.admin_token
    if conversations is not None and token is not None and token.get_secret_value():
        routes.extend(admin_routes())
    app = Starlette(routes=routes)
    app.state.admin_token = token
    app.state.conversations = conversations
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.intake = intake
    app.state.push = push
    app.state.pubsub_push = pubsub_push
    return app
