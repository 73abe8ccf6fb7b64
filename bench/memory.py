"""Does a gateway worker's memory stay flat while requests go by? RSS after each batch.

    .venv/bin/python -m bench.memory                      # 5 batches of 20,000 requests
    .venv/bin/python -m bench.memory --batches 2 --requests 5000   # a smoke run

It starts the deterministic upstream (tests/servers/upstream.py, no delays, 1 token) and the
gateway as bench.gateway runs it (`bentoml serve service:RemoteGateway`, one worker), then sends
`GET /v1/models` (the whole request path of BentoML's server, the gateway's app and its
pipeline; no upstream call) or, with `--kind chat`, streamed chat completions relayed to the
upstream, from `--concurrency` keep-alive clients, and prints the worker's resident memory
after each batch. A server whose memory is bounded prints the same figure batch after batch;
one that keeps something per request grows by about that much times the requests.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from bench.gateway import MODEL, _run_loop, gateway_process
from tests.servers.upstream import upstream_process


def worker_rss_mb(pid: int) -> float:
    """The largest resident set among the server's descendants: its worker."""
    children = psutil.Process(pid).children(recursive=True)
    return max((c.memory_info().rss for c in children), default=0) / 2**20


async def batch(url: str, kind: str, requests: int, concurrency: int) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        for _ in range(n):
            if kind == "models":
                r = await client.get(f"{url}/v1/models")
            else:
                r = await client.post(f"{url}/v1/chat/completions", json=chat)
            r.raise_for_status()

    clients = [httpx.AsyncClient(timeout=30) for _ in range(concurrency)]
    try:
        await asyncio.gather(*(worker(c, requests // concurrency) for c in clients))
    finally:
        for c in clients:
            await c.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--requests", type=int, default=20_000, help="per batch")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--kind", choices=("models", "chat"), default="models")
    args = parser.parse_args()

    upstream = upstream_process(prefill_ms=0, token_ms=0, tokens=1).start()
    directory = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    gateway = gateway_process(upstream.url, directory, workers=1, max_c=args.concurrency).start()
    assert gateway.proc is not None
    try:
        print("| requests | seconds | worker RSS MB |")
        print("|---|---|---|")
        print(f"| 0 | - | {worker_rss_mb(gateway.proc.pid):.1f} |", flush=True)
        for i in range(args.batches):
            began = time.perf_counter()
            _run_loop(batch(gateway.url, args.kind, args.requests, args.concurrency))
            took = time.perf_counter() - began
            rss = worker_rss_mb(gateway.proc.pid)
            print(f"| {(i + 1) * args.requests:,} | {took:.1f} | {rss:.1f} |", flush=True)
    finally:
        gateway.stop()
        upstream.stop()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
