"""The request pipeline: the one home of everything request-scoped on /v1 and /v2.

An ASGI middleware around the gateway's routes. For each API request it

1. makes the request context (gateway/scope/context.py): request id (the client's
   `X-Request-Id` or a fresh one), caller, and after step 2 the principal;
2. authenticates the API key (`Authorization: Bearer` or `api-key`) when keys are configured;
3. admits the request against the key's rate limits (requests/min, parallel requests, tokens/min)
   and counts the tokens the engine reports when the response is done;
4. counts it in flight;
5. stamps `x-request-id`, the `x-ratelimit-*` headers and `x-cache` on the response, streams too;
6. writes one access-log line when the last byte has been sent (or the client went away).

Errors raised here or anywhere below are rendered in the protocol's own shape by
`gateway.errors.render`. Backend admission (in flight and queue per backend) lives with the
backend (gateway/scope/admission.py), since only the router knows which backend a request goes to.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, render
from gateway.scope.context import RequestContext, request_id
from gateway.scope.keys import KeyRing, token_from_headers
from gateway.scope.limiter import NO_LIMITS, Lease, RateLimiter
from settings import Settings

log = logging.getLogger("gateway")
access_log = logging.getLogger("gateway.access")

API_PREFIXES = ("/v1/", "/v2/")
OPS_PATHS = ("/status",)  # need a key when `auth.protect_ops` is set

IN_FLIGHT = Gauge(
    "gateway_requests_in_flight",
    "API requests the gateway is serving right now.",
    multiprocess_mode="livesum",
)
REQUESTS = Counter(
    "gateway_requests",
    "Finished API requests by API key name, status class and backend.",
    ["key", "status", "backend"],
)
LATENCY = Histogram(
    "gateway_request_duration_seconds",
    "Finished API requests: from the first byte in to the last byte out, by backend.",
    ["backend"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
FIRST_BYTE = Histogram(
    "gateway_time_to_first_byte_seconds",
    "From the request to the first body bytes out (a stream's first token), by backend.",
    ["backend"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RATE_LIMITED = Counter(
    "gateway_rate_limited", "Requests refused with 429 by the per-key limits.", ["key"]
)


@dataclass
class PipelineParts:
    """What the pipeline works with; the Gateway service makes it at start (app.state.pipeline)."""

    settings: Settings
    keys: KeyRing
    limiter: RateLimiter

    @classmethod
    def from_settings(cls, settings: Settings) -> PipelineParts:
        return cls(
            settings, KeyRing.load(settings.auth), RateLimiter.from_settings(settings.ratelimit)
        )

    async def aclose(self) -> None:
        await self.limiter.aclose()


def is_api(path: str) -> bool:
    return path.startswith(API_PREFIXES) or path in ("/v1", "/v2")


class Pipeline:
    """In the gateway's app for /v1 and /v2 (its parts on `app.state.pipeline`); and, with
    `paths` and `parts`, in front of the Gateway service's typed BentoML APIs (service.py)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        paths: tuple[str, ...] = (),
        parts: Callable[[], PipelineParts | None] | None = None,
    ) -> None:
        self.app = app
        self.paths = paths
        self.parts = parts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if self.parts is not None:
            parts = self.parts()
            wanted = path in self.paths
        else:
            parts = getattr(scope["app"].state, "pipeline", None)
            wanted = is_api(path) or (
                parts is not None and path in OPS_PATHS and parts.settings.auth.protect_ops
            )
        if parts is None or not wanted:
            await self.app(scope, receive, send)
            return
        await self._serve(parts, scope, receive, send)

    async def _serve(
        self, parts: PipelineParts, scope: Scope, receive: Receive, send: Send
    ) -> None:
        headers = Headers(scope=scope)
        settings = parts.settings
        ctx = RequestContext(
            request_id(headers.get(settings.log.request_id_header)),
            scope["method"],
            scope["path"],
            caller=headers.get(settings.routing.caller_header) or None,
        )
        scope.setdefault("state", {})["ctx"] = ctx
        lease: Lease = NO_LIMITS
        started = False

        async def send_stamped(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                ctx.status = message["status"]
                stamp = MutableHeaders(scope=message)
                stamp["x-request-id"] = ctx.request_id
                for name, value in lease.headers().items():
                    if name not in stamp:
                        stamp[name] = value
                if ctx.cache:
                    stamp["x-cache"] = ctx.cache
            elif ctx.first_byte is None and message.get("body"):
                ctx.first_byte = time.perf_counter()
            await send(message)

        IN_FLIGHT.inc()
        try:
            try:
                ctx.key = parts.keys.authenticate(token_from_headers(headers))
                if ctx.key is not None:
                    lease = await parts.limiter.admit(ctx.key)
                await self.app(scope, receive, send_stamped)
            except GatewayError as err:
                if err.status == 429:
                    RATE_LIMITED.labels(key=ctx.key_name or "").inc()
                if started:
                    raise
                await render(ctx.path, err)(scope, receive, send_stamped)
            except Exception as exc:
                log.exception("unhandled error on %s (request %s)", ctx.path, ctx.request_id)
                if started:
                    raise
                internal = GatewayError(f"Internal error: {type(exc).__name__}: {exc}")
                await render(ctx.path, internal)(scope, receive, send_stamped)
        finally:
            IN_FLIGHT.dec()
            await settle(ctx, lease, settings)


async def settle(ctx: RequestContext, lease: Lease, settings: Settings) -> None:
    """The end of a request, whatever its protocol: its tokens counted against the key, its
    parallel slot freed, its metrics and access-log line written."""
    try:
        if ctx.tokens:
            await lease.add_tokens(ctx.tokens)
    finally:
        await lease.release()
        finished(ctx, settings)


def finished(ctx: RequestContext, settings: Settings) -> None:
    """Count the request and write its access-log line."""
    status = ctx.status or 499  # nothing was sent: the client went away first
    backend = ctx.backend or ""
    now = time.perf_counter()
    REQUESTS.labels(key=ctx.key_name or "", status=f"{status // 100}xx", backend=backend).inc()
    LATENCY.labels(backend=backend).observe(now - ctx.started)
    if ctx.first_byte is not None:
        FIRST_BYTE.labels(backend=backend).observe(ctx.first_byte - ctx.started)
    if not settings.log.access_log:
        return
    record: dict[str, Any] = {
        "request_id": ctx.request_id,
        "key": ctx.key_name,
        "model": ctx.model,
        "backend": ctx.backend,
        "method": ctx.method,
        "path": ctx.path,
        "status": status,
        "latency_ms": round((now - ctx.started) * 1000, 3),
        "worker": os.getpid(),
    }
    if ctx.prompt_tokens is not None or ctx.completion_tokens is not None:
        record["ttft_ms"] = (
            round((ctx.first_byte - ctx.started) * 1000, 3) if ctx.first_byte else None
        )
        record["prompt_tokens"] = ctx.prompt_tokens
        record["completion_tokens"] = ctx.completion_tokens
    if ctx.cache:
        record["cache"] = ctx.cache
    if settings.log.format == "json":
        access_log.info(json.dumps(record, separators=(",", ":")))
    else:
        access_log.info(" ".join(f"{k}={v}" for k, v in record.items()))


def configure_access_log() -> None:
    """Access lines go to stderr as they are (one JSON object per line), not through BentoML's
    formatter; idempotent."""
    if not access_log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    access_log.disabled = False  # a later logging.config (BentoML's) must not silence it
