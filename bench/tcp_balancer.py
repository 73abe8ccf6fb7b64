"""A per-connection random TCP balancer: what kube-proxy does for a ClusterIP Service.

Each incoming TCP connection goes to one replica picked at random (uniformly, as kube-proxy's
iptables rules pick an endpoint) and stays there; bytes are piped both ways, nothing is parsed.
A client that keeps its connections alive (the gateway's pool does) therefore sends every request
of a connection to the replica picked when it opened, and a replica added later only gets the
connections opened after it was added. bench/fleet.py's `balancer` path puts it in front of the
simulated replicas.

    python -m bench.tcp_balancer --port 3200 --control-port 3201 \\
        --replica 127.0.0.2:8301 --replica 127.0.0.3:8302 --seed 1

A control port answers HTTP:

    GET  /health
    GET  /replicas   {"replicas": [...], "connections": {"host:port": connections opened}}
    POST /replicas   {"add": "host:port"}: new connections may pick it from now on
    POST /reset      zero the connection counts
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.tcp_relay import _Side
from tests.servers.upstream import RawHTTP, send, serve

if TYPE_CHECKING:
    from tests.servers.process import ServerProcess

ROOT = Path(__file__).resolve().parents[1]


class Balancer:
    """The replica set and the pick; `rng` makes a run repeatable."""

    def __init__(self, replicas: Sequence[str], *, rng: random.Random) -> None:
        self.replicas = list(replicas)
        self.rng = rng
        self.connections = dict.fromkeys(self.replicas, 0)

    def pick(self) -> str:
        replica = self.rng.choice(self.replicas)
        self.connections[replica] += 1
        return replica

    def add(self, replica: str) -> None:
        if replica not in self.connections:
            self.replicas.append(replica)
            self.connections[replica] = 0

    def snapshot(self) -> dict[str, object]:
        return {"replicas": self.replicas, "connections": self.connections}


class _Incoming(_Side):
    """A client's connection: its replica is picked once, when it opens."""

    def __init__(self, balancer: Balancer) -> None:
        super().__init__()
        self.balancer = balancer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        host, _, port = self.balancer.pick().rpartition(":")
        asyncio.get_running_loop().create_task(self._connect(host, int(port)))

    async def _connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, side = await loop.create_connection(_Side, host, port)
        except OSError:  # as kube-proxy's iptables rules: no second pick
            assert self.transport is not None
            self.transport.close()
            return
        assert self.transport is not None and side.transport is not None
        if self.transport.is_closing():  # the client left while this connected
            side.transport.close()
            return
        side.peer, self.peer = self, side
        for data in self.pending:
            side.transport.write(data)
        self.pending.clear()


class Control(RawHTTP):
    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer

    async def route(
        self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        if method == "GET" and path == "/health":
            return send(writer, 200, b"")
        if method == "POST" and path == "/replicas":
            self.balancer.add(str(json.loads(body)["add"]))
        elif method == "POST" and path == "/reset":
            self.balancer.connections = dict.fromkeys(self.balancer.replicas, 0)
        elif not (method == "GET" and path == "/replicas"):
            return send(writer, 404, b'{"error": {"message": "no route"}}')
        return send(writer, 200, json.dumps(self.balancer.snapshot()).encode())


async def run(host: str, port: int, control_port: int, balancer: Balancer) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Incoming(balancer), host, port, backlog=2048)
    async with server:
        await serve(Control(balancer), host, control_port)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.tcp_balancer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--replica", action="append", required=True, help="HOST:PORT, repeated")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    balancer = Balancer(args.replica, rng=random.Random(args.seed))
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(run(args.host, args.port, args.control_port, balancer))
    else:
        uvloop.run(run(args.host, args.port, args.control_port, balancer))


if __name__ == "__main__":
    main()


@dataclass(frozen=True)
class BalancerServer:
    process: ServerProcess  # .url: where clients connect
    control_url: str


def balancer_process(replica_urls: Sequence[str], *, seed: int) -> BalancerServer:
    """The balancer on free ports, not started yet."""
    from tests.servers.process import ServerProcess, free_port, http_ok

    port, control = free_port(), free_port()
    command = [sys.executable, "-m", "bench.tcp_balancer", "--port", str(port),
               "--control-port", str(control), "--seed", str(seed)]  # fmt: skip
    for url in replica_urls:
        command += ["--replica", url.removeprefix("http://").rstrip("/")]
    control_url = f"http://127.0.0.1:{control}"
    process = ServerProcess("tcp-balancer", command, ready=http_ok(f"{control_url}/health"),
                            url=f"http://127.0.0.1:{port}", cwd=ROOT, timeout_s=60)  # fmt: skip
    return BalancerServer(process, control_url)
