"""The floor of any relay written in Python: bytes from one socket to another, nothing parsed.

bench/gateway.py's `tcp-relay` path. Each client connection gets one connection to the upstream,
and every read on either side is one `transport.write` on the other (uvloop protocols, no HTTP, no
buffering beyond the kernel's). Relaying an SSE chunk cannot cost less than this in an asyncio
process, so its CPU per chunk is the floor the gateway's is compared with, on the same machine in
the same run.

    python -m bench.tcp_relay --port 3100 --upstream 127.0.0.1:8300
"""

from __future__ import annotations

import argparse
import asyncio


class _Side(asyncio.Protocol):
    """One end of a pipe: what it reads, its peer writes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []  # read before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _Client(_Side):
    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__()
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, side = await loop.create_connection(_Side, *self.upstream)
        except OSError:
            assert self.transport is not None
            self.transport.close()
            return
        side.peer, self.peer = self, side
        assert side.transport is not None
        for data in self.pending:
            side.transport.write(data)
        self.pending.clear()


async def serve(port: int, upstream: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(upstream), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tcp_relay", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="HOST:PORT")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args.port, (host, int(port))))
    else:
        uvloop.run(serve(args.port, (host, int(port))))


if __name__ == "__main__":
    main()
