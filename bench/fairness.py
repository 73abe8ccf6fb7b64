"""Priority and fairness in the gateway's admission: `policy: fifo` (before) against `fair`.

    .venv/bin/python -m bench.fairness                   # ~5 minutes on 2 cores
    .venv/bin/python -m bench.fairness --quick           # a smoke run, ~1.5 minutes
    .venv/bin/python -m bench.fairness --reserved-fraction 0.3 --out /tmp/fair-r30

The deterministic upstream (tests/servers/upstream.py: `--prefill-ms` before the first token,
`--token-ms` per token after it, `max_tokens` tokens, no limit of its own) behind two gateways,
`bentoml serve service:RemoteGateway` (one worker each, as bench/gateway.py starts it), one per
admission policy, both with `admission: {fixed: {max_inflight: C, max_queue: 100000,
queue_timeout_s: 600}}`. C is the backend's capacity and the gateway's admission is the scheduler
measured. A slot is held from admission to a stream's last chunk, so C slots serve
C x n / (prefill + (n - 1) x token) tokens/s of n-token requests. Three API keys (`auth.keys`):
`key-a` (max_priority normal), `key-b` (max_priority high), `key-c`. Streaming chat completions;
TTFT stamped on the first non-empty raw chunk. For each policy, four phases:

0. **capacity**: key A alone, 3 x C closed-loop workers, normal class, A's request length: what
   the C slots deliver in tokens/s when every one is busy, through this gateway on this machine
   (below the nominal figure by the upstream's timer slack and the relay's own time);
1. **baseline**: key B alone, normal class, open-loop seeded Poisson arrivals at `--b-load` of
   the capacity (in slots: rate x stream length = b-load x C);
2. **low flood**: key A, closed loop, 3 x C workers sending `service_tier: flex` (low) streams
   back to back (C in service, 2 x C always queued), and key B as in 1, same seed;
3. **two keys**: keys A and C, normal class, 1.5 x C closed-loop workers each, A's requests
   4 x as long as C's.

Measured inside a window after a ramp; then no new requests and every stream finishes before the
next phase. Goals: in 2, B's TTFT p99 <= 1.5 x its baseline p99, no B request refused, and A's
tokens/s >= 90% of the capacity B leaves: phase 0's tokens/s x (C - B's busy slots) / C, B's
busy slots being its tokens/s x its mean stream time in 1 / its request length (the capacity in
tokens/s less B's, counted at A's request length); in 3, A and C each 45-55% of the completion
tokens (admission charges prompt characters / 4 + max_tokens: the prompt is 2 characters). The
admission's in-flight gauge (/metrics) is sampled every 0.5 s in each window. Output: a
markdown table on stdout and in `--out` (default /tmp/bench-results/fairness-<timestamp>):
report.md, results.json (every TTFT), the gateway config, fairness.png.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.fairness_load import (
    KEY_A,
    KEY_B,
    KEY_C,
    Plan,
    Tally,
    Window,
    chat_body,
    keyed_client,
    run_phase,
    stream_once,
)
from bench.fairness_report import progress, report
from bench.gateway import _run_loop, bentoml_serve
from gateway.scope.keys import digest
from lifecycle import tune_gc
from tests.servers.process import ServerProcess, start_together
from tests.servers.upstream import upstream_process

POLICIES = ("fifo", "fair")
BACKEND = "fixed"

# --- the servers -----------------------------------------------------------------------------


def gateway_config(plan: Plan, upstream_url: str, policy: str) -> dict[str, Any]:
    admission: dict[str, Any] = {"max_inflight": plan.capacity, "max_queue": 100_000,
                                 "queue_timeout_s": 600, "policy": policy}  # fmt: skip
    if plan.reserved_fraction is not None:
        admission["reserved_fraction"] = plan.reserved_fraction
    return {
        "routing": {
            "backends": {BACKEND: {"kind": "openai", "url": upstream_url, "timeout_s": 600}},
            "models": {"fixed-llm": {"backend": BACKEND}},
        },
        "admission": {BACKEND: admission},
        "auth": {"keys": [
            {"name": KEY_A.name, "sha256": digest(KEY_A.secret), "max_priority": "normal"},
            {"name": KEY_B.name, "sha256": digest(KEY_B.secret), "max_priority": "high"},
            {"name": KEY_C.name, "sha256": digest(KEY_C.secret)},
        ]},
        "gateway": {"workers": 1, "grpc_port": None},  # admission counts per worker
    }  # fmt: skip


def gateway_process(config: dict[str, Any], directory: Path, name: str) -> ServerProcess:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "routes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return bentoml_serve(name, "service:RemoteGateway", directory, BUNDLE_CONFIG=str(path))


# --- the run ---------------------------------------------------------------------------------


async def warm_up(url: str) -> None:
    async with keyed_client(url, KEY_B) as client:
        for _ in range(5):
            tally = Tally(Window(0.0))
            await stream_once(client, chat_body(4, None), KEY_B.name, tally)
            if tally.refused or tally.errors:
                raise RuntimeError(f"{url}: the warm-up stream failed: {tally.samples}")


async def run(plan: Plan, urls: dict[str, str]) -> dict[str, list[Tally]]:
    for url in urls.values():
        await warm_up(url)
    results: dict[str, list[Tally]] = {}
    for policy, url in urls.items():
        results[policy] = []
        for phase in plan.phases():
            tally = Tally()
            await run_phase(url, phase, tally, backend=BACKEND)
            results[policy].append(tally)
            print(f"  {policy:<4} {phase.name:<10} " + progress(tally), flush=True)
    return results


# --- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fairness", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add = parser.add_argument
    add("--capacity", type=int, default=20, help="C: the backend's slots (default 20)")
    add("--prefill-ms", type=float, default=50.0, help="the upstream's prefill (default 50)")
    add("--token-ms", type=float, default=20.0, help="the upstream's per-token delay (20)")
    add("--b-tokens", type=int, default=16, help="key-b's request length (default 16)")
    add("--b-load", type=float, default=0.10, help="key-b's share of the capacity (0.10)")
    add("--a-tokens", type=int, default=64, help="key-a's flex request length (default 64)")
    add("--long-tokens", type=int, default=128, help="phase 3, key-a (default 128)")
    add("--short-tokens", type=int, default=32, help="phase 3, key-c (default 32)")
    add("--window", type=float, default=30.0, help="seconds measured per phase (default 30)")
    add("--capacity-window", type=float, default=10.0, help="seconds for phase 0 (default 10)")
    add("--seed", type=int, default=1)
    add("--reserved-fraction", type=float, help="admission reserved_fraction (default: unset)")
    add("--quick", action="store_true", help="a smoke run: 4 s windows (3 s for phase 0)")
    add("--out", type=Path, help="default /tmp/bench-results/fairness-<timestamp>")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    plan = Plan(args.capacity, args.prefill_ms, args.token_ms, args.b_tokens, args.b_load,
                args.a_tokens, args.long_tokens, args.short_tokens,
                4.0 if args.quick else args.window, 3.0 if args.quick else args.capacity_window,
                args.seed,
                args.reserved_fraction)  # fmt: skip
    out = args.out or Path(tempfile.gettempdir()) / "bench-results" / time.strftime(
        "fairness-%Y%m%d-%H%M%S"
    )
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    if load[0] > (os.cpu_count() or 1) / 2:
        print(f"note: load average {load[0]:.2f}; the numbers want a quiet machine")
    directory = Path(tempfile.mkdtemp(prefix="bench-fairness-"))
    upstream = upstream_process(prefill_ms=plan.prefill_ms, token_ms=plan.token_ms,
                                tokens=plan.b_tokens)  # fmt: skip
    configs = {p: gateway_config(plan, upstream.url, p) for p in POLICIES}
    gateways = {p: gateway_process(configs[p], directory / p, f"bench-{p}") for p in POLICIES}
    (out / "gateway-routes.yaml").write_text(yaml.safe_dump(configs["fair"], sort_keys=False))
    servers = [upstream, *gateways.values()]
    try:
        print(f"starting the upstream and a gateway per policy ({', '.join(POLICIES)}) ...")
        start_together(*(s.start for s in servers), aborts=[s.abort for s in servers])
        tune_gc()
        results = _run_loop(run(plan, {p: g.url for p, g in gateways.items()}))
    finally:
        for server in reversed(servers):
            server.stop()
    report(plan, args, load, results, gateways, out)


if __name__ == "__main__":
    main()
