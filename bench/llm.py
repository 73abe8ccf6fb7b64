"""LLM benchmark: streaming through the gateway versus straight to the vLLM server, in one run.

    .venv/bin/python -m bench.llm                 # starts the bundle on demo models, then measures
    .venv/bin/python -m bench.llm --url http://127.0.0.1:3000   # a bundle that is already running

For each concurrency level it streams completions (fixed output length, `ignore_eos`) to the
bundled vLLM server directly and through the gateway, alternating rounds so both see the same
machine state, and prints output tokens/s and time to first token with the gateway/direct ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass

import httpx

from settings import get_settings


@dataclass
class Run:
    tokens: int
    seconds: float
    ttfts: list[float]

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds

    def ttft_ms(self, q: float) -> float:
        ordered = sorted(self.ttfts)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_stream(client: httpx.AsyncClient, model: str, max_tokens: int) -> tuple[int, float]:
    body = {
        "model": model,
        "prompt": "Tell me a story about a harbour",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft = 0.0
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if not ttft and chunk["choices"] and chunk["choices"][0]["text"]:
                ttft = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, ttft


async def measure(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> Run:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        queue = list(range(requests))
        results: list[tuple[int, float]] = []

        async def worker() -> None:
            while queue:
                queue.pop()
                results.append(await one_stream(client, model, max_tokens))

        await one_stream(client, model, 4)  # warm the connection
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return Run(sum(t for t, _ in results), seconds, [f for _, f in results])


def merge(runs: list[Run]) -> Run:
    return Run(
        sum(r.tokens for r in runs),
        sum(r.seconds for r in runs),
        [t for r in runs for t in r.ttfts],
    )


async def bench(args: argparse.Namespace) -> None:
    direct_url = f"http://127.0.0.1:{get_settings().llm.port}"
    rows = []
    for c in args.concurrency:
        requests = max(args.min_requests, c * args.per_stream)
        direct: list[Run] = []
        gateway: list[Run] = []
        for _ in range(args.rounds):
            direct.append(await measure(direct_url, args.model, c, requests, args.max_tokens))
            gateway.append(await measure(args.url, args.model, c, requests, args.max_tokens))
        rows.append((c, requests * args.rounds, merge(direct), merge(gateway)))
    print_table(rows, args.max_tokens)


def print_table(rows: list[tuple[int, int, Run, Run]], max_tokens: int) -> None:
    print(f"\nLLM streaming, {max_tokens} output tokens per request (gateway vs direct vLLM)\n")
    head = (
        "| conc | reqs | direct tok/s | gateway tok/s | ratio | TTFT p50 direct / gateway (ms) "
        "| added p50 | TTFT p99 direct / gateway (ms) |"
    )
    print(head)
    print("|" + "|".join("---" for _ in range(8)) + "|")
    for c, n, d, g in rows:
        print(
            f"| {c} | {n} | {d.tok_s:,.0f} | {g.tok_s:,.0f} | {g.tok_s / d.tok_s:.3f} "
            f"| {d.ttft_ms(0.5):.1f} / {g.ttft_ms(0.5):.1f} "
            f"| {g.ttft_ms(0.5) - d.ttft_ms(0.5):+.1f} ms "
            f"| {d.ttft_ms(0.99):.1f} / {g.ttft_ms(0.99):.1f} |"
        )
    print("\ngoal: gateway throughput >= 0.95 x direct; TTFT added < 5 ms at p50")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.llm", description=__doc__)
    parser.add_argument("--url", help="a running bundle; default: start one with bentoml serve")
    parser.add_argument("--model", default="demo-llm")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--per-stream", type=int, default=4, help="requests per concurrent stream")
    parser.add_argument("--min-requests", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2, help="alternating direct/gateway rounds")
    args = parser.parse_args()
    if args.url:
        asyncio.run(bench(args))
        return
    from tests.servers.bundle import start_bundle

    server = start_bundle()
    try:
        args.url = server.url
        asyncio.run(bench(args))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
