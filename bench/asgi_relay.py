"""The floor of any relay inside an ASGI server: uvicorn and aiohttp, nothing else.

bench/gateway.py's `asgi-relay` path. A bare ASGI app (no Starlette, no BentoML, no routing, no
keys, limits or logs) served by uvicorn as BentoML serves a service (uvloop, httptools), relaying
every request to the upstream through one aiohttp session and streaming the answer back with the
gateway's read (`iter_any`, whatever has arrived). The gateway does this plus BentoML's stack and
its own pipeline, so the gap between the two is what those cost, and the gap between this and
`tcp-relay` is what being an ASGI app with an HTTP client costs at all.

    python -m bench.asgi_relay --port 3100 --upstream http://127.0.0.1:8300
"""

from __future__ import annotations

import argparse
from typing import Any

import aiohttp
import uvicorn

from lifecycle import tune_gc

Scope = dict[str, Any]


class Relay:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert self.session is not None
        headers = {"content-type": "application/json"}
        async with self.session.request(
            scope["method"], self.upstream + scope["path"], data=body or None, headers=headers
        ) as r:
            await send(
                {
                    "type": "http.response.start",
                    "status": r.status,
                    "headers": [(b"content-type", r.headers.get("content-type", "").encode())],
                }
            )
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=512),
                    timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=60.0),
                )
                tune_gc()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.asgi_relay", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://HOST:PORT")
    args = parser.parse_args()
    uvicorn.run(
        Relay(args.upstream),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
