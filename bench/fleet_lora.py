"""LoRA adapters across a simulated fleet: adapter affinity against least_load, in one run.

    .venv/bin/python -m bench.fleet_lora                 # the full run (~6 minutes)
    .venv/bin/python -m bench.fleet_lora --quick         # a ~1-minute smoke run

Four simulated vLLM replicas (tests/servers/sim_vllm.py) each serve `--adapters` LoRA adapters
of `fleet-llm`, hold `--max-loras` of them in their slots at once (least recently used evicted)
and pay `--lora-load-ms` to load a missing one, one load at a time. There are more adapters than
replicas x slots (default 24 > 4 x 4), and their popularity is skewed (Zipf, `--zipf`): a few are
hot, most are cold. Two gateways (`bentoml serve service:RemoteGateway`) route the same seeded
Poisson arrivals, each request to one adapter, streamed:

    least_load  the replicas as a pool, balance least_load; every adapter configured as a model
                of the pool, so the gateway knows nothing of where adapters are resident
    affinity    the same pool with `lora: true`: the adapters are found on the replicas'
                /v1/models, and each request goes to a replica holding its adapter in a slot,
                else to one with a free slot, else any, by load (routing/pick.py adapter_tier)

Windows alternate between the paths (`--repeats`), the replicas reset (caches, slots and load
counts) before each. Per path: adapter loads (the replicas' own count), TTFT p50/p90/p99, output
tokens/s, errors; the goal: >= 1.5x fewer loads and TTFT p90 <= 0.7x with affinity.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.fleet import gateway_process, start_each
from bench.fleet_client import Clients, stream
from bench.fleet_report import percentile
from tests.servers.process import ServerProcess, start_together
from tests.servers.sim_vllm import sim_vllm_processes

MODEL = "fleet-llm"
PATHS = ("least_load", "affinity")


@dataclass
class Window:
    path: str
    ttfts: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    loads: int = 0


def adapter_names(n: int) -> list[str]:
    return [f"{MODEL}-lora{i}" for i in range(n)]


def gateway_config(path: str, replicas: list[str], adapters: list[str]) -> dict[str, Any]:
    backend = {"kind": "openai", "urls": replicas, "balance": "least_load", "timeout_s": 600,
               "retries": 2, "load_every_s": 0.5, "lora": path == "affinity"}  # fmt: skip
    models: dict[str, Any] = {MODEL: {"backend": "fleet"}}
    if path == "least_load":
        models |= {name: {"backend": "fleet"} for name in adapters}
    return {
        "routing": {"backends": {"fleet": backend}, "models": models},
        "admission": {"fleet": {"max_inflight": 64, "max_queue": 1024}},
        "log": {"access_log": False},
        "gateway": {"workers": 1, "grpc_port": None},
    }


def arrivals(args: argparse.Namespace, seed: int) -> list[tuple[float, str]]:
    """(time, adapter) of each request: Poisson at `--rate`, adapters by Zipf popularity."""
    rng = random.Random(seed)
    names = adapter_names(args.adapters)
    weights = [1 / (rank + 1) ** args.zipf for rank in range(len(names))]
    rng.shuffle(names)
    at, out = 0.0, []
    while (at := at + rng.expovariate(args.rate)) < args.duration_s:
        out.append((at, rng.choices(names, weights)[0]))
    return out


async def replay(url: str, plan: list[tuple[float, str]], max_tokens: int, window: Window) -> None:
    clients = Clients(url)
    opened = time.perf_counter()

    async def one(at: float, adapter: str) -> None:
        await asyncio.sleep(max(0.0, at - (time.perf_counter() - opened)))
        client = clients.take()
        payload = {"model": adapter, "messages": [{"role": "user", "content": f"q {at:.3f}"}],
                   "max_tokens": max_tokens, "stream": True,
                   "stream_options": {"include_usage": True}}  # fmt: skip
        try:
            reply = await stream(client, payload)
        except (httpx.HTTPError, ValueError) as exc:
            window.errors.append(f"{type(exc).__name__}: {exc}")
            return
        finally:
            clients.idle.append(client)
        if reply.error:
            window.errors.append(reply.error)
            return
        window.ttfts.append(reply.ttft)
        window.tokens += reply.output_tokens

    await asyncio.gather(*(one(at, adapter) for at, adapter in plan))
    window.seconds = time.perf_counter() - opened
    await clients.aclose()


async def reset(replicas: list[str]) -> None:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        await asyncio.gather(*(client.post(f"{r}/reset") for r in replicas))


async def loads(replicas: list[str]) -> int:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        stats = await asyncio.gather(*(client.get(f"{r}/stats") for r in replicas))
    return sum(int(s.json()["lora_loads"]) for s in stats)


async def wait_for_adapters(url: str, names: list[str], within_s: float = 30.0) -> None:
    """Until the gateway lists every adapter (the affinity path finds them on /v1/models)."""
    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
        while time.monotonic() < deadline:
            listed = {m["id"] for m in (await client.get(f"{url}/v1/models")).json()["data"]}
            if set(names) <= listed:
                return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{url} did not list the adapters within {within_s:g} s")


async def measure(
    args: argparse.Namespace, gateways: dict[str, str], replicas: list[str]
) -> list[Window]:
    for url in gateways.values():
        await wait_for_adapters(url, adapter_names(args.adapters))
    windows = []
    for repeat in range(args.repeats):
        plan = arrivals(args, args.seed + repeat)
        order = PATHS if repeat % 2 == 0 else PATHS[::-1]
        for path in order:
            await reset(replicas)
            await asyncio.sleep(1.0)  # the pools read the replicas' reset load
            window = Window(path)
            await replay(gateways[path], plan, args.max_tokens, window)
            window.loads = await loads(replicas)
            windows.append(window)
    return windows


def summary(windows: list[Window], path: str) -> dict[str, float]:
    mine = [w for w in windows if w.path == path]
    return {
        "requests": sum(len(w.ttfts) for w in mine),
        "errors": sum(len(w.errors) for w in mine),
        "loads": statistics.median(w.loads for w in mine),
        "p50": statistics.median(percentile(w.ttfts, 0.5) for w in mine),
        "p90": statistics.median(percentile(w.ttfts, 0.9) for w in mine),
        "p99": statistics.median(percentile(w.ttfts, 0.99) for w in mine),
        "tok_s": statistics.median(w.tokens / w.seconds for w in mine),
    }


def print_report(windows: list[Window], args: argparse.Namespace) -> None:
    rows = {p: summary(windows, p) for p in PATHS}
    print(
        f"\nLoRA across {args.replicas} simulated replicas: {args.adapters} adapters, "
        f"{args.max_loras} slots each ({args.replicas * args.max_loras} in all), Zipf "
        f"s={args.zipf}, load {args.lora_load_ms:g} ms, {args.rate:g} req/s for "
        f"{args.duration_s:g} s, medians of {args.repeats} windows per path\n"
    )
    print("| path | requests | errors | adapter loads | TTFT p50 / p90 / p99 (ms) | tok/s |")
    print("|---|---|---|---|---|---|")
    for path, r in rows.items():
        print(
            f"| {path} | {r['requests']:.0f} | {r['errors']:.0f} | {r['loads']:.0f} "
            f"| {1000 * r['p50']:.0f} / {1000 * r['p90']:.0f} / {1000 * r['p99']:.0f} "
            f"| {r['tok_s']:,.0f} |"
        )
    least, affinity = rows["least_load"], rows["affinity"]
    fewer = least["loads"] / affinity["loads"] if affinity["loads"] else float("inf")
    p90 = affinity["p90"] / least["p90"] if least["p90"] else float("nan")
    print(f"\nadapter loads: {fewer:.2f}x fewer with affinity (goal >= 1.5x); "
          f"TTFT p90 affinity / least_load: {p90:.2f} (goal <= 0.7)")  # fmt: skip
    for w in windows:
        if w.errors:
            print(f"  {w.path}: {len(w.errors)} errors, e.g. {w.errors[0]}")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fleet_lora", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--adapters", type=int, default=24)
    p.add_argument("--max-loras", type=int, default=4)
    p.add_argument("--lora-load-ms", type=float, default=200.0)
    p.add_argument("--zipf", type=float, default=1.1, help="popularity skew: weight 1/rank^s")
    p.add_argument("--rate", type=float, default=20.0, help="requests per second")
    p.add_argument("--duration-s", type=float, default=60.0)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--token-ms", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="10 s windows, one repeat")
    args = p.parse_args()
    if args.quick:
        args.duration_s, args.repeats = 10.0, 1
    return args


def main() -> None:
    args = parse_args()
    options = ["--model", MODEL, "--adapters", str(args.adapters), "--max-loras",
               str(args.max_loras), "--lora-load-ms", str(args.lora_load_ms),
               "--token-ms", str(args.token_ms)]  # fmt: skip
    sims = sim_vllm_processes(args.replicas, options)
    directory = Path(tempfile.mkdtemp(prefix="fleet-lora-"))
    gateways: dict[str, ServerProcess] = {}
    try:
        start_together(*(s.start for s in sims), aborts=[s.abort for s in sims])
        replicas = [s.url for s in sims]
        names = adapter_names(args.adapters)
        gateways = {p: gateway_process(f"lora-{p}", gateway_config(p, replicas, names), directory)
                    for p in PATHS}  # fmt: skip
        if failed := start_each(gateways):
            raise SystemExit(f"gateways did not start: {failed}")
        urls = {p: g.url for p, g in gateways.items()}
        print_report(asyncio.run(measure(args, urls, replicas)), args)
    finally:
        for server in [*gateways.values(), *sims]:
            server.stop()


if __name__ == "__main__":
    main()
