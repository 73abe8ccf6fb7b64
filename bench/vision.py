"""Vision and speech serving benchmark: the gateway with BentoML batching vs the raw model.

    .venv/bin/python -m bench.vision            # minutes on an idle 2-core CPU, longer if shared
    .venv/bin/python -m bench.vision --quick    # a smoke run with a handful of requests

1. Creates ResNet-50 and Whisper-tiny (full architectures, random weights) in a temporary
   BentoML store (bench/models.py).
2. Measures the raw forward in this process at several batch sizes; the best is the target.
3. Serves `bench.services:MediaGateway` (the real gateway app and adapters over the two runners,
   without vLLM) with batching on, then off, and sends requests through the gateway's HTTP
   routes at concurrency 1, 8 and 32 (after sequential warm-up requests that also run through
   the training phase of BentoML's dispatcher).
4. With batching on, the peer: a real Triton Inference Server (PyTriton's `tritonserver`, in
   .venv-triton-bench made by `scripts/triton-env --bench`; bench/triton_resnet.py) serving the
   same ResNet-50 (traced to TorchScript from the same stored weights) with its dynamic batcher
   and the same max batch size. The same client sends both the same KServe V2 request, one
   preprocessed float32 (1, 3, 224, 224) tensor with the binary tensor extension, to the
   gateway's `/v2/models/<m>/infer` and to Triton's, alternating which goes first per level.
   Each server's "vs raw" divides by the forward it runs, measured around its window: the
   runner's graph (`--graph`, its `vision.graph`: optimized TorchScript by default, or eager
   PyTorch) for the runner, Triton's TorchScript module (`--triton-graph`: the plain trace a
   Triton user ships, by default, or the runner's optimized graph) for Triton; the raw rows show
   both. `--no-triton` skips it.
5. Prints one table: throughput and p50/p99 latency of the successful requests, the mean batch
   the runner (or Triton) formed, the requests BentoML shed (503: it expected them to miss
   max_latency_ms), and ratios to the raw forward, to the unbatched service and to Triton.

Every forward runs on one device, `--device` (default: CUDA when torch sees it, as the runners
choose; runners/device.py): the raw forward in this process, the runners (`device:` in their
config) and Triton (`--device` of bench/triton_resnet.py; on CUDA its venv is made with
`BUILD=gpu`, CUDA torch from requirements/triton-bench-gpu.lock). So the command is the same on
a GPU machine, and its ratios compare like with like there too.

Other processes may share the CPU, so each served level is compared with the raw forward at its
best batch size measured right before and right after it (the mean of the two), not with the
sweep at the start: a ratio then compares like with like even when the machine's load drifts.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import httpx
import numpy as np
import yaml

if TYPE_CHECKING:
    from settings import VisionGraph

CONCURRENCY = (1, 8, 32)
IMAGE_SIZE = (320, 240)  # a small web photo, JPEG; the gateway decodes and resizes it
CLIP_SECONDS = 5.0
WHISPER_TOKENS = 32  # max_new_tokens per clip: fixed, so every run decodes the same amount
ROOT = Path(__file__).resolve().parents[1]

Send = Callable[[httpx.AsyncClient, str], Awaitable[httpx.Response]]


@dataclass(frozen=True)
class Workload:
    name: str
    runner: str  # the runner label in runner_batch_size
    unit: str
    raw_batches: tuple[int, ...]
    requests: dict[int, int]  # concurrency -> requests measured
    # Sequential requests first: BentoML's dispatcher runs its first ~11 batches as a training
    # phase. It learns its hold time from the waits it sees, so after a burst (a c=32 window)
    # lone requests are held up to the runner's max_hold_ms (runners/batching.py; without that
    # bound, about as long as the burst's requests queued: ~2 s each).
    warmup: int
    send: Send
    forward: Callable[[int], object]  # the raw forward of a batch of n, in this process


@dataclass(frozen=True)
class Row:
    model: str
    path: str
    unit: str
    per_s: float
    concurrency: int | None = None
    requests: int = 0
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_batch: float | None = None
    shed: int = 0  # 503s: BentoML refused requests it expected to miss max_latency_ms
    errors: int = 0  # any other non-200
    budget_ms: int | None = None
    raw_ref: float | None = None  # raw forward rate measured around this served level


# --- requests ----------------------------------------------------------------------------------


def jpeg(seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def clip(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(CLIP_SECONDS * 16_000)) / 16_000
    tone = 0.3 * np.sin(2 * np.pi * (200 + 40 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def wav(samples: np.ndarray) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, 16_000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def send_image(model: str) -> Send:
    data = jpeg(0)

    def send(client: httpx.AsyncClient, url: str) -> Awaitable[httpx.Response]:
        return client.post(
            f"{url}/v1/images/classifications",
            params={"model": model, "top_k": "5"},
            content=data,
            headers={"content-type": "image/jpeg"},
        )

    return send


def send_audio(model: str) -> Send:
    data = wav(clip(0))

    def send(client: httpx.AsyncClient, url: str) -> Awaitable[httpx.Response]:
        files = {"file": ("clip.wav", data, "audio/wav")}
        return client.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": model})

    return send


def send_tensor(model: str) -> Send:
    """One preprocessed image as a KServe V2 infer request, the tensor in binary (the extension
    tritonclient uses), the output asked for in binary too: the same bytes to either server."""
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    header = json.dumps(
        {
            "inputs": [{
                "name": "pixel_values", "shape": list(pixels.shape), "datatype": "FP32",
                "parameters": {"binary_data_size": pixels.nbytes},
            }],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    body = header + pixels.tobytes()
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }

    def send(client: httpx.AsyncClient, url: str) -> Awaitable[httpx.Response]:
        return client.post(f"{url}/v2/models/{model}/infer", content=body, headers=headers)

    return send


# --- raw forward -------------------------------------------------------------------------------


def raw_rate(run: Callable[[int], object], batch: int, *, min_seconds: float) -> float:
    """Items per second of `run(batch)` repeated for at least `min_seconds` (after a warm-up)."""
    run(batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds or done < batch:
        run(batch)
        done += batch
    return done / (time.perf_counter() - start)


def raw_rows(workload: Workload, min_seconds: float) -> list[Row]:
    rows = []
    for batch in workload.raw_batches:
        rate = raw_rate(workload.forward, batch, min_seconds=min_seconds)
        row = Row(workload.name, f"raw forward, batch {batch}", workload.unit, rate)
        rows.append(replace(row, mean_batch=batch))
        print(f"  {rows[-1].path}: {rate:.1f} {workload.unit}/s", flush=True)
    return rows


def raw_vision(
    path: Path, metadata: dict[str, Any], device: str, graph: VisionGraph
) -> tuple[Callable[[int], object], float]:
    """The batch runner (its `graph`), and the gateway's per-image preprocessing cost in ms."""
    import torch

    from contract import imaging
    from runners.classifier import Classifier

    classifier = Classifier.load(
        path,
        metadata,
        device=torch.device(device),
        graph=graph,
    )
    pixels = np.random.default_rng(0).standard_normal((32, 3, 224, 224), dtype=np.float32)
    data = jpeg(0)
    start = time.perf_counter()
    for _ in range(20):
        imaging.prepare(data, classifier.preprocessing, max_pixels=10**8)
    prep_ms = (time.perf_counter() - start) / 20 * 1000
    return (lambda n: classifier.probabilities(pixels[:n])), prep_ms


