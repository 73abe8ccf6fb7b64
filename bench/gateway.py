"""The gateway's own cost against a peer: streaming through it, through LiteLLM's proxy, and direct.

    .venv/bin/python -m bench.gateway                    # 3 rounds at c = 1, 16, 64, 256
    .venv/bin/python -m bench.gateway --concurrency 1 16 --rounds 1 --requests 20   # a smoke run
    .venv/bin/python -m bench.gateway --out bench/results/gateway-$(date +%Y%m%d-%H%M%S)

It starts one server per path and measures these paths to the same engine:

    direct    the deterministic upstream (tests/servers/upstream.py): 5 ms prefill, 5 ms per token,
              64 tokens, SSE chunks in vLLM's format with usage; it costs far less than what it
              measures (its own CPU per chunk is in the table)
    gateway   this bundle's gateway, `bentoml serve service:RemoteGateway`, routing `fixed-llm`
              to the upstream as an `openai` backend (access log off, an isolated BENTOML_HOME,
              admission limits above the highest concurrency so it never queues)
    litellm   LiteLLM's proxy (`litellm --config ... --port P`, from .venv-litellm, made by
              scripts/litellm-env from requirements/litellm.lock) routing `fixed-llm` to the
              same upstream as an OpenAI-compatible provider; no master key, no database, no
              callbacks, telemetry off, the local model cost map
    llm-hop   the LLM service's own hop alone (bench/llm_hop.py): BentoML's reverse proxy for a
              service with a custom command, configured as runners/llm.py configures it, in front
              of the upstream; a bundled stream crosses it after the gateway
    asgi-relay the floor of an ASGI relay (bench/asgi_relay.py): a bare ASGI app under uvicorn
              (uvloop, httptools, as BentoML serves) relaying through one aiohttp session, the
              gateway's read; no Starlette, BentoML, routing or pipeline
    tcp-relay the floor (bench/tcp_relay.py): a uvloop byte pipe, one socket write per socket
              read, no HTTP; no relay written in Python can cost less per chunk

The gateway and LiteLLM run one worker process (`--proxy-workers`); llm-hop one, as the LLM
service does. The same client measures every path, in
interleaved rounds (each round rotates the order of the paths), at each concurrency level: one
asyncio task per load worker, each with its own `httpx.AsyncClient` holding one connection (a
shared pool was seen to hold requests back), each sending streaming chat completions (64 tokens,
`stream_options.include_usage`) one after another, for `--requests` each or `--duration`
seconds, whichever ends first; the workers' starts are spread over one stream's length, so that
requests do not arrive in bursts of `concurrency` at once (`--no-stagger`: they do). Per
request: time to first token, stamped on the first non-empty raw body chunk (`aiter_raw`, no
line splitting in the way); chunks, the SSE `data: ` events other than `[DONE]`. Per measured
window: chunks/s at the client, and the CPU time (user + system, from /proc through psutil) of
each proxy's whole process tree, of the upstream and of this client, divided by the chunks
relayed. Then non-streaming completions at c=1, one request per path in turn, for the latency
each proxy adds.

Output: a markdown table for streaming and one for non-streaming on stdout, and in `--out`
(default /tmp/bench-results/gateway-<timestamp>) `report.md` (the tables and the setup),
`results.json` (every window), the two proxies' configs, and PNG plots (TTFT p50/p99 against
concurrency, chunks/s against concurrency, one line per path; matplotlib is in the dev lock).

The same command runs unchanged on a GPU machine: every process it starts is a CPU process (the
upstream stands in for the engine, and RemoteGateway loads no runner), so it measures the proxies'
own cost wherever it runs; CUDA_VISIBLE_DEVICES is emptied for the proxies anyway. Run it on an
otherwise idle machine: the client, the upstream and the proxy share its cores, and on a machine
with few of them the client itself is part of what limits chunks/s at high concurrency (its CPU
per chunk is in the table to show how much).

`--profile` samples the gateway with py-spy (`.venv/bin/py-spy` or one on PATH; skipped with a
message when there is none) into `gateway-profile.speedscope.json`; the sampler perturbs what is
measured, so profile in a separate run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import yaml

from lifecycle import tune_gc
from tests.servers.bentoml_home import isolated_home
from tests.servers.process import ServerProcess, free_port, http_ok, start_together
from tests.servers.upstream import upstream_process

ROOT = Path(__file__).resolve().parents[1]
LITELLM_VENV = ROOT / ".venv-litellm"
MODEL = "fixed-llm"
PATHS = ("direct", "gateway", "litellm", "llm-hop", "asgi-relay", "tcp-relay")
PROXIES = ("gateway", "litellm", "llm-hop", "asgi-relay", "tcp-relay")
PREFILL_MS, TOKEN_MS, TOKENS = 5.0, 5.0, 64
READ_TIMEOUT_S = 60.0
TIMEOUT = httpx.Timeout(READ_TIMEOUT_S, connect=10.0)
T = TypeVar("T")


def chat_body(max_tokens: int, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a story about a harbour"}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- the servers ---------------------------------------------------------------------------


def gateway_process(
    upstream_url: str, directory: Path, *, workers: int, max_c: int
) -> ServerProcess:
    config = {
        "routing": {
            "backends": {"fixed": {"kind": "openai", "url": upstream_url}},
            "models": {MODEL: {"backend": "fixed"}},
        },
        # Never queue: what is measured is the relay, not the admission limits (default 64).
        "admission": {"fixed": {"max_inflight": max(1024, 2 * max_c), "max_queue": 1024}},
        "log": {"access_log": False},
        "gateway": {"workers": workers, "grpc_port": None},
    }
    path = directory / "gateway-routes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return bentoml_serve(
        "bench-gateway", "service:RemoteGateway", directory, BUNDLE_CONFIG=str(path)
    )


def tcp_relay_process(upstream_url: str) -> ServerProcess:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    upstream = upstream_url.removeprefix("http://")
    command = [sys.executable, "-m", "bench.tcp_relay", "--port", str(port), "--upstream", upstream]
    return ServerProcess(
        "bench-tcp-relay", command, ready=http_ok(f"{url}/health"), url=url, cwd=ROOT
    )


def asgi_relay_process(upstream_url: str) -> ServerProcess:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "bench.asgi_relay", "--port", str(port)]
    return ServerProcess(
        "bench-asgi-relay",
        [*command, "--upstream", upstream_url],
        ready=http_ok(f"{url}/health"),
        url=url,
        cwd=ROOT,
    )


def llm_hop_process(upstream_url: str, directory: Path) -> ServerProcess:
    """The LLM service's BentoML proxy hop alone, before the upstream (bench/llm_hop.py)."""
    port = upstream_url.rsplit(":", 1)[1]
    return bentoml_serve(
        "bench-llm-hop", "bench.llm_hop:LLMHop", directory / "llm-hop", LLM_HOP_UPSTREAM_PORT=port
    )


