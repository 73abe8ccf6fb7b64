"""LoRA benchmark: the base model vs one adapter vs a mix of 4 adapters on one vLLM engine, and
what turning LoRA on costs the base model and the engine's start, in one run.

    .venv/bin/python -m bench.lora                       # the full run (a quiet machine)
    .venv/bin/python -m bench.lora --concurrency 4 --min-requests 8 --max-tokens 16   # smoke

It starts vLLM twice, one after the other, on the demo-llm weights: without LoRA (as the bundle
runs with `llm.lora` absent) and with `--enable-lora --max-loras 4` serving demo-llm-sql and three
more random rank-8 adapters. vLLM's CPU build turns compilation off for all traffic when LoRA is
on, so the base model's rows are compared across the two engines; the adapter rows against the
base model on the LoRA engine. Each row streams completions (fixed length, `ignore_eos`) and
reports output tokens/s, TTFT p50/p90 and the ratio to its reference row.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.llm import Run, merge, one_stream
from models import store
from models.lora import write_random_adapter
from tests.servers.process import ServerProcess
from tests.servers.vllm import vllm_process

ADAPTERS = 4


@dataclass(frozen=True)
class Row:
    engine: str
    traffic: str
    run: Run
    reference: str  # the row its ratio is taken against


async def measure_mix(
    url: str, models: Sequence[str], concurrency: int, requests: int, max_tokens: int
) -> Run:
    """Streams of `max_tokens`, `concurrency` at a time, the models taken in turn."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    turn = itertools.cycle(models)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        for model in models:  # load every adapter before timing
            await one_stream(client, model, 4)
        queue = list(range(requests))
        results: list[tuple[int, float]] = []

        async def worker() -> None:
            while queue:
                queue.pop()
                results.append(await one_stream(client, next(turn), max_tokens))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - start
    return Run(sum(t for t, _ in results), seconds, [f for _, f in results])


def adapters(directory: Path) -> list[tuple[str, str]]:
    """demo-llm-sql from the store and three more random adapters of demo-llm."""
    base = store.resolve("demo-llm").path
    found = [("demo-llm-sql", str(store.resolve("demo-llm-sql").path))]
    for seed in range(2, ADAPTERS + 1):
        path = directory / f"demo-llm-lora{seed}"
        write_random_adapter(path, base, seed=seed)
        found.append((path.name, str(path)))
    return found


def engine(lora: Sequence[tuple[str, str]]) -> ServerProcess:
    extra = ["--max-model-len", "1024"]
    if lora:
        extra += ["--enable-lora", "--max-loras", str(ADAPTERS), "--max-lora-rank", "16"]
        extra += ["--lora-modules", *(f"{name}={path}" for name, path in lora)]
    server = vllm_process(served_name="demo-llm", extra_args=extra)
    server.env["VLLM_USE_AOT_COMPILE"] = "0"  # as runners/llm.py starts it on CPU
    return server


def started(server: ServerProcess) -> float:
    start = time.perf_counter()
    server.start()
    return time.perf_counter() - start


async def rows_of(url: str, args: argparse.Namespace, lora: Sequence[str]) -> list[Row]:
    def run(models: Sequence[str]) -> asyncio.Future[Run]:
        return asyncio.ensure_future(
            measure_mix(url, models, args.concurrency, args.min_requests, args.max_tokens)
        )

    engine_name = "lora" if lora else "no-lora"
    rounds: dict[str, list[Run]] = {}
    plan = {"base": ["demo-llm"]}
    if lora:
        plan |= {"adapter": [lora[0]], f"mix of {len(lora)}": list(lora)}
    for _ in range(args.rounds):
        for traffic, models in plan.items():
            rounds.setdefault(traffic, []).append(await run(models))
    reference = {"base": "no-lora/base" if lora else "", "adapter": "lora/base"}
    return [Row(engine_name, t, merge(r), reference.get(t, "lora/base")) for t, r in rounds.items()]


def print_table(rows: Sequence[Row], starts: dict[str, float], args: argparse.Namespace) -> None:
    by = {f"{r.engine}/{r.traffic}": r for r in rows}
    print(
        f"\nvLLM LoRA, {args.max_tokens} output tokens per stream, concurrency {args.concurrency}, "
        f"{args.min_requests} streams x {args.rounds} rounds per row\n"
    )
    print("| engine | traffic | tok/s | ratio | vs | TTFT p50 (ms) | TTFT p90 (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ref = by.get(r.reference)
        ratio = f"{r.run.tok_s / ref.run.tok_s:.3f}" if ref else "1"
        print(
            f"| {r.engine} | {r.traffic} | {r.run.tok_s:,.0f} | {ratio} | {r.reference or '-'} "
            f"| {r.run.ttft_ms(0.5):.1f} | {r.run.ttft_ms(0.9):.1f} |"
        )
    print("\nengine start to healthy: " + ", ".join(f"{k} {v:.1f} s" for k, v in starts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.lora", description=__doc__)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--min-requests", type=int, default=48, help="streams per row and round")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    rows: list[Row] = []
    starts: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        lora = adapters(Path(tmp))
        for name, served in (("no-lora", []), ("lora", lora)):
            server = engine(served)
            try:
                starts[name] = started(server)
                names = [n for n, _ in served]
                rows += asyncio.run(rows_of(server.url, args, names))
            finally:
                server.stop()
    print_table(rows, starts, args)


if __name__ == "__main__":
    main()
