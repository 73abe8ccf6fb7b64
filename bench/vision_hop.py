"""What one image costs on the gateway -> vision runner hop: float32 input vs uint8 crops.

    .venv/bin/python -m bench.vision_hop              # about a minute on an idle 2-core CPU
    .venv/bin/python -m bench.vision_hop --rounds 1 --calls 200    # a smoke run

The gateway preprocesses each image and sends the model input to the vision runner through
BentoML's dependency client (pickle over loopback HTTP, the batchable `predict`): a float32
(1, 3, 224, 224) array, 588 KiB. The alternative is the resized, center-cropped 8-bit pixels,
uint8 (1, 224, 224, 3), 147 KiB, normalized in the runner (`contract.imaging.normalize`).

This serves `bench.vision_hop:Caller` (an entry service) over `Pixels` (a runner with both
batchable APIs, configured as runners/vision.py configures its own: same connection settings,
same bound on batch holds) under `bentoml serve`, and asks the caller to time calls from inside
its own process, with the client the gateway uses. The runner does no forward pass and returns
(N, 1000) float32 probabilities-sized answers, so what is measured is the hop alone: latency
p50, calls/s, and the CPU per call of the runner and of the caller (their process times).
Rounds interleave the two kinds; the table gives uint8's figures as a ratio to float32's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import bentoml
import httpx
import numpy as np
from bentoml.validators import DType

from contract import imaging
from runners.batching import cap_batch_hold
from runners.metrics import RUNNER_CONNECTION
from settings import VisionSettings

CROP = 224
CLASSES = 1000
PP = imaging.Preprocessing()


@bentoml.service(name="pixels", workers=1, runner_connection=RUNNER_CONNECTION)
class Pixels:
    def __init__(self) -> None:
        cap_batch_hold(VisionSettings().max_hold_ms)  # as runners/vision.py does

    @bentoml.api(batchable=True, max_batch_size=16, max_latency_ms=10_000)
    def float32(self, x: Annotated[np.ndarray, DType("float32")]) -> np.ndarray:
        return np.ascontiguousarray(x.reshape(len(x), -1)[:, :CLASSES])

    @bentoml.api(batchable=True, max_batch_size=16, max_latency_ms=10_000)
    def uint8(self, x: Annotated[np.ndarray, DType("uint8")]) -> np.ndarray:
        pixels = imaging.normalize(x, PP)
        return np.ascontiguousarray(pixels.reshape(len(pixels), -1)[:, :CLASSES])

    @bentoml.api
    def cpu(self) -> float:
        return time.process_time()


@bentoml.service(name="pixels-caller", workers=1, traffic={"timeout": 600})
class Caller:
    pixels = bentoml.depends(Pixels)

    @bentoml.api
    async def measure(self, kind: str, concurrency: int, calls: int) -> dict[str, float]:
        rng = np.random.default_rng(0)
        if kind == "float32":
            x: np.ndarray = rng.standard_normal((1, 3, CROP, CROP), dtype=np.float32)
        else:
            x = rng.integers(0, 256, (1, CROP, CROP, 3), dtype=np.uint8)
        client = self.pixels.to_async
        api = getattr(client, kind)
        for _ in range(20):
            await api(x)
        latencies: list[float] = []

        async def worker(n: int) -> None:
            for _ in range(n):
                start = time.perf_counter()
                await api(x)
                latencies.append(time.perf_counter() - start)

        runner0, caller0, start = await client.cpu(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        caller1, runner1 = time.process_time(), await client.cpu()
        n = len(latencies)
        return {
            "per_s": n / elapsed,
            "p50_ms": statistics.median(latencies) * 1000,
            "runner_cpu_ms": (runner1 - runner0) * 1000 / n,
            "caller_cpu_ms": (caller1 - caller0) * 1000 / n,
            "bytes": float(x.nbytes),
        }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.vision_hop", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=800, help="calls per window")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    from bench.gateway import bentoml_serve

    server = bentoml_serve(
        "bench-vision-hop", "bench.vision_hop:Caller", Path(tempfile.mkdtemp(prefix="bench-hop-"))
    )
    server.start()
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    try:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            for r in range(args.rounds):
                for c in args.concurrency:
                    kinds = ("float32", "uint8") if r % 2 == 0 else ("uint8", "float32")
                    for kind in kinds:
                        body = {"kind": kind, "concurrency": c, "calls": args.calls}
                        got = http.post("/measure", json=body)
                        got.raise_for_status()
                        results.setdefault((kind, c), []).append(got.json())
                        print(f"  round {r + 1} c={c} {kind}: {got.json()}", flush=True)
    finally:
        server.stop()
    print(table(results, args.concurrency))


def table(results: dict[tuple[str, int], list[dict[str, float]]], levels: list[int]) -> str:
    """Medians over the rounds; the ratio column is uint8 / float32 at the same concurrency."""
    cols = ("per_s", "p50_ms", "runner_cpu_ms", "caller_cpu_ms")
    lines = [
        "| c | input | KiB | calls/s | p50 ms | runner CPU ms/call | caller CPU ms/call |"
        " uint8/float32: calls/s, CPU (runner + caller) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in levels:
        med: dict[str, dict[str, Any]] = {
            kind: {k: statistics.median(w[k] for w in results[kind, c]) for k in (*cols, "bytes")}
            for kind in ("float32", "uint8")
        }
        for kind in ("float32", "uint8"):
            m = med[kind]
            ratio = ""
            if kind == "uint8":
                f = med["float32"]
                cpu = (m["runner_cpu_ms"] + m["caller_cpu_ms"]) / (
                    f["runner_cpu_ms"] + f["caller_cpu_ms"]
                )
                ratio = f"{m['per_s'] / f['per_s']:.2f}x, {cpu:.2f}x"
            lines.append(
                f"| {c} | {kind} | {m['bytes'] / 1024:.0f} | {m['per_s']:.0f} | {m['p50_ms']:.2f} "
                f"| {m['runner_cpu_ms']:.3f} | {m['caller_cpu_ms']:.3f} | {ratio} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