def raw_speech(path: Path, device: str) -> Callable[[int], object]:
    import torch

    from contract.speech import Clip
    from runners.whisper import Whisper

    whisper = Whisper.load(path, device=torch.device(device), max_new_tokens=WHISPER_TOKENS)
    clips = [Clip(audio=clip(0)) for _ in range(8)]
    return lambda n: whisper.transcribe(clips[:n])


# --- served ------------------------------------------------------------------------------------


async def load(
    send: Send, url: str, concurrency: int, n: int
) -> tuple[float, list[float], dict[int, int]]:
    """Send `n` requests from `concurrency` workers: (successes/s, latencies of the successes in
    s, count of each non-200 status)."""
    latencies: list[float] = []
    failures: dict[int, int] = {}
    tickets = iter(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in tickets:
            start = time.perf_counter()
            response = await send(client, url)
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                failures[response.status_code] = failures.get(response.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return len(latencies) / elapsed, latencies, failures


def batch_totals(url: str, runner: str) -> tuple[float, float]:
    """(items, batches) the runner has run, from runner_batch_size on the bundle's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"runner_batch_size_sum": 0.0, "runner_batch_size_count": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for s in family.samples:
            if s.name in totals and s.labels.get("runner") == runner:
                totals[s.name] += s.value
    return totals["runner_batch_size_sum"], totals["runner_batch_size_count"]


def served_rows(
    workload: Workload, url: str, mode: str, *, budget_ms: int | None, probe: Callable[[], float]
) -> list[Row]:
    """The three concurrency levels through the gateway, each between two raw probes."""
    asyncio.run(load(workload.send, url, 1, workload.warmup))
    totals = functools.partial(batch_totals, url, workload.runner)
    return [
        window(
            workload,
            f"gateway, {mode}",
            workload.send,
            url,
            c,
            budget_ms=budget_ms,
            probe=probe,
            totals=totals,
        )
        for c in CONCURRENCY
    ]


def window(
    workload: Workload, path: str, send: Send, url: str, concurrency: int, *,
    budget_ms: int | None, probe: Callable[[], float], totals: Callable[[], tuple[float, float]],
) -> Row:  # fmt: skip
    """One measured level between two raw probes; `totals()` is (items, batches) run so far."""
    n = workload.requests[concurrency]
    before = probe()
    items0, batches0 = totals()
    rate, latencies, failures = asyncio.run(load(send, url, concurrency, n))
    items1, batches1 = totals()
    raw = (before + probe()) / 2
    shed = failures.pop(503, 0)
    p50, p99 = np.percentile(np.array(latencies or [np.nan]) * 1000, [50, 99])
    mean_batch = (items1 - items0) / max(1.0, batches1 - batches0)
    print(
        f"  {path} c={concurrency}: {rate:.1f} {workload.unit}/s (raw {raw:.1f}), "
        f"p99 {p99:.0f} ms, {shed} shed (503), other errors {failures or 0}",
        flush=True,
    )
    return Row(
        workload.name, path, workload.unit, rate, concurrency, n, float(p50), float(p99),
        mean_batch, shed, sum(failures.values()), budget_ms, raw,
    )  # fmt: skip


@contextmanager
def served(
    home: Path, *, batching: bool, max_batch: dict[str, int], device: str, graph: str
) -> Iterator[str]:
    """`bentoml serve bench.services:MediaGateway` over the bench models; yields its URL.

    Each runner's max_batch_size is the raw sweep's best batch size (BentoML needs at least 2):
    on a CPU, bigger batches are slower per item, and the dispatcher fills whatever it may.
    """
    from bench.models import RESNET50, WHISPER_TINY
    from settings import SpeechSettings, VisionSettings
    from tests.servers.process import ServerProcess, free_port, http_ok

    speech = _section(SpeechSettings(), WHISPER_TINY, batching, max_batch["speech"])
    config = {
        "vision": {
            **_section(VisionSettings(), RESNET50, batching, max_batch["vision"]),
            "graph": graph,
        },
        "speech": {**speech, "max_new_tokens": WHISPER_TOKENS},
        "device": device,  # the runners run where the raw forward ran
    }
    config_path = home / f"bundle-{'batched' if batching else 'unbatched'}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "bentoml", "serve", "bench.services:MediaGateway"]
    server = ServerProcess(
        "bench-gateway",
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        ready=http_ok(f"{url}/readyz"),
        env={"BUNDLE_CONFIG": str(config_path), "BENTOML_HOME": str(home)},
        cwd=ROOT,
        timeout_s=300,
    )
    with running(server):
        yield url


@contextmanager
def running(server: Any) -> Iterator[None]:
    """A ServerProcess started for the `with` block and stopped after it."""
    server.start()
    try:
        yield
    finally:
        server.stop()


def _section(settings: Any, model: str, batching: bool, max_batch: int) -> dict[str, Any]:
    return {
        "model": model,
        "batching": batching,
        "max_batch_size": max(2, max_batch),
        "max_latency_ms": settings.max_latency_ms,
    }


# --- the peer: Triton serving the same ResNet-50 over KServe V2 ---------------------------------

TRITON_VENV = ROOT / ".venv-triton-bench"
TRITON_MODEL = "resnet-50"


def trace_resnet(
    path: Path, out: Path, device: str, graph: str = "trace"
) -> tuple[Path, Callable[[int], object]]:
    """The stored ResNet-50 traced to TorchScript for Triton on `device`, and the raw forward of
    what Triton runs, in this process (softmax included, as both servers run it). `graph`:
    "trace", the trace as it is (what a Triton user ships), or "optimized", the vision runner's
    graph (runners/classifier.py: traced, frozen, optimized for inference). An optimized graph
    does not serialize (its oneDNN constants do not load back), so for it Triton optimizes the
    trace at load (bench/triton_resnet.py --optimize), as the runner does."""
    import torch
    from transformers import AutoModelForImageClassification

    from models.export import LogitsOnly
    from runners.classifier import optimized

    model = LogitsOnly(AutoModelForImageClassification.from_pretrained(path)).to(device).eval()
    with torch.no_grad():
        torch.jit.trace(model, torch.zeros(2, 3, 224, 224, device=device)).save(str(out))
    net = torch.jit.load(str(out), map_location=device).eval()
    if graph == "optimized":
        net = optimized(model, (3, 224, 224), torch.device(device))
        if net is None:
            raise SystemExit("--triton-graph optimized: the optimized graph failed (logged above)")
    pixels = np.random.default_rng(0).standard_normal((32, 3, 224, 224), dtype=np.float32)

    def forward(n: int) -> object:  # from host memory and back, as a server's batch is
        with torch.inference_mode():
            batch = torch.from_numpy(pixels[:n]).to(device)
            return torch.softmax(net(batch), dim=-1).cpu().numpy()

    return out, forward


def ensure_triton_env(device: str) -> None:
    """scripts/triton-env --bench: idempotent, a second when nothing changed. On CUDA, BUILD=gpu:
    the venv gets CUDA torch (requirements/triton-bench-gpu.lock) instead of torch+cpu."""
    command = [str(ROOT / "scripts" / "triton-env"), "--bench"]
    env = {**os.environ, "BUILD": "gpu" if device == "cuda" else "cpu"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"scripts/triton-env --bench failed:\n{result.stdout}{result.stderr}")


@contextmanager
def triton_served(
    model_file: Path, max_batch: int, device: str, graph: str = "trace"
) -> Iterator[str]:
    from tests.servers.process import ServerProcess, free_port, http_ok

    http, grpc, metrics = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{http}"
    command = [
        str(TRITON_VENV / "bin" / "python"), str(ROOT / "bench" / "triton_resnet.py"),
        "--model", str(model_file), "--max-batch-size", str(max(2, max_batch)),
        "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
        "--device", device, *(["--optimize"] if graph == "optimized" else []),
    ]  # fmt: skip
    server = ServerProcess(
        "bench-triton",
        command,
        ready=http_ok(f"{url}/v2/models/{TRITON_MODEL}/ready"),
        url=url,
        env={"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {},
        cwd=ROOT,
        timeout_s=300,
    )
    with running(server):
        yield url


def triton_totals(url: str) -> tuple[float, float]:
    """(inferences, executions) Triton has run, from its statistics extension."""
    stats = httpx.get(f"{url}/v2/models/{TRITON_MODEL}/stats").json()["model_stats"][0]
    return float(stats["inference_count"]), float(stats["execution_count"])


def kserve_rows(
    workload: Workload, urls: dict[str, str], gateway_model: str, *,
    budget_ms: int, probes: dict[str, Callable[[], float]],
) -> list[Row]:  # fmt: skip
    """The gateway's and Triton's KServe V2 infer at each level, alternating which goes first.
    Each server's "vs raw" is against the forward it runs: eager for the runner, TorchScript for
    Triton (`probes`), measured around its window."""
    sends = {"gateway": send_tensor(gateway_model), "triton": send_tensor(TRITON_MODEL)}
    paths = {"gateway": "gateway, KServe V2", "triton": "Triton, KServe V2"}

    totals = {
        "gateway": functools.partial(batch_totals, urls["gateway"], workload.runner),
        "triton": functools.partial(triton_totals, urls["triton"]),
    }
    for name in sends:
        asyncio.run(load(sends[name], urls[name], 1, workload.warmup))
    rows = []
    for i, concurrency in enumerate(CONCURRENCY):
        for name in ("gateway", "triton") if i % 2 == 0 else ("triton", "gateway"):
            budget = budget_ms if name == "gateway" else None
            rows.append(
                window(
                    workload,
                    paths[name],
                    sends[name],
                    urls[name],
                    concurrency,
                    budget_ms=budget,
                    probe=probes[name],
                    totals=totals[name],
                )
            )
    return rows


# --- report ------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    """Rows as text; `*` marks the best raw batch size. Served rows' "vs raw" divides by the raw
    forward at that batch size measured around them (see the module docstring); "vs triton" is
    the gateway's KServe V2 rate over Triton's at the same concurrency."""
    raw = [r for r in rows if r.concurrency is None]
    best = {m: max(r.per_s for r in raw if r.model == m) for m in {r.model for r in raw}}
    unbatched = {(r.model, r.concurrency): r.per_s for r in rows if r.path.endswith("unbatched")}
    triton = {(r.model, r.concurrency): r.per_s for r in rows if r.path.startswith("Triton")}
    width = max(24, *(len(r.path) + 3 for r in rows))
    head = (
        f"{'model':<13}{'path':<{width}}{'conc':>5}{'reqs':>6}{'rate/s':>9}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'budget':>8}{'batch':>7}{'shed':>5}{'err':>5}{'vs raw':>8}{'vs unbat':>10}"
        f"{'vs triton':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        mark = " *" if r.concurrency is None and r.per_s == best[r.model] else ""
        base = (
            None
            if r.path.endswith("unbatched") or "KServe" in r.path
            else unbatched.get((r.model, r.concurrency))
        )
        peer = (
            triton.get((r.model, r.concurrency)) if r.path.startswith("gateway, KServe") else None
        )
        served = r.concurrency is not None
        vs_raw = r.per_s / (r.raw_ref or best[r.model])
        cells = [
            f"{r.model:<13}{r.path + mark:<{width}}",
            f"{_f(r.concurrency, 'd'):>5}{_f(r.requests if served else None, 'd'):>6}",
            f"{r.per_s:>9.1f}{_f(r.p50_ms, '.0f'):>9}{_f(r.p99_ms, '.0f'):>9}",
            f"{_f(r.budget_ms, 'd'):>8}{_f(r.mean_batch, '.1f'):>7}",
            f"{_f(r.shed if served else None, 'd'):>5}",
            f"{_f(r.errors if served else None, 'd'):>5}{vs_raw:>8.2f}",
            f"{_f(r.per_s / base if base else None, '.2f'):>10}",
            f"{_f(r.per_s / peer if peer else None, '.2f'):>11}",
        ]
        lines.append("".join(cells))
    return "\n".join(lines)


def _f(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# --- main --------------------------------------------------------------------------------------


def workloads(
    home: Path, quick: bool, device: str, graph: str
) -> tuple[Workload, Workload, float, Path]:
    """The two workloads over freshly created bench models, the preprocessing ms per image, and
    where the ResNet-50 is stored."""
    from bench.models import RESNET50, WHISPER_TINY, create_resnet50, create_whisper_tiny

    print("creating models ...", flush=True)
    resnet, whisper = create_resnet50(), create_whisper_tiny()
    forward, prep_ms = raw_vision(resnet.path, dict(resnet.metadata), device, graph)
    vision = Workload(
        "resnet-50", "vision", "img", (1, 8, 16, 32),
        {1: 24, 8: 96, 32: 192}, 16, send_image(RESNET50), forward,
    )  # fmt: skip
    speech = Workload(
        "whisper-tiny", "speech", "clip", (1, 4, 8),
        {1: 6, 8: 24, 32: 48}, 12, send_audio(WHISPER_TINY), raw_speech(whisper.path, device),
    )  # fmt: skip
    if quick:
        vision = replace(vision, requests={1: 4, 8: 16, 32: 32})
        speech = replace(speech, requests={1: 2, 8: 8, 32: 32})
    return vision, speech, prep_ms, Path(resnet.path)


def main() -> None:
    from settings import VisionGraph, VisionSettings

    parser = argparse.ArgumentParser(
        prog="python -m bench.vision", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="a few requests per level (smoke run)")
    parser.add_argument(
        "--triton", action=argparse.BooleanOptionalAction, default=True,
        help="compare with Triton serving the same ResNet-50 (default; makes .venv-triton-bench)",
    )  # fmt: skip
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto",
        help="where every forward runs: the raw one, the runners', Triton's (default: CUDA if "
             "torch sees it, as the runners choose)",
    )  # fmt: skip
    parser.add_argument(
        "--graph", choices=get_args(VisionGraph), default=VisionSettings().graph,
        help="the vision runner's graph (its vision.graph) and the raw forward's (default: the "
             "runner's default)",
    )  # fmt: skip
    parser.add_argument(
        "--triton-graph", choices=("trace", "optimized"), default="trace",
        help="what Triton loads: torch.jit.trace of the model, as a Triton user ships it "
             "(default), or the runner's optimized graph (the same network code as --graph "
             "optimized runs)",
    )  # fmt: skip
    args = parser.parse_args()
    started = time.perf_counter()
    home = Path(tempfile.mkdtemp(prefix="bench-bentoml-"))
    os.environ["BENTOML_HOME"] = str(home)  # before bentoml is imported: a private model store
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from runners.device import select_device

        device = select_device(args.device).type
        print(f"device: {device}", flush=True)
        print(f"vision graph: runner {args.graph}, Triton {args.triton_graph}", flush=True)
        rows = run(
            home, quick=args.quick, triton=args.triton, device=device,
            graph=args.graph, triton_graph=args.triton_graph,
        )  # fmt: skip
        print(table(rows))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; budget: the runner's max_latency_ms")


def run(
    home: Path, *, quick: bool, triton: bool, device: str, graph: str, triton_graph: str
) -> list[Row]:
    from bench.models import RESNET50
    from contract.names import model_name
    from settings import SpeechSettings, VisionSettings

    if triton:
        print("scripts/triton-env --bench ...", flush=True)
        ensure_triton_env(device)
    vision, speech, prep_ms, resnet_path = workloads(home, quick, device, graph)
    print("raw forward ...", flush=True)
    sweep = {w.name: raw_rows(w, min_seconds=2.0 if quick else 5.0) for w in (vision, speech)}
    best = {
        name: int(max(rows, key=lambda r: r.per_s).mean_batch or 1) for name, rows in sweep.items()
    }
    traced: Path | None = None
    if triton:
        traced, scripted = trace_resnet(resnet_path, home / "resnet50.pt", device, triton_graph)
        rate = raw_rate(scripted, best[vision.name], min_seconds=2.0 if quick else 5.0)
        path = f"raw TorchScript ({triton_graph}), batch {best[vision.name]}"
        sweep[vision.name].append(Row(vision.name, path, vision.unit, rate))
        print(f"  {path} (what Triton runs): {rate:.1f} img/s", flush=True)
    budgets = {"vision": VisionSettings().max_latency_ms, "speech": SpeechSettings().max_latency_ms}
    served_by_model: dict[str, list[Row]] = {vision.name: [], speech.name: []}
    for batching, mode in ((True, "batched"), (False, "unbatched")):
        print(f"serving, {mode} ...", flush=True)
        max_batch = {w.runner: best[w.name] for w in (vision, speech)}
        with served(
            home, batching=batching, max_batch=max_batch, device=device, graph=graph
        ) as url:
            for w in (vision, speech):
                probe = functools.partial(raw_rate, w.forward, best[w.name], min_seconds=1.5)
                budget = budgets[w.runner] if batching else None
                served_by_model[w.name] += served_rows(w, url, mode, budget_ms=budget, probe=probe)
            if batching and traced is not None:
                print("Triton, same ResNet-50, KServe V2 ...", flush=True)
                probes = {
                    name: functools.partial(raw_rate, f, best[vision.name], min_seconds=1.5)
                    for name, f in (("gateway", vision.forward), ("triton", scripted))
                }
                with triton_served(traced, best[vision.name], device, triton_graph) as triton_url:
                    served_by_model[vision.name] += kserve_rows(
                        vision, {"gateway": url, "triton": triton_url}, model_name(RESNET50),
                        budget_ms=budgets["vision"], probes=probes,
                    )  # fmt: skip
    prep = f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG: {prep_ms:.1f} ms"
    print(f"\ngateway preprocessing (decode, resize, crop, normalize) of one {prep}")
    print(f"served max_batch_size = the best raw batch (at least 2): {best}\n")
    return [row for name in sweep for row in (*sweep[name], *served_by_model[name])]


if __name__ == "__main__":
    main()
