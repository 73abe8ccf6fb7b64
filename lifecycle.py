"""Process lifecycle shared by every service of the bundle: drain on SIGTERM, die with the parent.

Standard library and Starlette (BentoML only for the one method it mends), so the gateway and
the runners both use it.

    die_with_parent()       the kernel sends this process SIGTERM when its parent dies, so no
                            worker outlives `bentoml serve` (nor a supervisor its owner)
    install_drain(...)      SIGTERM/SIGINT drain the worker instead of stopping it (see Drain)
    DrainMiddleware         counts requests in flight; while draining /readyz answers 503 and,
                            where the service refuses new work, so does every new request
    tune_gc()               once a service has started: the garbage collector stops scanning
                            what startup made and runs less often (see its docstring)
    mend_bentoml_timeout()  BentoML's `traffic.timeout` without a timer left behind per request;
                            done when this module is imported (every service imports it)

How a worker drains (`Drain`): readiness turns 503 at once; new requests get 503 + Retry-After
(the gateway) or are still served (the runners: their only client is the draining gateway, whose
requests in flight may still need them); requests in flight run to completion up to `timeout_s`;
then streams still running are ended with an error event by their relays (`DRAIN.past_deadline`)
and get `final_grace_s` more; then uvicorn stops the worker, which exits 0. A second signal goes
straight to the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from settings import DrainSettings

log = logging.getLogger("lifecycle")

PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PROBES = ("/readyz", "/livez", "/metrics")
DRAINING = b"The server is shutting down; retry shortly (another replica will answer).\n"


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Linux: have `sig` sent to this process when its parent dies (a no-op elsewhere).

    BentoML starts each service worker in a session of its own, so a SIGKILL of the
    `bentoml serve` process (circus' arbiter) reaches none of them; with this they drain and exit
    instead of holding the port. Safe in a `preexec_fn` (libc is loaded at import, not after
    fork). If the parent is already gone, the signal is sent now.
    """
    if _LIBC is None:
        return
    parent = os.getppid()
    _LIBC.prctl(PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


GC_THRESHOLD = (50_000, 10, 10)  # Python's default: (700, 10, 10)


def tune_gc() -> None:
    """Keep the garbage collector out of the way of requests. Call it at the end of a service's
    `__init__`, once its imports, model and app exist.

    - Freeze what startup made: Python's full collection walks every tracked object, ~140,000 in
      a gateway worker (91 ms for the ~115,000 of `import service` alone). Relaying 64 streams,
      the worker ran two or three of them per 13 s window, 120-145 ms each, stalling every stream
      at once: that was the tail of its time to first token. Frozen objects are never scanned
      (nor freed by the collector; reference counting still frees them), so a full collection
      costs what serving made since.
      vLLM's engine core does the same after its startup (`vllm.utils.gc_utils.freeze_gc_heap`).
    - Collect the youngest generation after 50,000 net new objects instead of 700: at 700 the
      worker ran 213-257 young and 20-24 middle collections per 13 s window (350-470 ms; each
      request and chunk makes short-lived dicts and coroutines that reference counting frees
      anyway). Cyclic garbage then waits longer to be freed: at most ~50,000 objects' worth.
    Measured with gc.callbacks and `bench.gateway --paths direct gateway` (2 runs each way): at
    c=64 the gateway's TTFT p99 went from 2.4x direct's to 1.5-1.8x, at c=256 its throughput from
    0.66-0.68x of direct's to 0.76-0.77x.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def mend_bentoml_timeout() -> None:
    """Make BentoML's TimeoutMiddleware (`traffic.timeout`) cancel its timer once it is moot.

    BentoML's (1.4.39) arms `loop.call_later(timeout, ...)` for every request, never cancels it,
    and runs the request in a task of its own. Each timer, and the future it holds, lives for the
    whole `traffic.timeout` after its request is done: with the gateway's 3600 s a worker's
    memory grew ~0.7 MB per 1,000 requests and kept growing for an hour (measured: 131 -> 202 MB
    over 100,000 requests, 1,300 requests/s; at that rate an hour holds ~3 GB of dead timers).

    The same contract, mended: a request that has sent nothing after `timeout` seconds is
    cancelled and answered 504 with BentoML's own body; the first message it sends lifts the
    deadline (a stream may then run as long as it likes); the deadline's timer is cancelled
    then or when the request ends; the request runs in its own task, not in a second one.
    Patched on the class, so middleware stacks built before the call use it too.
    """
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    TimeoutMiddleware.__call__ = _first_byte_deadline  # type: ignore[method-assign]


async def _first_byte_deadline(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] not in ("http", "websocket"):
        await self.app(scope, receive, send)
        return
    deadline = asyncio.timeout(self.timeout)
    started = False

    async def send_lifting(message: Message) -> None:
        nonlocal started
        if not started:
            started = True
            deadline.reschedule(None)
        await send(message)

    try:
        async with deadline:
            await self.app(scope, receive, send_lifting)
    except TimeoutError:
        if not deadline.expired() or started:
            raise  # the app's own TimeoutError, not this deadline's
        error = f"Not able to process the request in {self.timeout} seconds"
        await JSONResponse({"error": error}, status_code=504)(scope, receive, send)


class Drain:
    """The drain state of this process (one per worker: `DRAIN`)."""

    def __init__(self) -> None:
        self.draining = False
        self.past_deadline = False  # relays end their streams with an error event once set
        self.inflight = 0
        self.refuse_new = False
        self.retry_after_s = 5
        self.timeout_s = 60.0
        self.final_grace_s = 5.0
        self.quiet_s = 0.0
        self.started_at: float | None = None
        # Work this worker does not count itself: the LLM service sets it to its engine's own
        # count, as the gateway may send requests to the engine's port directly.
        self.busy: Callable[[], Awaitable[bool]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_activity = time.monotonic()
        self._next_probe = 0.0

    def started(self) -> None:
        self.inflight += 1
        self._last_activity = time.monotonic()

    def finished(self) -> None:
        self.inflight -= 1
        self._last_activity = time.monotonic()

    def begin(self, server: Any) -> None:
        """Start draining (first signal) or go to the deadline (second)."""
        if self._task is not None:
            log.warning("second stop signal: ending the %d requests in flight now", self.inflight)
            self.past_deadline = True
            return
        self.draining = True
        self.started_at = time.monotonic()
        log.info(
            "draining: %d requests in flight, up to %.0f s (pid %d)",
            self.inflight,
            self.timeout_s,
            os.getpid(),
        )
        self._task = asyncio.get_running_loop().create_task(self._drain(server))

    async def _drain(self, server: Any) -> None:
        assert self.started_at is not None
        deadline = self.started_at + self.timeout_s
        while time.monotonic() < deadline and not self.past_deadline:
            if self._settled() and not await self._busy():
                break
            await asyncio.sleep(0.05)
        if self.inflight:
            self.past_deadline = True
            log.warning("drain deadline: cutting %d requests still in flight", self.inflight)
            grace_end = time.monotonic() + self.final_grace_s
            while self.inflight and time.monotonic() < grace_end:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        log.info("drained in %.1f s; stopping", time.monotonic() - self.started_at)
        if server is not None:
            server.config.timeout_graceful_shutdown = self.final_grace_s  # uvicorn's backstop
            server.should_exit = True

    def _settled(self) -> bool:
        return self.inflight == 0 and time.monotonic() - self._last_activity >= self.quiet_s

    async def _busy(self) -> bool:
        """`busy()`, asked at most twice a second; a probe that fails or hangs says idle (an
        engine that does not answer has nothing left to finish)."""
        if self.busy is None:
            return False
        now = time.monotonic()
        if now < self._next_probe:
            return True
        self._next_probe = now + 0.5
        try:
            return await asyncio.wait_for(self.busy(), 2.0)
        except Exception as exc:
            log.warning("drain: the busy probe failed (%s); taking it as idle", exc)
            return False


DRAIN = Drain()


def install_drain(
    *,
    timeout_s: float,
    final_grace_s: float,
    retry_after_s: int,
    refuse_new: bool,
    quiet_s: float = 0.0,
) -> None:
    """Take SIGTERM and SIGINT over from uvicorn in this worker, to drain first.

    Call it from the service's `__init__` (BentoML runs it in the worker's main thread, inside
    uvicorn's startup, after uvicorn installed its own handlers; uvicorn is the one that stops).
    """
    DRAIN.timeout_s, DRAIN.final_grace_s = timeout_s, final_grace_s
    DRAIN.retry_after_s, DRAIN.refuse_new, DRAIN.quiet_s = retry_after_s, refuse_new, quiet_s
    previous = signal.getsignal(signal.SIGTERM)
    server = getattr(previous, "__self__", None)  # uvicorn.Server.handle_exit, bound
    if server is None or not hasattr(server, "should_exit"):
        log.warning("no uvicorn server found; stop signals will not drain this process")
        return
    loop = asyncio.get_running_loop()

    def on_signal(signum: int, _frame: object) -> None:
        loop.call_soon_threadsafe(DRAIN.begin, server)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def drain_entry(settings: DrainSettings) -> None:
    """The gateway: refuses new requests while draining, cuts streams at the deadline."""
    install_drain(
        timeout_s=settings.timeout_s,
        final_grace_s=settings.final_grace_s,
        retry_after_s=settings.retry_after_s,
        refuse_new=True,
    )


def drain_runner(settings: DrainSettings) -> None:
    """A runner: serves on while its client (the gateway) drains, and outlives its deadline."""
    install_drain(
        timeout_s=settings.timeout_s + settings.final_grace_s + 5,
        final_grace_s=settings.final_grace_s,
        retry_after_s=settings.retry_after_s,
        refuse_new=False,
        quiet_s=settings.runner_quiet_s,
    )


class DrainMiddleware:
    """Counts this worker's requests in flight and answers for it while it drains.

    `leave` names the paths another layer counts and refuses in its protocol's own shape: the
    gateway's request scope (gateway/scope/pipeline.py) does for its API routes, HTTP and gRPC
    alike. The rest (a runner's APIs, the gateway's /status and /docs) get a plain 503 here."""

    def __init__(self, app: ASGIApp, *, leave: Callable[[str], bool] | None = None) -> None:
        self.app = app
        self.leave = leave

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path in PROBES:
            if path == "/readyz" and DRAIN.draining:
                await _plain(send, 503, b"draining\n", DRAIN.retry_after_s)
                return
            await self.app(scope, receive, send)
            return
        if self.leave is not None and self.leave(path):
            await self.app(scope, receive, send)
            return
        if DRAIN.draining and DRAIN.refuse_new:
            await _plain(send, 503, DRAINING, DRAIN.retry_after_s)
            return
        DRAIN.started()
        try:
            await self.app(scope, receive, send)
        finally:
            DRAIN.finished()


async def _plain(send: Send, status: int, body: bytes, retry_after_s: int) -> None:
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(retry_after_s).encode()),
            (b"connection", b"close"),
        ],
    }
    with contextlib.suppress(OSError):
        await send(start)
        await send({"type": "http.response.body", "body": body})


mend_bentoml_timeout()  # on import: every service of the bundle imports this module
