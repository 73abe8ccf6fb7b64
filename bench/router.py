"""Router overhead: latency added per request by the gateway, against calling the servers directly.

    .venv/bin/python -m bench.router                # starts Triton, vLLM and the gateway itself
    .venv/bin/python -m bench.router --requests 2000

Starts a real Triton server (tests/servers/triton_models.py), the gateway
(`service:RemoteGateway`: the bundle's app without its runners) routing to it and to a separate
vLLM OpenAI server on the demo-llm weights, which starts only once the Triton paths are measured
(an idle vLLM still takes CPU on a small machine). One client sends requests one at a time,
rotating between the direct and the routed paths so that every path sees the same machine state;
the table gives p50/p99 of each and the difference. Paths:

    http hop  GET /v2/health/live: Triton's own against the gateway's (no backend call), i.e. the
              cost of one more HTTP server in the way
    triton    KServe HTTP `scale` infer (binary tensors): Triton directly; the gateway with a
              gRPC backend; the gateway with an HTTP backend
    vllm      chat completion with max_tokens 1 (whole response), and streamed (first chunk)
    in process, no network: Router.predict over an adapter that answers at once, against the
              adapter; a whole KServe infer through the gateway's ASGI app over an instant Triton
              fake, against the app's /v2/health/live; the same infer with an API key whose
              rpm, tpm and max_parallel are counted in memory and in a real Redis on loopback,
              against the infer without keys: the request pipeline's own cost
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import tritonclient.http as httpclient
import yaml
from starlette.applications import Starlette

from gateway.adapters.base import InferRequest, InferResponse
from gateway.adapters.triton import TritonAdapter
from gateway.app import create_app, install
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from gateway.scope.keys import digest
from gateway.tensors import ModelMetadata, TensorSpec
from settings import Settings, parse_settings
from tests.fakes import FakeTriton
from tests.servers.bentoml_home import isolated_home
from tests.servers.process import ServerProcess, free_port, http_ok
from tests.servers.redis import RedisProcess
from tests.servers.triton import TritonProcess
from tests.servers.vllm import vllm_process

ROOT = Path(__file__).resolve().parents[1]
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def gateway_config(triton: TritonProcess, vllm_url: str) -> dict[str, Any]:
    return {
        "routing": {
            "backends": {
                "triton-grpc": {"kind": "triton", "url": triton.grpc_url, "protocol": "grpc"},
                "triton-http": {"kind": "triton", "url": triton.http_url, "protocol": "http"},
                "vllm": {"kind": "openai", "url": vllm_url},
            },
            "models": {
                "scale": {"backend": "triton-grpc"},
                "scale-http": {"backend": "triton-http", "upstream": "scale"},
                "remote-llm": {"backend": "vllm"},
            },
        }
    }


def start_gateway(config: dict[str, Any]) -> ServerProcess:
    directory = Path(tempfile.mkdtemp(prefix="bench-router-"))
    path = directory / "routes.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "bentoml", "serve", "service:RemoteGateway",
               "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip
    return ServerProcess(
        "router-gateway",
        command,
        ready=http_ok(f"{url}/readyz"),
        url=url,
        env={"BUNDLE_CONFIG": str(path), "BENTOML_HOME": str(isolated_home(directory))},
        cwd=ROOT,
        timeout_s=300,
    ).start()


def rotate(
    paths: dict[str, Callable[[], float]], requests: int, warmup: int
) -> dict[str, list[float]]:
    """Each path `requests` times, one request at a time, in a rotating order."""
    names = list(paths)
    for _ in range(warmup):
        for name in names:
            paths[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(requests):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            samples[name].append(paths[name]())
    return samples


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def triton_paths(triton: TritonProcess, gateway_url: str) -> dict[str, Callable[[], float]]:
    x = np.arange(16, dtype=np.float32).reshape(1, 16)
    wire = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    wire.set_data_from_numpy(x, binary_data=True)
    direct = httpclient.InferenceServerClient(triton.http_url)
    gateway = httpclient.InferenceServerClient(gateway_url.removeprefix("http://"))
    http = httpx.Client()
    return {
        "triton /v2/health/live": lambda: timed(lambda: direct.is_server_live()),
        "gateway /v2/health/live": lambda: timed(lambda: http.get(f"{gateway_url}/v2/health/live")),
        "triton direct": lambda: timed(lambda: direct.infer("scale", [wire])),
        "gateway -> triton (grpc)": lambda: timed(lambda: gateway.infer("scale", [wire])),
        "gateway -> triton (http)": lambda: timed(lambda: gateway.infer("scale-http", [wire])),
    }


def vllm_paths(vllm_url: str, gateway_url: str) -> dict[str, Callable[[], float]]:
    direct, gateway = httpx.Client(base_url=vllm_url), httpx.Client(base_url=gateway_url)

    def complete(client: httpx.Client) -> float:
        body = {**CHAT, "model": "remote-llm"}
        return timed(lambda: client.post("/v1/chat/completions", json=body).raise_for_status())

    def first_token(client: httpx.Client) -> float:
        body = {**CHAT, "model": "remote-llm", "stream": True}
        started = time.perf_counter()
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("data: {") and '"content":"' in line.replace(" ", ""):
                    ttft = time.perf_counter() - started
                    for _ in lines:  # read the rest, so the connection is reused
                        pass
                    return ttft
        raise RuntimeError("the stream had no content")

    return {
        "vllm direct": lambda: complete(direct),
        "gateway -> vllm": lambda: complete(gateway),
        "vllm direct (first chunk)": lambda: first_token(direct),
        "gateway -> vllm (first chunk)": lambda: first_token(gateway),
    }


class Instant:
    name = "instant"

    async def predict(self, request: InferRequest) -> InferResponse:
        return InferResponse(request.payload)

    def stream(self, request: InferRequest) -> Any:
        raise NotImplementedError

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        pass


async def in_process(requests: int, redis_url: str) -> dict[str, list[float]]:
    adapter = Instant()
    router = Router(Registry([Route("m", "llm", "instant", "m")]), {"instant": adapter})
    route = router.resolve("m", kinds=("llm",))
    request = InferRequest("chat", "m", {})
    app = kserve_app()
    memory, redis = kserve_app(keyed("memory://")), kserve_app(keyed(redis_url))
    auth = ((b"authorization", f"Bearer {BENCH_KEY}".encode()),)
    infer = json.dumps(
        {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    ).encode()
    paths: dict[str, Callable[[], Awaitable[Any]]] = {
        "adapter": lambda: adapter.predict(request),
        "router": lambda: router.predict(route, "chat", {}),
        "app /v2/health/live": lambda: asgi(app, "GET", "/v2/health/live", b""),
        "app infer": lambda: asgi(app, "POST", "/v2/models/scale/infer", infer),
        "app infer, key + limits (memory)": lambda: asgi(
            memory, "POST", "/v2/models/scale/infer", infer, auth
        ),
        "app infer, key + limits (redis)": lambda: asgi(
            redis, "POST", "/v2/models/scale/infer", infer, auth
        ),
    }
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(requests):
        for name, call in paths.items():
            started = time.perf_counter()
            await call()
            samples[name].append(time.perf_counter() - started)
    return samples


def kserve_app(settings: Settings | None = None) -> Starlette:
    """The gateway's app over an instant Triton fake, with the whole pipeline (`install`)."""
    meta = ModelMetadata(
        "scale", "python", (),
        (TensorSpec("INPUT0", "FP32", (-1, -1)),), (TensorSpec("OUTPUT0", "FP32", (-1, -1)),),
    )  # fmt: skip
    triton = FakeTriton({"scale": (meta, lambda x: {"OUTPUT0": x["INPUT0"] * 2 + 1})})
    app = create_app()
    router = Router(
        Registry([Route("scale", "tensor", "triton", "scale")]),
        {"triton": TritonAdapter("triton", triton)},
    )
    install(app, settings=settings or Settings(log={"access_log": False}), router=router)
    return app


