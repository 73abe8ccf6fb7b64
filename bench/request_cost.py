"""What one request costs the gateway, by what it touches: the fixed cost under every c=1 figure.

    .venv/bin/python -m bench.request_cost                 # 3 rounds x 1,000 requests per kind
    .venv/bin/python -m bench.request_cost --requests 200 --rounds 1   # a smoke run

It starts the deterministic upstream (tests/servers/upstream.py) with no delays and one token,
and the gateway as bench.gateway runs it (`gateway_process`: `bentoml serve
service:RemoteGateway` routing `fixed-llm` to it, access log off), then sends
sequential requests from one keep-alive client, kind by kind, in interleaved rounds:

    GET /livez           BentoML's server stack and uvicorn only (a probe skips our app)
    GET /v1/models       + the gateway's app and its request pipeline (no upstream call)
    chat, plain          + routing, breaker, admission, the upstream call, the JSON answer
    chat, streamed       the same as a 1-token server-sent event stream
    direct               the same streamed chat straight to the upstream (no gateway)
    asgi-relay           the same streamed chat through bench/asgi_relay.py (uvicorn + aiohttp,
                         nothing else): the floor of any relay inside an ASGI server
    aiohttp alone        the same streamed chat sent by an aiohttp session in this process, as
                         the gateway's OpenAI adapter sends it: the upstream client's own share

`--pick` measures instead what picking an endpoint of a pool costs in process (gateway/routing/
pick.py; CPU time of `pick` + `sent`, the picker's whole work per request) for each balance, 4 and
16 endpoints, 4 KB and 32 KB prompts, against a warm index (the prompts of 64 tenants already sent).

Per kind: latency p50/p99 at the client, and CPU time (user + system, /proc through psutil) of
the gateway's whole process tree per request (for "asgi-relay", of that server's; for "aiohttp
alone", of this process). The table gives each kind's CPU as a share of the streamed chat's. On a
GPU machine the command is the same (every process here is a CPU process).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.gateway import (
    MODEL,
    asgi_relay_process,
    cpu_delta,
    gateway_process,
    percentile,
    tree_cpu,
)
from tests.servers.upstream import upstream_process

BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


def sender(base: str, kind: str) -> Callable[[httpx.Client], httpx.Response]:
    chat = f"{base}/v1/chat/completions"
    if kind == "GET /livez":
        return lambda c: c.get(f"{base}/livez")
    if kind == "GET /v1/models":
        return lambda c: c.get(f"{base}/v1/models")
    if kind == "chat, plain":
        return lambda c: c.post(chat, json=BODY)
    return lambda c: c.post(chat, json={**BODY, "stream": True})  # streamed, direct


def aiohttp_cpu(url: str, n: int) -> tuple[list[float], float]:
    """(latencies, CPU s per request) of `n` streamed chats from an aiohttp session here."""
    import aiohttp
    import uvloop

    async def main() -> tuple[list[float], float]:
        timeout = aiohttp.ClientTimeout(total=None, connect=5.0, sock_read=60.0)
        connector = aiohttp.TCPConnector(limit=512)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one() -> None:
                r = await session.post(f"{url}/v1/chat/completions", json={**BODY, "stream": True})
                async for _ in r.content.iter_any():
                    pass
                r.release()

            for _ in range(50):
                await one()
            latencies = []
            cpu = time.process_time()
            for _ in range(n):
                start = time.perf_counter()
                await one()
                latencies.append(time.perf_counter() - start)
            return latencies, (time.process_time() - cpu) / n

    return uvloop.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.request_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--requests", type=int, default=1000, help="per kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pick", action="store_true", help="the cost of picking an endpoint")
    args = parser.parse_args()
    if args.pick:
        pick_cost()
        return

    upstream = upstream_process(prefill_ms=0, token_ms=0, tokens=1).start()
    directory = Path(tempfile.mkdtemp(prefix="bench-request-cost-"))
    gateway = gateway_process(upstream.url, directory, workers=1, max_c=1).start()
    relay = asgi_relay_process(upstream.url).start()
    assert gateway.proc is not None and relay.proc is not None
    kinds = [
        "GET /livez", "GET /v1/models", "chat, plain", "chat, streamed", "direct", "asgi-relay"
    ]  # fmt: skip
    bases = {"direct": upstream.url, "asgi-relay": relay.url}
    pids = {"asgi-relay": relay.proc.pid}
    latencies: dict[str, list[float]] = {k: [] for k in [*kinds, "aiohttp alone"]}
    cpu: dict[str, list[float]] = {k: [] for k in latencies}
    try:
        senders = {k: sender(bases.get(k, gateway.url), k) for k in kinds}
        with httpx.Client(timeout=30) as client:
            for send in senders.values():  # warm every path
                for _ in range(100):
                    send(client).raise_for_status()
            for round_ in range(args.rounds):
                order = kinds if round_ % 2 == 0 else kinds[::-1]
                for kind in order:
                    send = senders[kind]
                    pid = pids.get(kind, gateway.proc.pid)
                    before = tree_cpu(pid)
                    for _ in range(args.requests):
                        start = time.perf_counter()
                        send(client).raise_for_status()
                        latencies[kind].append(time.perf_counter() - start)
                    per = cpu_delta(before, tree_cpu(pid)) / args.requests
                    cpu[kind].append(0.0 if kind == "direct" else per)
                lat, per = aiohttp_cpu(upstream.url, args.requests)
                latencies["aiohttp alone"] += lat
                cpu["aiohttp alone"].append(per)
                print(f"  round {round_ + 1}/{args.rounds} done", flush=True)
    finally:
        relay.stop()
        gateway.stop()
        upstream.stop()
        shutil.rmtree(directory, ignore_errors=True)

    streamed = statistics.median(cpu["chat, streamed"])
    print(f"\nSequential requests, {args.rounds} rounds x {args.requests} per kind; upstream: no "
          "delays, 1 token\n")  # fmt: skip
    print("| kind | p50 ms | p99 ms | CPU ms/request | CPU vs streamed chat |")
    print("|---|---|---|---|---|")
    for kind, values in latencies.items():
        share = statistics.median(cpu[kind])
        who = {"aiohttp alone": " (this process)", "asgi-relay": " (the relay)"}.get(kind, "")
        ratio = "-" if kind == "direct" else f"{share / streamed:.2f}"
        cost = "-" if kind == "direct" else f"{share * 1000:.3f}{who}"
        print(f"| {kind} | {percentile(values, 0.5) * 1000:.3f} | "
              f"{percentile(values, 0.99) * 1000:.3f} | "
              f"{cost} | {ratio} |")  # fmt: skip


def pick_cost(picks: int = 20_000) -> None:
    """Microseconds of CPU per pick, per balance, endpoint count and prompt size."""
    import random

    from gateway.adapters.base import InferRequest
    from gateway.routing.pick import BALANCES, make_picker

    class Replica:
        def __init__(self, key: str) -> None:
            self.key, self.inflight, self.others, self.pending_blocks = key, 0, 0, 0.0

    goals = {4_096: 30.0, 32_768: 100.0}
    print(f"\nPicking one endpoint: CPU us per request ({picks:,} picks each, 64 tenants sent "
          "before, a tenant's system prompt + a fresh user turn); goals at 16 endpoints: "
          "<= 30 us (4 KB), <= 100 us (32 KB)\n")  # fmt: skip
    print("| balance | endpoints | prompt | us/pick | goal |")
    print("|---|---|---|---|---|")
    rng = random.Random(0)
    for size in goals:
        tenants = [f"tenant {t}: " + "".join(rng.choices("abcdefgh ", k=size)) for t in range(64)]
        for balance in BALANCES:
            for n in (4, 16):
                fleet = [Replica(f"http://10.0.0.{i}:8000") for i in range(n)]
                picker = make_picker(balance, rng=random.Random(1))
                requests = [
                    InferRequest("chat", "m", {"user": f"u{i % 97}", "messages": [
                        {"role": "system", "content": tenants[i % 64]},
                        {"role": "user", "content": f"question {i}"},
                    ]})
                    for i in range(picks)
                ]  # fmt: skip
                for request in requests[:256]:  # warm the index
                    picker.sent(picker.pick(fleet, request), request)
                started = time.process_time()
                for request in requests:
                    choice = picker.pick(fleet, request)
                    picker.sent(choice, request)
                    choice.endpoint.inflight = (choice.endpoint.inflight + 1) % 8
                per = (time.process_time() - started) / picks * 1e6
                goal = f"<= {goals[size]:.0f}" if n == 16 else "-"
                print(f"| {balance} | {n} | {size // 1024} KB | {per:.1f} | {goal} |")


if __name__ == "__main__":
    main()