def bentoml_serve(name: str, target: str, directory: Path, **env: str) -> ServerProcess:
    """`bentoml serve TARGET` on a free port with a BENTOML_HOME of its own, on CPU."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "bentoml", "serve", target,
               "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip
    return ServerProcess(
        name,
        command,
        ready=http_ok(f"{url}/readyz"),
        url=url,
        fatal_log_lines=["Application startup failed"],
        env={
            **env,
            "BENTOML_HOME": str(isolated_home(directory)),
            "CUDA_VISIBLE_DEVICES": "",
        },
        cwd=ROOT,
        timeout_s=300,
    )


def litellm_config(upstream_url: str) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",  # the OpenAI-compatible provider
                    "api_base": f"{upstream_url}/v1",
                    "api_key": "unused",
                },
            }
        ],
        "litellm_settings": {
            "telemetry": False,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
            "drop_params": True,
            "turn_off_message_logging": True,
            "request_timeout": 600,
            "num_retries": 0,
        },
        "general_settings": {
            # No master key, as the gateway runs with no keys: both authenticate nothing. LiteLLM
            # refuses to start so unless told; it listens on loopback only.
            "dangerously_permit_weak_or_unset_master_key": True,
            "disable_spend_logs": True,
            "disable_error_logs": True,
            "disable_spend_updates": True,
            "disable_reset_budget": True,
            "disable_prisma_schema_update": True,
            "background_health_checks": False,
            "store_model_in_db": False,
            "allow_requests_on_db_unavailable": True,
        },
    }


def litellm_version() -> str:
    python = LITELLM_VENV / "bin" / "python"
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def litellm_process(upstream_url: str, directory: Path, *, workers: int) -> ServerProcess:
    path = directory / "litellm.yaml"
    path.write_text(yaml.safe_dump(litellm_config(upstream_url), sort_keys=False))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(path), "--host",
               "127.0.0.1", "--port", str(port), "--num_workers", str(workers)]  # fmt: skip
    server = ServerProcess(
        "bench-litellm",
        command,
        ready=http_ok(f"{url}/health/liveliness"),
        url=url,
        env={
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY_DISABLED": "true",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map from GitHub
            "DISABLE_ADMIN_UI": "True",
            "CUDA_VISIBLE_DEVICES": "",
        },
        cwd=directory,
        timeout_s=300,
    )
    for name in ("DATABASE_URL", "LITELLM_MASTER_KEY", "LITELLM_CONFIG_BUCKET_NAME", "REDIS_HOST"):
        server.env.pop(name, None)
    return server


def ensure_litellm_env() -> None:
    """scripts/litellm-env: idempotent, a second when nothing changed."""
    result = subprocess.run([str(ROOT / "scripts" / "litellm-env")], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"scripts/litellm-env failed:\n{result.stdout}{result.stderr}")


# --- CPU of a process tree -------------------------------------------------------------------


def tree_cpu(pid: int) -> dict[tuple[int, float], float]:
    """user + system seconds of a process and all its descendants, by (pid, start time)."""
    out: dict[tuple[int, float], float] = {}
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out[(proc.pid, proc.create_time())] = times.user + times.system
    return out


def cpu_delta(
    before: dict[tuple[int, float], float], after: dict[tuple[int, float], float]
) -> float:
    """CPU seconds spent between two snapshots (a process started in between counts whole)."""
    return sum(t - before.get(key, 0.0) for key, t in after.items())


# --- the load --------------------------------------------------------------------------------


@dataclass
class Window:
    """One measured window: one path at one concurrency level in one round."""

    path: str
    concurrency: int
    round: int
    ttfts: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    chunks: int = 0
    requests: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu_s: dict[str, float] = field(default_factory=dict)  # proxy, upstream, client

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(message[:300])


async def stream_once(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[float, int, str]:
    """One streaming request: (TTFT s, chunks, error or '')."""
    started = time.perf_counter()
    ttft = 0.0
    chunks = 0
    done = False
    pending = b""
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            return 0.0, 0, f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
        async for raw in r.aiter_raw():
            if not raw:
                continue
            if not ttft:
                ttft = time.perf_counter() - started
            lines = (pending + raw).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if line.startswith(b"data: "):
                    if line.startswith(b"data: [DONE]"):
                        done = True
                    elif line.startswith(b'data: {"error"'):
                        return ttft, chunks, f"error event: {line[:200]!r}"
                    else:
                        chunks += 1
    if not done:
        return ttft, chunks, f"stream ended without [DONE] after {chunks} chunks"
    return ttft, chunks, ""


SSL = ssl.create_default_context()  # one for every client (all plain HTTP): cheap to make 256


def new_client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(
        base_url=url, limits=limits, timeout=TIMEOUT, trust_env=False, verify=SSL
    )


async def measure_stream(
    window: Window,
    url: str,
    *,
    requests: int,
    duration_s: float,
    tokens: int,
    stagger_s: float,
    trees: dict[str, int],
) -> Window:
    """`window.concurrency` workers, each on its own connection, `requests` each or until
    `duration_s` has passed; CPU snapshots around the measured part only. Worker i starts
    `i * stagger_s / concurrency` after the first, so that requests arrive spread over a
    stream's length rather than all at once (every stream takes about as long, so workers that
    started together would stay in step, and each TTFT would be a burst's queueing)."""
    body = chat_body(tokens, stream=True)
    warm = chat_body(2, stream=True)
    clients = [new_client(url) for _ in range(window.concurrency)]
    go = asyncio.Event()
    deadline = 0.0

    async def worker(i: int, client: httpx.AsyncClient, ready: asyncio.Future[None]) -> None:
        try:
            await stream_once(client, warm)  # opens this worker's connection
        except Exception as exc:
            window.error(f"warm-up: {type(exc).__name__}: {exc}")
        finally:
            ready.set_result(None)
        await go.wait()
        await asyncio.sleep(i * stagger_s / window.concurrency)
        for _ in range(requests):
            if time.perf_counter() >= deadline:
                break
            started = time.perf_counter()
            try:
                ttft, chunks, error = await stream_once(client, body)
            except Exception as exc:  # httpx's errors, and anything else: counted, not fatal
                ttft, chunks, error = 0.0, 0, f"{type(exc).__name__}: {exc}"
            window.requests += 1
            window.chunks += chunks
            if error:
                window.error(error)
                continue
            window.ttfts.append(ttft)
            window.latencies.append(time.perf_counter() - started)

    loop = asyncio.get_running_loop()
    readies = [loop.create_future() for _ in clients]
    tasks = [
        asyncio.create_task(worker(i, c, f))
        for i, (c, f) in enumerate(zip(clients, readies, strict=True))
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*readies), timeout=120)
        before = {name: tree_cpu(pid) for name, pid in trees.items()}
        client_before = time.process_time()
        started = time.perf_counter()
        deadline = started + duration_s
        go.set()
        # Bounded: requests in flight at the deadline finish within the client's timeouts.
        _, stuck = await asyncio.wait(tasks, timeout=duration_s + 2 * READ_TIMEOUT_S + 30)
        window.seconds = time.perf_counter() - started
        window.cpu_s = {name: cpu_delta(before[name], tree_cpu(pid)) for name, pid in trees.items()}
        window.cpu_s["client"] = time.process_time() - client_before
        for task in stuck:
            task.cancel()
            window.error("worker still running past the window's bound; cancelled")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.aclose() for c in clients), return_exceptions=True)
    return window