BENCH_KEY = "sk-bench"


def keyed(storage: str) -> Settings:
    """One key with every limit set high enough never to refuse, on `storage`."""
    key = {"name": "bench", "sha256": digest(BENCH_KEY), "rpm": 10**9, "tpm": 10**12,
           "max_parallel": 10**6}  # fmt: skip
    return parse_settings(
        {"auth": {"keys": [key]}, "ratelimit": {"storage": storage}, "log": {"access_log": False}}
    )


async def asgi(
    app: Starlette,
    method: str,
    path: str,
    body: bytes,
    headers: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """One request straight into the ASGI app, as a server would pass it (no client, no socket)."""

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "server": ("127.0.0.1", 3000), "client": ("127.0.0.1", 1),
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *headers],
    }  # fmt: skip
    await app(scope, receive, send)


def rows(samples: dict[str, list[float]], baseline: str, routed: list[str]) -> list[list[str]]:
    base = samples[baseline]
    b50, b99 = percentile(base, 0.5), percentile(base, 0.99)
    out = [[baseline, str(len(base)), f"{b50 * 1e3:.3f}", f"{b99 * 1e3:.3f}", "", ""]]
    for name in routed:
        s = samples[name]
        p50, p99 = percentile(s, 0.5), percentile(s, 0.99)
        out.append([
            name, str(len(s)), f"{p50 * 1e3:.3f}", f"{p99 * 1e3:.3f}",
            f"{(p50 - b50) * 1e3:+.3f}", f"{(p99 - b99) * 1e3:+.3f}",
        ])  # fmt: skip
    return out


