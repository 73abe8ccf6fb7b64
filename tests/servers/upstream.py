"""A deterministic OpenAI-compatible upstream: fixed prefill delay, fixed delay per token.

For measuring what a proxy in front of it costs (bench/gateway.py) and for tests that need a
stream of a known length (tests/integration/test_lifecycle.py). It speaks just enough HTTP/1.1 on
raw asyncio streams to cost far less than what it measures: a prebuilt chunk per token, written
with one `write` each, keep-alive, chunked transfer encoding, as vLLM's server answers.

    python -m tests.servers.upstream --port 8300 --prefill-ms 5 --token-ms 5 --tokens 64

    POST /v1/chat/completions, /v1/completions   stream or not; `max_tokens` tokens (else
                                                  --tokens), `stream_options.include_usage`
    GET  /health, /v1/models
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.servers.process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]

try:  # the servers the gateway runs on use uvloop too
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None  # type: ignore[assignment]


class RawHTTP:
    """HTTP/1.1 on raw asyncio streams: keep-alive, Content-Length bodies; a subclass routes.
    tests/servers/sim_vllm.py serves on it too."""

    requests = 0  # HTTP requests read, every route

    async def route(
        self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        raise NotImplementedError

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {}
                for line in lines:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                self.requests += 1
                await self.route(method, path, body, writer)
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class Upstream(RawHTTP):
    def __init__(self, *, model: str, prefill_ms: float, token_ms: float, tokens: int) -> None:
        self.model = model
        self.prefill_s = prefill_ms / 1000
        self.token_s = token_ms / 1000
        self.tokens = tokens

    async def route(
        self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        if method == "GET" and path == "/health":
            return send(writer, 200, b"")
        if method == "GET" and path == "/v1/models":
            models = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            return send(writer, 200, json.dumps(models).encode())
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            request = json.loads(body or b"{}")
            return await self.generate(request, path.endswith("chat/completions"), writer)
        return send(writer, 404, b'{"error": {"message": "no route", "type": "not_found"}}')

    async def generate(
        self, request: dict[str, Any], chat: bool, writer: asyncio.StreamWriter
    ) -> None:
        n = int(request.get("max_tokens") or request.get("max_completion_tokens") or self.tokens)
        kind = "chat.completion" if chat else "text_completion"
        rid = f"cmpl-{self.requests}"
        usage = {"prompt_tokens": 8, "completion_tokens": n, "total_tokens": 8 + n}
        await asyncio.sleep(self.prefill_s)
        if not request.get("stream"):
            await asyncio.sleep(self.token_s * max(0, n - 1))
            text = "tok " * n
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text}
            )
            answer = {
                "id": rid,
                "object": kind,
                "created": int(time.time()),
                "model": self.model,
                "choices": [{**choice, "finish_reason": "length"}],
                "usage": usage,
            }
            return send(writer, 200, json.dumps(answer).encode())
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        delta = '{"delta":{"content":"tok "},"index":0}' if chat else '{"text":"tok ","index":0}'
        event = (
            f'data: {{"id":"{rid}","object":"{kind}.chunk","model":"{self.model}",'
            f'"choices":[{delta}]}}\n\n'
        ).encode()
        chunk = b"%x\r\n%s\r\n" % (len(event), event)
        for i in range(n):
            if i:
                await asyncio.sleep(self.token_s)
            writer.write(chunk)
            await writer.drain()
        options = request.get("stream_options") or {}
        tail = b""
        if options.get("include_usage"):
            last = json.dumps({"id": rid, "object": f"{kind}.chunk", "model": self.model,
                               "choices": [], "usage": usage}, separators=(",", ":"))  # fmt: skip
            tail += f"data: {last}\n\n".encode()
        tail += b"data: [DONE]\n\n"
        writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(tail), tail))
        await writer.drain()


REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 503: "Service Unavailable"}


def send(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    content_type: str = "application/json",
) -> None:
    """One whole response with a Content-Length (keep-alive)."""
    writer.write(
        b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
        % (status, REASONS.get(status, "Error").encode(), content_type.encode(), len(body), body)
    )


async def serve(upstream: RawHTTP, host: str, port: int) -> None:
    server = await asyncio.start_server(upstream.handle, host, port, backlog=2048)
    async with server:
        await server.serve_forever()


def main() -> None:
    from lifecycle import tune_gc

    parser = argparse.ArgumentParser(prog="python -m tests.servers.upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="fixed-llm")
    parser.add_argument("--prefill-ms", type=float, default=5.0)
    parser.add_argument("--token-ms", type=float, default=5.0)
    parser.add_argument("--tokens", type=int, default=64, help="when a request gives no max_tokens")
    args = parser.parse_args()
    upstream = Upstream(
        model=args.model, prefill_ms=args.prefill_ms, token_ms=args.token_ms, tokens=args.tokens
    )
    if uvloop is not None:
        uvloop.install()
    tune_gc()  # as the bundle's services do (lifecycle.py): a cheap upstream stays cheap
    asyncio.run(serve(upstream, args.host, args.port))


if __name__ == "__main__":
    main()


def upstream_process(
    *, prefill_ms: float = 5.0, token_ms: float = 5.0, tokens: int = 64, model: str = "fixed-llm"
) -> ServerProcess:
    """The upstream as a server process on a free port, not started yet."""
    from tests.servers.process import ServerProcess, free_port, http_ok

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tests.servers.upstream", "--port", str(port),
               "--prefill-ms", str(prefill_ms), "--token-ms", str(token_ms),
               "--tokens", str(tokens), "--model", model]  # fmt: skip
    return ServerProcess("upstream", command, ready=http_ok(f"{url}/health"), url=url, cwd=ROOT)
