"""bench/fleet.py's run: windows over the paths, the replicas reset before each, and the
scale-out observation."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httpx

from bench import fleet_report as report
from bench.fleet_client import replay
from bench.fleet_workloads import BUILDERS, Shape
from bench.gateway import cpu_delta, tree_cpu
from bench.tcp_balancer import BalancerServer
from tests.servers.process import ServerProcess


class Fleet:
    """The replicas and the balancers in front of them, driven over their control routes."""

    def __init__(self, replicas: list[ServerProcess], balancers: list[BalancerServer]) -> None:
        self.replicas = replicas
        self.balancers = balancers
        self.http = httpx.AsyncClient(timeout=90.0, trust_env=False)

    async def reset(self) -> None:
        await asyncio.gather(*(self.http.post(f"{r.url}/reset") for r in self.replicas))
        await asyncio.gather(*(self.http.post(f"{b.control_url}/reset") for b in self.balancers))

    async def stats(self) -> list[dict[str, Any]]:
        answers = await asyncio.gather(*(self.http.get(f"{r.url}/stats") for r in self.replicas))
        return [a.raise_for_status().json() for a in answers]

    async def connections(self, balancer: BalancerServer) -> dict[str, int]:
        answer = await self.http.get(f"{balancer.control_url}/replicas")
        return dict(answer.raise_for_status().json()["connections"])


async def warm_up(urls: dict[str, str], shape: Shape) -> None:
    """A few requests per gateway (lazy imports, first connections), not measured."""
    sessions = BUILDERS["c-random"](shape, 50.0, 0.1, 999)[:4]
    for name, url in urls.items():
        load = await replay(url, sessions, max_tokens=2)
        if load.errors:
            raise RuntimeError(f"{name}: the warm-up failed: {load.error_samples[0]}")


async def measure(
    args: argparse.Namespace,
    fleet: Fleet,
    urls: dict[str, str],
    rates: dict[str, float],
    shape: Shape,
    pids: dict[str, int],
) -> list[report.Window]:
    """`urls` and `pids`: each path's gateway."""
    await warm_up(urls, shape)
    windows = []
    names = list(urls)
    for r in range(args.repeats):
        for i, wl in enumerate(args.workloads):
            sessions = BUILDERS[wl](shape, rates[wl], args.duration, args.seed + r)
            shift = (r + i) % len(names)
            for path in names[shift:] + names[:shift]:
                await fleet.reset()
                cpu = tree_cpu(pids[path])
                load = await replay(urls[path], sessions, max_tokens=shape.max_tokens)
                window = report.Window(path, wl, r, load, await fleet.stats())
                window.arrival_s = args.duration
                window.gateway_cpu_s = cpu_delta(cpu, tree_cpu(pids[path]))
                if path == "balancer" or path.endswith("-1url"):  # behind the balancer
                    window.connections = await fleet.connections(fleet.balancers[0])
                windows.append(window)
                print(
                    f"  repeat {r + 1}/{args.repeats}  {wl:<15} {path:<16} {load.requests:>4} req "
                    f"in {load.seconds:5.1f} s  TTFT p50/p90/p99 {window.ttft_ms(0.5):5.0f}/"
                    f"{window.ttft_ms(0.9):5.0f}/{window.ttft_ms(0.99):5.0f} ms  hit "
                    f"{window.hit_ratio:.2f}  prefill load {window.prefill_load:.2f}  per replica "
                    f"{'/'.join(map(str, window.per_replica))}  errors {load.errors}",
                    flush=True,
                )
    return windows


async def scale_out(
    args: argparse.Namespace, fleet: Fleet, url: str, rate: float, shape: Shape
) -> dict[str, Any]:
    """A gateway whose balancer starts with three replicas; the fourth is added half way."""
    balancer = fleet.balancers[1]
    await warm_up({"scale-out": url}, shape)
    await fleet.reset()
    duration = 2 * args.duration
    sessions = BUILDERS["a-tenants"](shape, rate, duration, args.seed + 100)
    task = asyncio.create_task(replay(url, sessions, max_tokens=shape.max_tokens))
    await asyncio.sleep(duration / 2)
    added = fleet.replicas[3].url.removeprefix("http://")
    await fleet.http.post(f"{balancer.control_url}/replicas", json={"add": added})
    before = [s["requests"] for s in await fleet.stats()]
    conns_before = await fleet.connections(balancer)
    load = await task
    after = [s["requests"] for s in await fleet.stats()]
    conns_after = await fleet.connections(balancer)
    return {
        "rate": rate, "duration_s": duration, "added_at_s": duration / 2, "added": added,
        "requests_before": before,
        "requests_after": [a - b for a, b in zip(after, before, strict=True)],
        "connections_before": [conns_before.get(k, 0) for k in conns_after],
        "connections_after": [conns_after[k] - conns_before.get(k, 0) for k in conns_after],
        "errors": load.errors, "requests": load.requests,
    }  # fmt: skip


def scale_out_text(s: dict[str, Any]) -> str:
    rows = [
        [
            when,
            "/".join(map(str, s[f"requests_{key}"])),
            "/".join(map(str, s[f"connections_{key}"])),
        ]
        for when, key in (("before the add", "before"), ("after the add", "after"))
    ]
    header = ["", "requests per replica", "connections opened per replica"]
    return (
        f"Scale-out: workload a-tenants at {s['rate']:.1f} req/s for {s['duration_s']:g} s through "
        f"the gateway (one url) and a balancer of replicas 0-2; replica 3 ({s['added']}) added at "
        f"{s['added_at_s']:g} s.\n\n{report.markdown(header, rows)}\n\n"
        f"{s['requests']} requests, {s['errors']} errors."
    )


async def run(
    args: argparse.Namespace,
    fleet: Fleet,
    paths: dict[str, str],
    rates: dict[str, float],
    shape: Shape,
    *,
    pids: dict[str, int],
    scale_url: str | None,
) -> tuple[list[report.Window], dict[str, Any]]:
    """The measured paths (name: the gateway's URL), then the scale-out observation when its
    gateway is up."""
    try:
        windows = await measure(args, fleet, paths, rates, shape, pids) if paths else []
        scale: dict[str, Any] = {}
        if scale_url is not None:
            print("  scale-out ...", flush=True)
            scale = await scale_out(args, fleet, scale_url, 0.75 * rates["a-tenants"], shape)
        return windows, scale
    finally:
        await fleet.http.aclose()