async def measure_plain(
    urls: dict[str, str], *, requests: int, tokens: int, rounds: int
) -> dict[str, list[float]]:
    """Non-streaming at c=1: one request per path in turn, the order rotating each time."""
    body = chat_body(tokens, stream=False)
    names = list(urls)
    clients = {name: new_client(url) for name, url in urls.items()}
    samples: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, int] = dict.fromkeys(names, 0)
    try:
        for name in names:  # warm each connection
            for _ in range(3):
                await clients[name].post("/v1/chat/completions", json=body)
        for i in range(requests * rounds):
            for name in names[i % len(names) :] + names[: i % len(names)]:
                started = time.perf_counter()
                try:
                    r = await clients[name].post("/v1/chat/completions", json=body)
                    ok = r.status_code == 200 and bool(r.json().get("choices"))
                except (httpx.HTTPError, ValueError):
                    ok = False
                if ok:
                    samples[name].append(time.perf_counter() - started)
                else:
                    errors[name] += 1
    finally:
        await asyncio.gather(*(c.aclose() for c in clients.values()), return_exceptions=True)
    return {**samples, **{f"{name}:errors": [float(n)] for name, n in errors.items()}}


async def warm_up(urls: dict[str, str], tokens: int) -> None:
    """A few whole streams per path before anything is measured (lazy imports, first pools)."""
    for url in urls.values():
        async with new_client(url) as client:
            for _ in range(5):
                _, _, error = await stream_once(client, chat_body(tokens, stream=True))
                if error:
                    raise RuntimeError(f"{url}: the warm-up stream failed: {error}")


