"""LLM routing across replicas: today's Kubernetes shape against the gateway's endpoint pools.

    .venv/bin/python -m bench.fleet                      # ~10 minutes on 2 cores
    .venv/bin/python -m bench.fleet --quick              # a ~1-minute smoke run
    .venv/bin/python -m bench.fleet --paths balancer round_robin --stand-in --quick
    .venv/bin/python -m bench.fleet --workers 2          # the gateway with 2 worker processes

Four simulated vLLM replicas (tests/servers/sim_vllm.py: a prefix cache of their own, prefill one
at a time at a fixed tokens/s, decode slowing with the batch) serve `fleet-llm`. Each path is the
gateway, `bentoml serve service:RemoteGateway` (as bench/gateway.py starts it), given a config:

    balancer      ONE url: a per-connection random TCP balancer (bench/tcp_balancer.py) in front of
                  the replicas, as a ClusterIP Service is today
    round_robin, least_load, prefix, session
                  the replicas as an endpoint pool, `urls` + `balance` (issue 22); `session` keys
                  on the request's `user`, which every request carries

A gateway whose config is refused (pools not landed yet) is reported as not run; `--stand-in`
gives the pool paths one `url`, the balancer, to test this harness before they land.

Every path replays the same sessions (bench/fleet_workloads.py: (a) tenants with long system
prompts, (b) multi-turn conversations, (c) random prompts; seeded Poisson arrivals at a rate
fitted so that random routing would use `--load` of the fleet's prefill capacity), with the
replicas' caches and counters reset before each window, so each path starts cold. Windows are
interleaved: for each repeat and workload, every path in a rotating order. Per workload and path:
TTFT p50/p90/p99, output tokens/s, the replicas' own prefix-cache hit ratio (hit over queried
tokens, from their /stats), the share of their prefill capacity used, requests per replica, the
gateway's CPU per request, errors; medians over `--repeats` (seed, seed + 1, ...). Then, unless
`--no-scale-out`, a scale-out observation: a separate gateway behind a balancer of three replicas
gets the fourth added half way through.

Output in `--out` (default /tmp/bench-results/fleet-<timestamp>): report.md, results.json,
the gateways' configs, ttft_p90.png, hit_ratio.png.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from bench import fleet_report as report
from bench.fleet_client import MODEL
from bench.fleet_run import Fleet, run, scale_out_text
from bench.fleet_workloads import WORKLOADS, Shape, cache_blocks_for, fit_rate
from bench.gateway import _run_loop, bentoml_serve
from bench.tcp_balancer import balancer_process
from tests.servers.process import ServerProcess, start_together
from tests.servers.sim_vllm import sim_vllm_processes

POLICIES = ("round_robin", "least_load", "prefix", "session")
PATHS = ("balancer", *POLICIES)
PER_ENDPOINT_INFLIGHT = 64


def backend_config(path: str, replicas: Sequence[str], balancer: str, stand_in: bool) -> dict:
    common = {"kind": "openai", "timeout_s": 600, "retries": 2}
    if path == "balancer" or stand_in:
        return {**common, "url": balancer}
    return {**common, "urls": list(replicas), "balance": path}


def path_names(args: argparse.Namespace) -> dict[str, str]:
    """A stand-in pool path is named for what it is: one url, the balancer."""
    return {
        p: f"{p}-1url" if args.stand_in and p != "balancer" else p for p in PATHS if p in args.paths
    }


def gateway_config(backend: dict[str, Any], *, endpoints: int, workers: int) -> dict[str, Any]:
    """max_inflight is per endpoint in a pool; one url gets the pool's total, so no path is
    held back by its admission limit more than another."""
    inflight = PER_ENDPOINT_INFLIGHT * (1 if "urls" in backend else endpoints)
    return {
        "routing": {"backends": {"fleet": backend}, "models": {MODEL: {"backend": "fleet"}}},
        "admission": {"fleet": {"max_inflight": inflight, "max_queue": 1024}},
        "log": {"access_log": False},
        "gateway": {"workers": workers, "grpc_port": None},
    }


def gateway_process(name: str, config: dict[str, Any], directory: Path) -> ServerProcess:
    path = directory / f"gateway-{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return bentoml_serve(
        f"fleet-{name}", "service:RemoteGateway", directory / name, BUNDLE_CONFIG=str(path)
    )


def start_each(servers: dict[str, ServerProcess]) -> dict[str, str]:
    """Start them in parallel; one that fails does not stop the others. Returns the failures."""

    def start(server: ServerProcess) -> str:
        try:
            server.start()
        except (RuntimeError, TimeoutError) as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            errors = [ln for ln in lines if "rror" in ln or "urls" in ln or "balance" in ln]
            return (errors or lines or ["no output"])[-1][:300]
        return ""

    with ThreadPoolExecutor(max(1, len(servers))) as pool:
        results = dict(zip(servers, pool.map(start, servers.values()), strict=True))
    return {name: reason for name, reason in results.items() if reason}


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    p.add_argument("--repeats", type=int, default=3, help="seeded repeats, medians (default 3)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds of arrivals per window")
    p.add_argument(
        "--load",
        type=float,
        default=0.75,
        help="share of the fleet's prefill capacity random routing would use (default 0.75)",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=1, help="gateway.workers of every gateway")
    p.add_argument(
        "--stand-in",
        action="store_true",
        help="pool paths get one url, the balancer (to test the harness)",
    )
    p.add_argument(
        "--scale-out",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the scale-out observation (default: on, off with --quick)",
    )
    p.add_argument("--quick", action="store_true", help="1 repeat of 2 s windows: a smoke run")
    p.add_argument("--out", type=Path, help="default /tmp/bench-results/fleet-<timestamp>")
    sim = p.add_argument_group("the replicas (tests/servers/sim_vllm.py)")
    sim.add_argument("--prefill-tokens-per-s", type=float, default=5000.0)
    sim.add_argument("--token-ms", type=float, default=20.0)
    sim.add_argument("--batch-k", type=float, default=8.0)
    sim.add_argument(
        "--cache-blocks",
        type=int,
        default=0,
        help="per replica (default: half the blocks of all tenants' prompts)",
    )
    shape = p.add_argument_group("the workloads (bench/fleet_workloads.py)")
    for name, value in asdict(Shape()).items():
        shape.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = p.parse_args()  # fmt: skip
    if args.quick:
        args.repeats, args.duration = 1, 2.0
    if args.scale_out is None:
        args.scale_out = not args.quick
    return args


def parameters(args: argparse.Namespace, shape: Shape, cache_blocks: int, fits: dict) -> str:
    capacity = 4 * args.prefill_tokens_per_s
    lines = [
        f"- replicas: 4 simulated vLLM (tests/servers/sim_vllm.py) on 127.0.0.2-5, model {MODEL}",
        f"- prefill: {args.prefill_tokens_per_s:g} uncached tokens/s per replica, one at a time, "
        f"first come first served (fleet: {capacity:g} tokens/s)",
        f"- decode: {shape.max_tokens} tokens per request; each after the first takes "
        f"{args.token_ms:g} ms * (1 + batch / {args.batch_k:g})",
        f"- prefix cache: LRU of {cache_blocks} blocks of 16 tokens per replica"
        + (
            ""
            if args.cache_blocks
            else f" (half of all {shape.tenants} tenants' system-prompt full blocks)"
        )
        + "; tokens: whitespace-separated words cut in 4-byte pieces; block keys: a blake2b chain",
        f"- (a) a-tenants: {shape.tenants} tenants x {shape.users_per_tenant} users, system prompt "
        f">= {shape.system_bytes} bytes, user turn {shape.turn_words} words",
        f"- (b) b-conversations: {shape.turns} turns, a {shape.doc_bytes}-byte document first, "
        f"follow-ups of {shape.turn_words} words, think time exp(mean {shape.think_s:g} s), "
        "the whole history each turn, user = conversation id",
        f"- (c) c-random: one turn of {shape.random_bytes} bytes of random words, user unique",
    ]
    for wl, (rate, replay_) in fits.items():
        lines.append(
            f"- rate {wl}: {rate:.2f} req/s, Poisson (seed {args.seed} + repeat); random "
            f"routing replayed offline: {replay_.prompt_tokens:.0f} prompt tokens/request, "
            f"{replay_.uncached_tokens:.0f} uncached (hit {replay_.hit_ratio:.2f}), prefill load "
            f"{rate * replay_.uncached_tokens / capacity:.2f}"
        )
    # a window: its arrivals, then the last replies (a conversation's last turns, in b)
    tails = {"a-tenants": 0.7, "b-conversations": shape.turns * (shape.think_s + 0.6) + 0.5}
    per_path = args.repeats * sum(args.duration + tails.get(w, 0.7) for w in args.workloads)
    lines += [
        f"- windows: {args.duration:g} s of arrivals each, then until the last reply; per path "
        f"{args.repeats} repeats x {len(args.workloads)} workloads, ~{per_path:.0f} s; paths "
        "interleaved in a rotating order; the replicas' caches and counters reset before each",
        f"- gateway: `bentoml serve service:RemoteGateway`, gateway.workers {args.workers}, "
        f"admission {PER_ENDPOINT_INFLIGHT} in flight per endpoint (one url: "
        f"{4 * PER_ENDPOINT_INFLIGHT}), max_queue 1024, retries 2, access log off"
        + (" (each worker keeps its own picture of the endpoints)" if args.workers > 1 else ""),
        f"- stand-in: {'pool paths get one url, the balancer' if args.stand_in else 'off'}",
        f"- command: .venv/bin/python -m bench.fleet {' '.join(sys.argv[1:])}",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    shape = Shape(**{k: getattr(args, k) for k in asdict(Shape())})
    out = args.out or Path(tempfile.gettempdir()) / "bench-results" / time.strftime(
        "fleet-%Y%m%d-%H%M%S"
    )
    out.mkdir(parents=True, exist_ok=True)
    cache_blocks = args.cache_blocks or cache_blocks_for(shape, args.seed)
    fits = {
        wl: fit_rate(wl, shape, duration_s=args.duration,
                     capacity_tokens_s=4 * args.prefill_tokens_per_s, load=args.load,
                     replicas=4, cache_blocks=cache_blocks, seed=args.seed)
        for wl in WORKLOADS
        if wl in args.workloads or (wl == "a-tenants" and args.scale_out)  # sizes the scale-out
    }  # fmt: skip
    params = parameters(args, shape, cache_blocks, fits)
    print(params, flush=True)

    directory = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    options = ["--cache-blocks", str(cache_blocks), "--prefill-tokens-per-s",
               str(args.prefill_tokens_per_s), "--token-ms", str(args.token_ms),
               "--batch-k", str(args.batch_k), "--max-tokens", str(shape.max_tokens)]  # fmt: skip
    replicas = sim_vllm_processes(4, options)
    replica_urls = [r.url for r in replicas]
    balancers = [balancer_process(replica_urls, seed=args.seed)]
    if args.scale_out:
        balancers.append(balancer_process(replica_urls[:3], seed=args.seed + 1))
    gateways = {
        name: gateway_process(name, gateway_config(
            backend_config(path, replica_urls, balancers[0].process.url, args.stand_in),
            endpoints=4, workers=args.workers), directory)
        for path, name in path_names(args).items()
    }  # fmt: skip
    if args.scale_out:
        config = gateway_config(backend_config("balancer", (), balancers[1].process.url, False),
                                endpoints=4, workers=args.workers)  # fmt: skip
        gateways["scale-out"] = gateway_process("scale-out", config, directory)
    for name in gateways:
        (out / f"gateway-{name}.yaml").write_text((directory / f"gateway-{name}.yaml").read_text())
    own = [*replicas, *(b.process for b in balancers)]
    try:
        print(f"starting 4 replicas, {len(balancers)} balancer(s), gateways: "
              f"{', '.join(gateways)} ...", flush=True)  # fmt: skip
        start_together(*(s.start for s in own), aborts=[s.abort for s in own])
        began = time.perf_counter()
        skipped = start_each(gateways)
        print(f"gateways up after {time.perf_counter() - began:.0f} s", flush=True)
        for name, reason in skipped.items():
            print(f"  {name}: not run, the gateway did not start: {reason}")
        urls = {name: g.url for name, g in gateways.items() if name not in skipped}
        scale_url = urls.pop("scale-out", None)
        rates = {wl: fit[0] for wl, fit in fits.items()}

        async def go() -> tuple[list[report.Window], dict[str, Any]]:
            fleet = Fleet(replicas, balancers)  # its client belongs to this loop
            pids = {name: _pid(gateways[name]) for name in urls}
            return await run(args, fleet, urls, rates, shape, pids=pids, scale_url=scale_url)

        windows, scale = _run_loop(go())
    finally:
        for server in [*gateways.values(), *reversed(own)]:
            server.stop()
    write_report(args, out, params, windows, skipped, scale)


def write_report(
    args: argparse.Namespace,
    out: Path,
    params: str,
    windows: list[report.Window],
    skipped: dict[str, str],
    scale: dict[str, Any],
) -> None:
    by = report.rows(windows)
    paths = [p for p in path_names(args).values() if p not in skipped]
    workloads = [w for w in WORKLOADS if w in args.workloads]
    table = report.table(by, workloads, paths)
    title = (
        f"Medians over {args.repeats} repeat(s). hit ratio: the replicas' own prefix-cache hit "
        "tokens over queried tokens; prefill load: the replicas' prefill seconds over 4 x the "
        "seconds of arrivals (the share of the fleet's prefill capacity used); gw CPU: the "
        "gateway's process tree (user + system) per request; vs bal: this path / the balancer "
        "path (TTFT: lower is better); reqs per replica, errors: sums"
    )
    parts = [title, "", table]
    if versus := report.prefix_vs_least_load(by, "c-random"):
        parts += ["", versus]
    if scale:
        parts += ["", scale_out_text(scale)]
    if skipped:
        parts += ["", "Not run (the gateway did not start):", ""]
        parts += [f"- {name}: {reason}" for name, reason in skipped.items()]
    text = "\n".join(parts)
    print(f"\n{text}")
    samples = [(w.path, w.workload, e) for w in windows for e in w.load.error_samples]
    for path, wl, message in samples[:10]:
        print(f"error sample ({path}, {wl}): {message}")
    written = report.plot(by, workloads, paths, out)
    lines = ["# LLM routing across replicas (bench/fleet.py)", "", params, "", text]
    if samples:
        lines += ["", "Error samples:", ""] + [f"- {p}, {w}: {m}" for p, w, m in samples[:20]]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in written]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    results = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "parameters": params, "skipped": skipped, "scale_out": scale,
        "windows": [w.record() for w in windows],
    }  # fmt: skip
    (out / "results.json").write_text(json.dumps(_finite(results), indent=1))
    print(f"\nwrote {out}/report.md, results.json" + "".join(f", {p.name}" for p in written))


def _pid(server: ServerProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


def _finite(value: Any) -> Any:
    """NaN (a percentile of no samples) as null: strict JSON readers refuse NaN."""
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


if __name__ == "__main__":
    main()
