"""Adapter for any server that speaks OpenAI's HTTP API: the bundled vLLM, remote vLLM, SGLang.

Bodies pass through unchanged except `model`, so every parameter the engine accepts works, and
streamed server-sent events are relayed byte for byte.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
from collections.abc import AsyncIterator

import anyio
import httpx

from gateway.adapters.base import InferRequest, InferResponse
from gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
)

PATHS = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "responses": "/v1/responses",
}


# httpcore's pool checks every one of its connections (a poll() each) on every request it
# assigns, so one pool of hundreds of busy streaming connections costs O(connections) per request:
# profiled at c=64 it was a quarter of the gateway's CPU. Several small pools, taken in turn, keep
# each scan short.
POOL_SHARDS = 16


def make_client(url: str, *, timeout_s: float, max_connections: int = 512) -> PooledClients:
    """The clients of one upstream: `POOL_SHARDS` pools sharing `max_connections`.

    Besides http(s) URLs this takes the forms BentoML uses to wire services on one host:
    `file:///path/x.sock` (a Unix socket) and `tcp://host:port`.
    """
    per_shard = max(1, max_connections // POOL_SHARDS)
    return PooledClients(
        [_client(url, timeout_s=timeout_s, max_connections=per_shard) for _ in range(POOL_SHARDS)]
    )


class PooledClients:
    """httpx clients used in turn; `first` for health checks and settings."""

    def __init__(self, clients: list[httpx.AsyncClient]) -> None:
        self.clients = clients
        self.first = clients[0]
        self._turn = itertools.cycle(clients)

    def next(self) -> httpx.AsyncClient:
        return next(self._turn)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


def _client(url: str, *, timeout_s: float, max_connections: int) -> httpx.AsyncClient:
    timeout = httpx.Timeout(timeout_s, connect=5.0)
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    if url.startswith(("file://", "unix://")):
        path = urllib.parse.unquote(urllib.parse.urlparse(url).path)
        transport = httpx.AsyncHTTPTransport(uds=path, limits=limits)
        return httpx.AsyncClient(base_url="http://localhost", transport=transport, timeout=timeout)
    if url.startswith("tcp://"):
        url = "http://" + url.removeprefix("tcp://")
    return httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout, limits=limits)


class OpenAIAdapter:
    def __init__(
        self,
        name: str,
        client: httpx.AsyncClient | PooledClients,
        *,
        api_key: str | None = None,
        health_path: str = "/health",
    ) -> None:
        self.name = name
        self._pool = client if isinstance(client, PooledClients) else PooledClients([client])
        self._client = self._pool.first
        # The bundled engine's BentoML service answers /readyz itself (its own check of vLLM);
        # its /health would be proxied to vLLM and log an error while vLLM boots.
        self._health_path = health_path
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _headers_for(self, request: InferRequest) -> dict[str, str]:
        """vLLM and SGLang take the request id from X-Request-Id and log it."""
        if request.request_id is None:
            return self._headers
        return {**self._headers, "X-Request-Id": request.request_id}

    async def predict(self, request: InferRequest) -> InferResponse:
        body = {**request.payload, "model": request.model, "stream": False}
        try:
            r = await self._pool.next().post(
                PATHS[request.task], json=body, headers=self._headers_for(request)
            )
        except httpx.TimeoutException:
            raise BackendTimeout(self.name, self._client.timeout.read or 0) from None
        except httpx.TransportError as exc:
            raise BackendUnavailable(self.name, _describe(exc)) from None
        if r.status_code != 200:
            raise self._upstream_error(r.status_code, r.content, r.headers)
        return InferResponse(body=r.json())

    async def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        body = {**request.payload, "model": request.model, "stream": True}
        client = self._pool.next()
        req = client.build_request(
            "POST", PATHS[request.task], json=body, headers=self._headers_for(request)
        )
        try:
            r = await client.send(req, stream=True)
        except httpx.TimeoutException:
            raise BackendTimeout(self.name, self._client.timeout.read or 0) from None
        except httpx.TransportError as exc:
            raise BackendUnavailable(self.name, _describe(exc)) from None
        try:
            if r.status_code != 200:
                raise self._upstream_error(r.status_code, await r.aread(), r.headers)
            async for chunk in r.aiter_raw():
                yield chunk
        except httpx.TransportError as exc:
            raise BackendError(self.name, f"stream broke off: {_describe(exc)}") from None
        finally:
            # Shielded: a client that went away cancels this task, and anyio cancels every await
            # in it again; unshielded, the close would not happen and the engine would go on
            # generating for nobody.
            with anyio.CancelScope(shield=True):
                await r.aclose()

    async def health(self) -> bool:
        try:
            r = await self._client.get(self._health_path, timeout=2.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def aclose(self) -> None:
        await self._pool.aclose()

    def _upstream_error(
        self, status: int, content: bytes, headers: httpx.Headers | None = None
    ) -> GatewayError:
        """Client errors keep the engine's message and param; server errors name the backend;
        a 429 (the upstream's own limit) is an overload, with the upstream's Retry-After."""
        message, param = _error_fields(content)
        if status == 429:
            retry_after = headers.get("retry-after", "1") if headers is not None else "1"
            return BackendOverloaded(self.name, message, retry_after=retry_after)
        if 400 <= status < 500:
            return InvalidRequest(message, param=param, status=status)
        if status == 503:
            return BackendUnavailable(self.name, message)
        return BackendError(self.name, f"HTTP {status}: {message}")


def _error_fields(content: bytes) -> tuple[str, str | None]:
    """(message, param) from an OpenAI-shaped error body, or the body's text."""
    try:
        data = json.loads(content)
    except ValueError:
        return content.decode(errors="replace").strip()[:500] or "no details", None
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        param = err.get("param")
        return str(err.get("message") or err.get("detail") or err), param and str(param)
    return str(err), None


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