async def run(
    args: argparse.Namespace, urls: dict[str, str], trees: dict[str, dict[str, int]]
) -> tuple[list[Window], dict[str, list[float]]]:
    await warm_up(urls, args.tokens)
    windows: list[Window] = []
    names = list(urls)
    # One stream's length at the upstream; --no-stagger starts every worker at once.
    stagger_s = (PREFILL_MS + TOKEN_MS * (args.tokens - 1)) / 1000 if args.stagger else 0.0
    for rnd in range(args.rounds):
        for level, c in enumerate(args.concurrency):
            shift = (rnd + level) % len(names)
            for name in names[shift:] + names[:shift]:
                requests = args.requests or max(32, math.ceil(128 / c))
                window = await measure_stream(
                    Window(name, c, rnd), urls[name], requests=requests,
                    duration_s=args.duration, tokens=args.tokens, stagger_s=stagger_s,
                    trees=trees[name],
                )  # fmt: skip
                windows.append(window)
                print(
                    f"  round {rnd + 1}/{args.rounds}  c={c:<4} {name:<8} "
                    f"{window.requests:>5} req  {window.chunks / window.seconds:>9,.0f} chunks/s  "
                    f"TTFT p50 {percentile(window.ttfts, 0.5) * 1e3:7.2f} ms  "
                    f"errors {window.errors}",
                    flush=True,
                )
                await asyncio.sleep(args.pause)
    plain: dict[str, list[float]] = {}
    if args.plain_requests:
        print("  non-streaming, c=1 ...", flush=True)
        plain = await measure_plain(
            urls, requests=args.plain_requests, tokens=args.tokens, rounds=args.rounds
        )
    return windows, plain


