"""Adapter for any server that speaks OpenAI's HTTP API: the bundled vLLM, remote vLLM, SGLang.

Bodies pass through unchanged except `model`, so every parameter the engine accepts works, and
streamed server-sent events are relayed byte for byte.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from gateway.adapters.base import InferRequest, InferResponse
from gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
)

VLLM_PRIORITY = {"high": -1, "normal": 0, "low": 1}  # vLLM: lower is handled earlier
SERVICE_TIER = {"high": "priority", "normal": "default", "low": "flex"}  # OpenAI's names

PATHS = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "responses": "/v1/responses",
}


def make_client(url: str, *, timeout_s: float, max_connections: int = 512) -> UpstreamClient:
    """The pooled client of one upstream (see `UpstreamClient`).

    Besides http(s) URLs this takes the forms BentoML uses to wire services on one host:
    `file:///path/x.sock` (a Unix socket) and `tcp://host:port`.
    """
    return UpstreamClient(url, timeout_s=timeout_s, max_connections=max_connections)


class UpstreamClient:
    """One aiohttp session per upstream, made on first use (inside the serving event loop).

    aiohttp, not httpx: relaying a stream is a read and a write per chunk, and httpx's read path
    (httpcore, h11, an anyio cancel scope per read) cost the gateway about 40 us of CPU per relayed
    chunk at c=64, half of all it spent; aiohttp's C parser and buffered reader take a fraction of
    that (bench/gateway.py, the note of issue 14). Its pool holds idle connections per host and
    hands one out without scanning the busy ones.
    """

    def __init__(self, url: str, *, timeout_s: float, max_connections: int = 512) -> None:
        self.timeout_s = timeout_s
        self._socket: str | None = None
        self._proxy: str | None = None  # BentoML's own wiring (sockets, tcp://) takes none
        if url.startswith(("file://", "unix://")):
            self._socket = urllib.parse.unquote(urllib.parse.urlparse(url).path)
            self.base = "http://localhost"
        elif url.startswith("tcp://"):
            self.base = "http://" + url.removeprefix("tcp://").rstrip("/")
        else:
            self.base = url.rstrip("/")
            self._proxy = env_proxy(self.base)
        # connect: 5 s; then `timeout_s` at most between two reads (a stream's next chunk)
        self._timeout = aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector
            if self._socket is not None:
                connector = aiohttp.UnixConnector(self._socket, limit=self._max_connections)
            else:
                connector = aiohttp.TCPConnector(limit=self._max_connections)
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, proxy=self._proxy
            )
        return self._session

    def url(self, path: str) -> str:
        return self.base + path

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def env_proxy(url: str) -> str | None:
    """The proxy HTTP(S)_PROXY names for `url` unless NO_PROXY exempts it, as httpx and requests
    read them, read once. (aiohttp's own `trust_env` reads the environment and ~/.netrc again on
    every request, in a thread: a fifth of the gateway's CPU at c=64, profiled.)"""
    parts = urllib.parse.urlsplit(url)
    if urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return urllib.request.getproxies().get(parts.scheme)


class OpenAIAdapter:
    def __init__(
        self,
        name: str,
        client: UpstreamClient,
        *,
        api_key: str | None = None,
        health: UpstreamClient | None = None,
        health_path: str = "/health",
        send_priority: bool = False,
    ) -> None:
        self.name = name
        # Each request's class as vLLM's `priority` (lower first): for engines scheduling by it.
        self._send_priority = send_priority
        self._client = client
        self._health = health or client  # the bundled engine: checked through its service
        # The bundled engine's BentoML service answers /readyz itself (its own check of vLLM);
        # its /health would be proxied to vLLM and log an error while vLLM boots.
        self._health_path = health_path
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _headers_for(self, request: InferRequest) -> dict[str, str]:
        """vLLM and SGLang take the request id from X-Request-Id and log it."""
        if request.request_id is None:
            return self._headers
        return {**self._headers, "X-Request-Id": request.request_id}

    def _body(self, request: InferRequest, *, stream: bool) -> dict[str, object]:
        body = {**request.payload, "model": request.model, "stream": stream}
        if "service_tier" in body:  # the tier the gateway granted (a key's ceiling caps it)
            body["service_tier"] = SERVICE_TIER[request.priority]
        if self._send_priority:
            body["priority"] = VLLM_PRIORITY[request.priority]
        return body

    async def predict(self, request: InferRequest) -> InferResponse:
        body = self._body(request, stream=False)
        status, content, headers = await self._post(
            PATHS[request.task], body, self._headers_for(request)
        )
        if status != 200:
            raise self._upstream_error(status, content, headers)
        try:
            return InferResponse(body=json.loads(content))
        except ValueError:
            raise BackendError(self.name, "the answer is not JSON") from None

    async def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        body = self._body(request, stream=True)
        client = self._client
        try:
            r = await client.session.post(
                client.url(PATHS[request.task]), json=body, headers=self._headers_for(request)
            )
        except TimeoutError:
            raise BackendTimeout(self.name, client.timeout_s) from None
        except aiohttp.ClientError as exc:
            raise BackendUnavailable(self.name, _describe(exc)) from None
        try:
            if r.status != 200:
                raise self._upstream_error(r.status, await r.read(), r.headers)
            async for chunk in r.content.iter_any():  # whatever has arrived, as it arrives
                yield chunk
        except TimeoutError:
            message = f"stream broke off: no data for {client.timeout_s:g} s"
            raise BackendError(self.name, message) from None
        except aiohttp.ClientError as exc:
            raise BackendError(self.name, f"stream broke off: {_describe(exc)}") from None
        finally:
            # Synchronous, so a client that went away (anyio cancels every await of a cancelled
            # task) cannot skip it: a stream read to its end returns its connection to the pool;
            # one cut short closes it, and the engine sees the disconnect and stops generating.
            if r.content.at_eof():
                r.release()
            else:
                r.close()

    async def health(self) -> bool:
        try:
            async with self._health.session.get(
                self._health.url(self._health_path), timeout=aiohttp.ClientTimeout(total=2.0)
            ) as r:
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def engine_metrics(self) -> str | None:
        """The engine's Prometheus page (vLLM's and SGLang's /metrics): its queue, for picking."""
        try:
            async with self._client.session.get(
                self._client.url("/metrics"), timeout=aiohttp.ClientTimeout(total=2.0)
            ) as r:
                return await r.text() if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    async def models(self) -> list[dict[str, Any]] | None:
        """The engine's own /v1/models (a LoRA adapter is one with a `parent`), None if unread."""
        try:
            async with self._client.session.get(
                self._client.url("/v1/models"),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=2.0),
            ) as r:
                data = (await r.json()).get("data") if r.status == 200 else None
        except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError):
            return None
        return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else None

    async def lora_admin(self, path: str, body: Mapping[str, object]) -> tuple[int, str]:
        """POST vLLM's /v1/load_lora_adapter or /v1/unload_lora_adapter: (status, message)."""
        status, content, _ = await self._post(path, dict(body), self._headers)
        if status == 200:
            return 200, content.decode(errors="replace")
        return status, _error_fields(content)[0]

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._health is not self._client:
            await self._health.aclose()

    async def _post(
        self, path: str, body: Any, headers: Mapping[str, str]
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """POST a JSON body: (status, body, headers); unreachable or slow is the backend's 503
        or 504."""
        client = self._client
        try:
            async with client.session.post(client.url(path), json=body, headers=headers) as r:
                return r.status, await r.read(), r.headers
        except TimeoutError:
            raise BackendTimeout(self.name, client.timeout_s) from None
        except aiohttp.ClientError as exc:
            raise BackendUnavailable(self.name, _describe(exc)) from None

    def _upstream_error(
        self, status: int, content: bytes, headers: Mapping[str, str] | None = None
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