def print_table(table: list[list[str]]) -> None:
    header = ["path", "n", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms"]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(len(header))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.router")
    parser.add_argument("--requests", type=int, default=1000, help="per Triton path")
    parser.add_argument("--llm-requests", type=int, default=300, help="per vLLM path")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--in-process", action="store_true", help="only the in-process rows (router, pipeline)"
    )
    args = parser.parse_args()
    if args.in_process:
        with RedisProcess() as redis:
            local = asyncio.run(in_process(5000, redis.url))
        table = rows(local, "adapter", ["router"])
        table += rows(local, "app /v2/health/live", ["app infer"])
        table += rows(local, "app infer", [name for name in local if "key + limits" in name])
        print_table(table)
        return

    triton = TritonProcess(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    vllm = vllm_process(served_name="remote-llm")
    gateway: ServerProcess | None = None
    try:
        print("starting Triton and the gateway ...", flush=True)
        triton.start()
        gateway = start_gateway(gateway_config(triton, vllm.url))
        tri = rotate(triton_paths(triton, gateway.url), args.requests, args.warmup)
        print("starting vLLM ...", flush=True)
        vllm.start()
        llm = rotate(vllm_paths(vllm.url, gateway.url), args.llm_requests, args.warmup // 5)
    finally:
        if gateway is not None:
            gateway.stop()
        vllm.stop()
        triton.close()
    with RedisProcess() as redis:  # the shared rate-limit storage, on loopback
        local = asyncio.run(in_process(5000, redis.url))
    table = rows(tri, "triton /v2/health/live", ["gateway /v2/health/live"])
    table += rows(tri, "triton direct", ["gateway -> triton (grpc)", "gateway -> triton (http)"])
    table += rows(llm, "vllm direct", ["gateway -> vllm"])
    table += rows(llm, "vllm direct (first chunk)", ["gateway -> vllm (first chunk)"])
    table += rows(local, "adapter", ["router"])
    table += rows(local, "app /v2/health/live", ["app infer"])
    table += rows(local, "app infer", [name for name in local if "key + limits" in name])
    print()
    print_table(table)


if __name__ == "__main__":
    main()