# --- the report ------------------------------------------------------------------------------


@dataclass
class Row:
    path: str
    concurrency: int
    requests: int
    errors: int
    ttfts: list[float]
    chunks: int
    seconds: float
    cpu_s: dict[str, float]

    @property
    def chunks_s(self) -> float:
        return self.chunks / self.seconds if self.seconds else math.nan

    def us_per_chunk(self, who: str) -> float:
        if who not in self.cpu_s or not self.chunks:
            return math.nan
        return self.cpu_s[who] / self.chunks * 1e6

    def ttft_ms(self, q: float) -> float:
        return percentile(self.ttfts, q) * 1e3


def merge(windows: Iterable[Window]) -> dict[tuple[str, int], Row]:
    rows: dict[tuple[str, int], Row] = {}
    for w in windows:
        row = rows.setdefault(
            (w.path, w.concurrency), Row(w.path, w.concurrency, 0, 0, [], 0, 0.0, {})
        )
        row.requests += w.requests
        row.errors += w.errors
        row.ttfts += w.ttfts
        row.chunks += w.chunks
        row.seconds += w.seconds
        for who, s in w.cpu_s.items():
            row.cpu_s[who] = row.cpu_s.get(who, 0.0) + s
    return rows


def fmt(value: float, spec: str) -> str:
    return "-" if math.isnan(value) else format(value, spec)


