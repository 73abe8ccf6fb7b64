"""The request scope: the one home of everything request-scoped, over HTTP and gRPC alike.

`PipelineParts.request(headers, method, path)` is an async context manager that, for one request,

1. refuses it while this worker drains (`Draining`, 503 with Retry-After; lifecycle.py);
2. makes the request context (gateway/scope/context.py): request id (the client's
   `X-Request-Id`, else a gRPC infer request's `id`, else a fresh one), caller, principal;
3. authenticates the API key (`Authorization: Bearer` or `api-key`) when keys are configured;
4. takes its class from `X-Priority` (capped by the key's `max_priority`; the router reads a
   body's `service_tier`), and admits it against the key's rate limits (requests/min,
   parallel requests, tokens/min);
5. counts it in flight (the gateway's gauge and the drain's count);
6. at the end counts the tokens the engine reported against the key, frees its parallel slot,
   and writes its metrics and its one access-log line.

Errors raised inside come out as `GatewayError`s (anything else is logged and becomes a 500), with
the context's status set, for the transport to answer in its own shape. The two transports are
thin: `Pipeline` below (ASGI middleware for /v1, /v2 and the typed BentoML APIs: it stamps
`x-request-id`, `x-ratelimit-*` and `x-cache` on the response, streams too, and renders errors
with `gateway.errors.render`) and the gRPC servicer (gateway/kserve/grpc.py: trailing metadata
and gRPC status codes). Backend admission (in flight and queue per backend) lives with the
backend (gateway/scope/admission.py), since only the router knows which backend a request takes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import lifecycle
from gateway.errors import Draining, GatewayError, render
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


class Call:
    """One request inside the scope (`async with parts.request(...) as call`): its context and
    the key's lease on its limits. Made before entering, so that a transport has the request id
    for its answer even when entering fails (a bad key, a limit, the drain)."""

    def __init__(self, parts: PipelineParts, ctx: RequestContext, headers: Mapping[str, str]):
        self.parts = parts
        self.ctx = ctx
        self.lease: Lease = NO_LIMITS
        self._headers = headers

    def response_headers(self) -> dict[str, str]:
        """What every answer carries: the request id, the key's limits, the cache verdict."""
        out = {"x-request-id": self.ctx.request_id, **self.lease.headers()}
        if self.ctx.cache:
            out["x-cache"] = self.ctx.cache
        return out

    async def __aenter__(self) -> Call:
        IN_FLIGHT.inc()
        lifecycle.DRAIN.started()
        try:
            drain = lifecycle.DRAIN
            if drain.draining and drain.refuse_new:
                raise Draining(drain.retry_after_s)
            self.ctx.key = self.parts.keys.authenticate(token_from_headers(self._headers))
            self.ctx.ask_priority(self._headers.get("x-priority"), param="X-Priority")
            if self.ctx.key is not None:
                self.lease = await self.parts.limiter.admit(self.ctx.key)
        except BaseException as exc:
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise  # not reached: __aexit__ raises
        return self

    async def __aexit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        ctx = self.ctx
        try:
            if isinstance(exc, GatewayError):
                if exc.status == 429:
                    RATE_LIMITED.labels(key=ctx.key_name or "").inc()
                ctx.status = ctx.status or exc.status
            elif isinstance(exc, Exception):
                log.exception("unhandled error on %s (request %s)", ctx.path, ctx.request_id)
                internal = GatewayError(f"Internal error: {type(exc).__name__}: {exc}")
                ctx.status = ctx.status or internal.status
                raise internal from exc
        finally:
            IN_FLIGHT.dec()
            lifecycle.DRAIN.finished()
            await settle(ctx, self.lease, self.parts.settings)
        if exc is not None:
            raise exc


@dataclass
class PipelineParts:
    """What the scope works with; the Gateway service makes it at start (app.state.pipeline)."""

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

    def request(
        self, headers: Mapping[str, str], method: str, path: str, *, client_id: str = ""
    ) -> Call:
        """The scope of one request (see the module docstring), to enter with `async with`;
        `headers` are looked up by lowercase name (Starlette's Headers, or gRPC metadata)."""
        settings = self.settings
        ctx = RequestContext(
            request_id(headers.get(settings.log.request_id_header.lower()) or client_id),
            method,
            path,
            caller=headers.get(settings.routing.caller_header.lower()) or None,
        )
        return Call(self, ctx, headers)


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
        call = parts.request(Headers(scope=scope), scope["method"], scope["path"])
        ctx = scope.setdefault("state", {})["ctx"] = call.ctx
        started = False

        async def send_stamped(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                ctx.status = message["status"]
                stamp = MutableHeaders(scope=message)
                for name, value in call.response_headers().items():
                    if name == "x-request-id" or name not in stamp:  # ours, even if relayed
                        stamp[name] = value
            elif ctx.first_byte is None and message.get("body"):
                ctx.first_byte = time.perf_counter()
            await send(message)

        watch = ClientWatch(receive, lambda: started, ctx)
        try:
            async with call, watch:
                await self.app(scope, watch.receive, send_stamped)
        except GatewayError as err:
            if started:
                raise
            await render(ctx.path, err)(scope, receive, send_stamped)
        except asyncio.CancelledError:
            if not watch.dropped:
                raise
            # The client left before its answer began: the request gave up its place (in a
            # backend's queue, or its call upstream) and is logged as 499; nothing to answer.


class ClientWatch:
    """Notices a client that goes away before its answer begins, and cancels the request then.

    A request waiting for a backend's slot (admission) or for a non-streamed answer reads
    nothing more from its client, so without this it keeps its place in the queue and its
    engine time for no one. Once the app has read the body, this watch alone reads the client
    (`receive`), and hands the app a disconnect when it comes (Starlette's streaming responses
    listen for one). A request whose answer has begun is left to its response, which stops
    streaming on the disconnect."""

    def __init__(
        self, receive: Receive, answering: Callable[[], bool], ctx: RequestContext | None = None
    ) -> None:
        self._receive = receive
        self._answering = answering
        self._ctx = ctx  # its body_read is stamped when the last body byte arrives
        self._body_read = asyncio.Event()
        self._gone = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watched: asyncio.Task[Any] | None = None
        self.dropped = False  # the request was cancelled because its client left

    async def receive(self) -> Message:
        if self._body_read.is_set():
            await self._gone.wait()
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._gone.set()
        elif not message.get("more_body", False):
            self._body_read.set()
            if self._ctx is not None:
                self._ctx.body_read = time.perf_counter()
        return message

    async def __aenter__(self) -> ClientWatch:
        self._watched = asyncio.current_task()
        self._task = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        if self.dropped and self._watched is not None:
            self._watched.uncancel()

    async def _watch(self) -> None:
        await self._body_read.wait()
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._gone.set()
        if not self._answering() and self._watched is not None:
            self.dropped = True
            self._watched.cancel()


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
        "endpoint": ctx.endpoint,
        "priority": ctx.priority,
        "method": ctx.method,
        "path": ctx.path,
        "status": status,
        "latency_ms": round((now - ctx.started) * 1000, 3),
        # until the body was all in: the client's sending, not the gateway's work
        **({"body_ms": round((ctx.body_read - ctx.started) * 1000, 3)} if ctx.body_read else {}),
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
    if ctx.steps:
        record["chain"] = ctx.steps
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