def markdown(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in body:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return "\n".join(lines)


def streaming_table(
    rows: dict[tuple[str, int], Row], paths: Sequence[str], levels: Sequence[int]
) -> str:
    header = ["c", "path", "reqs", "errors", "TTFT p50 ms", "TTFT p99 ms", "added p50 ms",
              "added p99 ms", "chunks/s", "vs direct", "chunks/req", "proxy µs/chunk",
              "upstream µs/chunk", "client µs/chunk"]  # fmt: skip
    body = []
    for c in levels:
        direct = rows.get(("direct", c))
        for name in paths:
            row = rows.get((name, c))
            if row is None:
                continue
            added50 = added99 = ratio = math.nan
            if direct is not None and name != "direct":
                added50 = row.ttft_ms(0.5) - direct.ttft_ms(0.5)
                added99 = row.ttft_ms(0.99) - direct.ttft_ms(0.99)
                ratio = row.chunks_s / direct.chunks_s
            ok = row.requests - row.errors
            body.append([
                str(c), name, str(row.requests), str(row.errors),
                fmt(row.ttft_ms(0.5), ".2f"), fmt(row.ttft_ms(0.99), ".2f"),
                fmt(added50, "+.2f"), fmt(added99, "+.2f"),
                fmt(row.chunks_s, ",.0f"), fmt(ratio, ".3f"),
                fmt(row.chunks / ok if ok else math.nan, ".1f"),
                fmt(row.us_per_chunk("proxy"), ",.1f"), fmt(row.us_per_chunk("upstream"), ",.1f"),
                fmt(row.us_per_chunk("client"), ",.1f"),
            ])  # fmt: skip
    return markdown(header, body)


def plain_table(plain: dict[str, list[float]], paths: Sequence[str]) -> str:
    header = ["path", "n", "errors", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms"]
    base = plain.get("direct", [])
    b50, b99 = percentile(base, 0.5) * 1e3, percentile(base, 0.99) * 1e3
    body = []
    for name in paths:
        s = plain.get(name)
        if s is None:
            continue
        p50, p99 = percentile(s, 0.5) * 1e3, percentile(s, 0.99) * 1e3
        errors = int(plain.get(f"{name}:errors", [0.0])[0])
        added = name != "direct"
        body.append([
            name, str(len(s)), str(errors), fmt(p50, ".2f"), fmt(p99, ".2f"),
            fmt(p50 - b50, "+.2f") if added else "", fmt(p99 - b99, "+.2f") if added else "",
        ])  # fmt: skip
    return markdown(header, body)


def plot(
    rows: dict[tuple[str, int], Row], paths: Sequence[str], levels: Sequence[int], out: Path
) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib does not import in this venv (scripts/setup installs it): no plots")
        return []
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in paths:
        xs = [c for c in levels if (name, c) in rows]
        (line,) = ax.plot(
            xs, [rows[name, c].ttft_ms(0.5) for c in xs], marker="o", label=f"{name} p50"
        )
        ax.plot(xs, [rows[name, c].ttft_ms(0.99) for c in xs], marker="x", linestyle="--",
                color=line.get_color(), label=f"{name} p99")  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="TTFT (ms)",
           title="Time to first token against concurrency")  # fmt: skip
    ax.set_xticks(list(levels), [str(c) for c in levels])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", ncol=len(paths), loc="upper left")
    fig.tight_layout()
    written.append(out / "ttft.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in paths:
        xs = [c for c in levels if (name, c) in rows]
        ax.plot(xs, [rows[name, c].chunks_s for c in xs], marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="chunks/s at the client",
           title="Streamed chunks per second against concurrency")  # fmt: skip
    ax.set_xticks(list(levels), [str(c) for c in levels])
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small", loc="upper left")
    fig.tight_layout()
    written.append(out / "chunks.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)
    return written


# --- profiling -------------------------------------------------------------------------------


def start_profiler(pid: int, out: Path) -> subprocess.Popen[bytes] | None:
    found = ROOT / ".venv" / "bin" / "py-spy"
    py_spy = str(found) if found.exists() else shutil.which("py-spy")
    if py_spy is None:
        print("--profile: py-spy is not installed (.venv/bin/py-spy or on PATH); not profiling")
        return None
    target = out / "gateway-profile.speedscope.json"
    print(f"--profile: sampling the gateway (pid {pid} and its workers) into {target}")
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
         "--rate", "100", "--format", "speedscope", "--output", str(target)],
        stdout=(out / "py-spy.log").open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


# --- main ------------------------------------------------------------------------------------


def setup_text(
    args: argparse.Namespace,
    versions: dict[str, str],
    servers: dict[str, ServerProcess],
    load: tuple[float, float, float],
) -> str:
    lines = [
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, {cpu_model()}",
        f"- load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions.items())}",
        f"- upstream: prefill {PREFILL_MS:g} ms, {TOKEN_MS:g} ms per token, {args.tokens} tokens "
        "per request (+ a usage chunk)",
        f"- proxy workers: {args.proxy_workers} each; rounds: {args.rounds}; concurrency: "
        f"{' '.join(map(str, args.concurrency))}; per worker per window: "
        f"{args.requests or 'max(32, 128/c)'} requests or {args.duration:g} s; "
        f"staggered starts: {'on' if args.stagger else 'off'}",
        f"- command: .venv/bin/python -m bench.gateway {' '.join(sys.argv[1:])}",
    ]
    for name, server in servers.items():
        lines.append(f"- {name}: `{' '.join(server.command)}` (log {server.log_path})")
    return "\n".join(lines)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--requests", type=int, default=0,
        help="streams per load worker per window (default: max(32, 128 / concurrency))",
    )  # fmt: skip
    parser.add_argument(
        "--duration", type=float, default=30.0,
        help="seconds per window at most; workers send no new request after it (default 30)",
    )  # fmt: skip
    parser.add_argument("--tokens", type=int, default=TOKENS, help="tokens per completion (64)")
    parser.add_argument(
        "--plain-requests", type=int, default=50,
        help="non-streaming requests per path per round at c=1 (0: skip them)",
    )  # fmt: skip
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument("--proxy-workers", type=int, default=1, help="worker processes per proxy")
    parser.add_argument(
        "--stagger", action=argparse.BooleanOptionalAction, default=True,
        help="spread the workers' starts over one stream's length (default on)",
    )  # fmt: skip
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between windows")
    parser.add_argument("--out", type=Path, help="default /tmp/bench-results/gateway-<timestamp>")
    parser.add_argument("--profile", action="store_true", help="sample the gateway with py-spy")
    args = parser.parse_args()
    paths = [p for p in PATHS if p in args.paths or p == "direct"]  # direct is the baseline
    out = args.out or Path(tempfile.gettempdir()) / "bench-results" / time.strftime(
        "gateway-%Y%m%d-%H%M%S"
    )
    out.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    if load[0] > (os.cpu_count() or 1) / 4:
        print(f"note: load average {load[0]:.2f}; the numbers want an otherwise idle machine")

    versions = {
        "python": platform.python_version(),
        "bentoml": importlib.metadata.version("bentoml"),
        "aiohttp": importlib.metadata.version("aiohttp"),
        "httpx": importlib.metadata.version("httpx"),
    }
    if "litellm" in paths:
        ensure_litellm_env()
        versions["litellm"] = litellm_version()
    directory = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    upstream = upstream_process(prefill_ms=PREFILL_MS, token_ms=TOKEN_MS, tokens=args.tokens)
    servers: dict[str, ServerProcess] = {"upstream": upstream}
    max_c = max(args.concurrency)
    if "gateway" in paths:
        servers["gateway"] = gateway_process(
            upstream.url, directory, workers=args.proxy_workers, max_c=max_c
        )
    if "litellm" in paths:
        servers["litellm"] = litellm_process(upstream.url, directory, workers=args.proxy_workers)
    if "llm-hop" in paths:
        servers["llm-hop"] = llm_hop_process(upstream.url, directory)
    if "asgi-relay" in paths:
        servers["asgi-relay"] = asgi_relay_process(upstream.url)
    if "tcp-relay" in paths:
        servers["tcp-relay"] = tcp_relay_process(upstream.url)
    for name in ("gateway-routes.yaml", "litellm.yaml"):
        if (directory / name).exists():
            shutil.copy(directory / name, out / name)
    profiler = None
    try:
        print(f"starting {', '.join(servers)} ...", flush=True)
        starts = {}

        def timed_start(name: str, server: ServerProcess) -> None:
            began = time.perf_counter()
            server.start()
            starts[name] = time.perf_counter() - began

        start_together(
            *(lambda n=n, s=s: timed_start(n, s) for n, s in servers.items()),
            aborts=[s.abort for s in servers.values()],
        )
        print("ready after " + ", ".join(f"{n} {t:.1f} s" for n, t in starts.items()), flush=True)
        tune_gc()  # the client's own full collections would stall every path's streams alike
        if args.profile and "gateway" in servers:
            profiler = start_profiler(_pid(servers["gateway"]), out)
        urls = {name: servers["upstream" if name == "direct" else name].url for name in paths}
        upstream_pid = _pid(upstream)
        trees = {
            name: {"upstream": upstream_pid}
            | ({"proxy": _pid(servers[name])} if name in PROXIES else {})
            for name in paths
        }
        windows, plain = _run_loop(run(args, urls, trees))
    finally:
        stop_profiler(profiler)
        for server in reversed(servers.values()):
            server.stop()

    rows = merge(windows)
    stream_md = streaming_table(rows, paths, args.concurrency)
    plain_md = plain_table(plain, paths) if plain else ""
    title = (
        f"Streaming chat completions, {args.tokens} tokens (+ usage) per request; "
        "added = path - direct at the same concurrency"
    )
    print(f"\n{title}\n\n{stream_md}")
    if plain_md:
        print(f"\nNon-streaming chat completions at c=1, {args.tokens} tokens\n\n{plain_md}")
    errors = [(w.path, w.concurrency, e) for w in windows for e in w.error_samples]
    for path, c, message in errors[:10]:
        print(f"error sample ({path}, c={c}): {message}")
    report = [
        "# Gateway vs LiteLLM vs direct", "", setup_text(args, versions, servers, load), "",
        f"{title}", "", stream_md, "",
        "proxy µs/chunk: the proxy's whole process tree (user + system CPU) over the chunks it "
        "relayed; upstream and client: the same for the deterministic upstream and this client.",
    ]  # fmt: skip
    if plain_md:
        report += ["", f"Non-streaming chat completions at c=1, {args.tokens} tokens", "", plain_md]
    if errors:
        report += ["", "Error samples:", ""] + [f"- {p}, c={c}: {m}" for p, c, m in errors[:20]]
    written = plot(rows, paths, args.concurrency, out)
    report += [""] + [f"![{p.stem}]({p.name})" for p in written]
    (out / "report.md").write_text("\n".join(report) + "\n")
    (out / "results.json").write_text(
        json.dumps(
            {
                "versions": versions,
                "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                "windows": [w.__dict__ for w in windows],
                "non_streaming": plain,
            },
            indent=1,
        )
    )
    print(f"\nwrote {out}/report.md, results.json" + "".join(f", {p.name}" for p in written))


def _pid(server: ServerProcess) -> int:
    assert server.proc is not None
    return server.proc.pid


def _run_loop(main: Coroutine[Any, Any, T]) -> T:
    """On uvloop when it is there, as the servers run."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


if __name__ == "__main__":
    main()
