"""The routing stack: real remote backends and one bundle configured to route to them.

Started once per session, all four in parallel (the bundle does not wait for remote backends to
be ready: only its own runners gate /readyz):

- `triton`: a Triton server (tests/servers/triton_models.py) that stays up, reached over gRPC and
  HTTP as separate backends;
- `flaky`: a second Triton server that fault tests stop and start again;
- `vllm`: a vLLM OpenAI server serving the demo-llm weights as `remote-llm`;
- `mlserver`: a real MLServer (tests/servers/mlserver.py), a second KServe V2 server behind the
  Triton adapter, over HTTP and gRPC;
- `kserve`: KServe's own model server (tests/servers/kserve_model.py), whose V1 protocol is TF
  Serving's `:predict` format, behind the tfserving adapter;
- `torchserve`: a real TorchServe (tests/servers/torchserve.py) serving the demo ResNet as
  TorchScript and a bytes model, behind the torchserve adapter;
- `bundle`: `bentoml serve` with `routing_config()` as its BUNDLE_CONFIG, and a BENTOML_HOME of
  its own so that its /metrics are not wiped by other bundles on the machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import tritonclient.http as httpclient
import yaml

from tests.servers.bentoml_home import isolated_home
from tests.servers.bundle import ROOT, bundle_process, service_worker
from tests.servers.kserve_model_server import kserve_model_process
from tests.servers.mlserver import MLServerProcess, mlserver_process
from tests.servers.process import ServerProcess, free_port, start_together
from tests.servers.torchserve import TorchServeProcess
from tests.servers.triton import TritonProcess
from tests.servers.vllm import vllm_process

# Both engines serve LoRA adapters (vLLM's CPU build then runs without compiled graphs): the
# bundle's with demo-llm-sql from the start, both loadable at run time (test_lora.py).
LORA = {"max_loras": 4, "max_rank": 16, "adapters": ["demo-llm-sql"], "runtime_updates": True}
SLEEPY_SECONDS = 3.0  # how long Triton's `sleepy` takes; the slow backend times out at 1 s


@dataclass
class RoutingStack:
    triton: TritonProcess
    flaky: TritonProcess
    vllm: ServerProcess
    bundle: ServerProcess
    config: dict[str, Any]
    mlserver: MLServerProcess
    kserve: ServerProcess
    torchserve: TorchServeProcess

    @property
    def url(self) -> str:
        return self.bundle.url


def routing_config(
    triton: TritonProcess,
    flaky: TritonProcess,
    vllm_url: str,
    *,
    mlserver: MLServerProcess | None = None,
    kserve_url: str | None = None,
    torchserve: TorchServeProcess | None = None,
) -> dict[str, Any]:
    """bundle.yaml plus remote backends and models on the given servers."""
    config = yaml.safe_load((ROOT / "bundle.yaml").read_text())
    config["llm"]["port"] = free_port()  # other bundles may run on this machine
    config["llm"]["lora"] = LORA  # the demo adapter on the bundle's engine (test_lora.py)
    # On 2 cores an image can wait behind the LLM streams and Whisper for over vision's 5 s
    # budget and be shed (a 503 by design, seen in the drain test); no test here checks shedding.
    config["vision"]["max_latency_ms"] = 30_000
    config.setdefault("gateway", {})["grpc_port"] = free_port()  # KServe V2 over gRPC
    stable = {"kind": "triton", "timeout_s": 10}
    fast_breaker = {"failure_threshold": 3, "window_s": 30, "recovery_s": 3}
    engines = {"kind": "openai", "urls": [engine_url(config), vllm_url], "timeout_s": 120,
               "retries": 2, "breaker": fast_breaker}  # fmt: skip
    config["routing"] = {
        "backends": {
            "triton-grpc": {**stable, "url": triton.grpc_url, "protocol": "grpc"},
            "triton-http": {**stable, "url": triton.http_url, "protocol": "http"},
            "triton-fail": {**stable, "url": triton.http_url, "protocol": "http",
                            "breaker": fast_breaker},
            "triton-slow": {"kind": "triton", "url": triton.grpc_url, "protocol": "grpc",
                            "timeout_s": 1.0, "breaker": {**fast_breaker, "failure_threshold": 2}},
            "flaky": {"kind": "triton", "url": flaky.grpc_url, "protocol": "grpc",
                      "timeout_s": 5, "retries": 1, "breaker": fast_breaker},
            "flaky-http": {"kind": "triton", "url": flaky.http_url, "protocol": "http",
                           "timeout_s": 5, "breaker": fast_breaker},
            "remote-vllm": {"kind": "openai", "url": vllm_url, "timeout_s": 120,
                            "breaker": fast_breaker},
            "dead-vllm": {"kind": "openai", "url": f"http://127.0.0.1:{free_port()}",
                          "timeout_s": 5, "breaker": {**fast_breaker, "recovery_s": 600}},
            # The two-engine pool: the bundle's own engine and the remote one (both serve the
            # demo-llm weights as demo-llm), for the replica-routing tests (test_llm_pool.py).
            "engines": {**engines, "balance": "prefix"},
            "engines-ll": {**engines, "balance": "least_load"},
        },
        "models": {
            "scale": {"backend": "triton-grpc", "versions": ["1"]},
            "scale-http": {"backend": "triton-http", "upstream": "scale", "versions": ["1"]},
            "classify": {"backend": "triton-grpc", "aliases": ["classify-grpc"]},
            "classify-http": {"backend": "triton-http", "upstream": "classify"},
            "fail": {"backend": "triton-fail"},
            "slow": {"backend": "triton-slow", "upstream": "sleepy"},
            "flaky-scale": {"backend": "flaky", "upstream": "scale"},
            "flaky-scale-http": {"backend": "flaky-http", "upstream": "scale"},
            "flaky-scale-fb": {"backend": "flaky", "upstream": "scale", "fallback": ["scale-http"]},
            "remote-llm": {"backend": "remote-vllm", "fallback": ["demo-llm"]},
            "down-llm": {"backend": "dead-vllm", "fallback": ["demo-llm"]},
            "ab-llm": {"variants": [{"model": "remote-llm", "weight": 1},
                                    {"model": "demo-llm", "weight": 1}]},
            "pool-llm": {"backend": "engines", "upstream": "demo-llm"},
            "pool-llm-ll": {"backend": "engines-ll", "upstream": "demo-llm"},
        },
    }  # fmt: skip
    # A chain of this configuration's own beside bundle.yaml's two (tests/integration/
    # test_chains.py): an ensemble, its first two steps at once, answered by a model with a
    # fallback.
    config.setdefault("chains", {})["look-and-listen"] = {"steps": [
        {"model": "demo-whisper", "task": "transcribe"},
        {"model": "demo-resnet", "task": "classify", "top_k": 2},
        {"model": "remote-llm", "task": "chat", "input": "Heard: {text}. Seen: {labels}."},
    ]}  # fmt: skip
    if mlserver is not None:
        add_mlserver(config["routing"], mlserver, breaker=fast_breaker)
    if kserve_url is not None:
        add_tfserving(config["routing"], kserve_url, breaker=fast_breaker)
    if torchserve is not None:
        add_torchserve(config["routing"], torchserve, breaker=fast_breaker)
    return config


def add_mlserver(routing: dict[str, Any], mlserver: MLServerProcess, *, breaker: Any) -> None:
    """MLServer behind the Triton adapter (kind: triton), over HTTP and over gRPC."""
    for protocol, url in (("http", mlserver.http_url), ("grpc", mlserver.grpc_url)):
        routing["backends"][f"mlserver-{protocol}"] = {
            "kind": "triton", "url": url, "protocol": protocol, "timeout_s": 10,
            "retries": 0, "breaker": breaker,
        }  # fmt: skip
        routing["models"][f"ml-regress-{protocol}"] = {
            "backend": f"mlserver-{protocol}", "upstream": "regress", "versions": ["1"],
        }  # fmt: skip
        routing["models"][f"ml-classes-{protocol}"] = {
            "backend": f"mlserver-{protocol}", "upstream": "classes",
        }  # fmt: skip


def add_tfserving(routing: dict[str, Any], url: str, *, breaker: Any) -> None:
    """KServe's model server behind the tfserving adapter, in the row and the columnar format;
    and a tfserving backend where nothing listens."""
    backends, models = routing["backends"], routing["models"]
    backends["tfs"] = {"kind": "tfserving", "url": url, "timeout_s": 10}  # row: the default
    backends["tfs-columnar"] = {"kind": "tfserving", "url": url, "format": "columnar"}
    backends["tfs-dead"] = {"kind": "tfserving", "url": f"http://127.0.0.1:{free_port()}",
                            "timeout_s": 5, "breaker": breaker}  # fmt: skip
    for model in ("linear", "tagged"):
        models[f"tfs-{model}"] = {"backend": "tfs", "upstream": model}
        models[f"tfs-{model}-columnar"] = {"backend": "tfs-columnar", "upstream": model}
    models["tfs-dead-linear"] = {"backend": "tfs-dead", "upstream": "linear"}


def add_torchserve(routing: dict[str, Any], server: TorchServeProcess, *, breaker: Any) -> None:
    """TorchServe's two models, each saying its kind; the image model again with the bundled
    ResNet as its fallback (test_routing_torchserve.py stops the server)."""
    routing["backends"]["torchserve"] = {
        "kind": "torchserve", "url": server.inference_url,
        "management_port": server.management_port, "timeout_s": 30, "breaker": breaker,
    }  # fmt: skip
    routing["models"].update({
        "ts-resnet": {"backend": "torchserve", "upstream": "resnet", "kind": "image"},
        "ts-resnet-fb": {"backend": "torchserve", "upstream": "resnet", "kind": "image",
                         "fallback": ["demo-resnet"]},
        "ts-upper": {"backend": "torchserve", "upstream": "upper", "kind": "tensor",
                     "versions": ["1.0"]},
    })  # fmt: skip


def engine_url(config: dict[str, Any]) -> str:
    """The bundled vLLM's own port (what the gateway calls with `llm.engine_direct`)."""
    return f"http://127.0.0.1:{config['llm']['port']}"


@pytest.fixture(scope="session")
def bundle_url(request: pytest.FixtureRequest) -> str:
    """Base URL of the bundle every integration test talks to: the routing stack's, so one
    session starts one bundle. Set BUNDLE_URL to test a bundle that is already running instead
    (tests that need the stack's remote backends then still start them).
    """
    if url := os.environ.get("BUNDLE_URL"):
        return url.rstrip("/")
    stack: RoutingStack = request.getfixturevalue("routing_stack")
    return stack.url


@pytest.fixture
def gateway(routing_stack: RoutingStack) -> Iterator[httpclient.InferenceServerClient]:
    """tritonclient over HTTP at the session bundle's /v2, as a Triton user would point it (the
    KServe routing tests'; a module that calls its own client `gateway` defines its own)."""
    client = httpclient.InferenceServerClient(
        routing_stack.url.removeprefix("http://"), network_timeout=60
    )
    yield client
    client.close()


@pytest.fixture
def gateway_worker(request: pytest.FixtureRequest) -> psutil.Process:
    """The gateway's worker process in the session's bundle (gateway.workers: 1), whose memory a
    test may watch (tests/servers/memory.py); only in a bundle this session started."""
    if os.environ.get("BUNDLE_URL"):
        pytest.skip("watches the gateway worker: only in the bundle this session started")
    stack: RoutingStack = request.getfixturevalue("routing_stack")
    return service_worker(stack.bundle, "gateway")


@pytest.fixture(scope="session")
def routing_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RoutingStack]:
    def triton() -> TritonProcess:
        return TritonProcess(
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            sleepy_seconds=SLEEPY_SECONDS,
        )

    vllm = vllm_process(served_name=("remote-llm", "demo-llm"), lora=True)
    stable, flaky = triton(), triton()
    directory = Path(tmp_path_factory.mktemp("routing"))
    mlserver, kserve = mlserver_process(directory / "mlserver"), kserve_model_process()
    torchserve = TorchServeProcess()
    config = routing_config(
        stable, flaky, vllm.url, mlserver=mlserver, kserve_url=kserve.url, torchserve=torchserve
    )
    path = directory / "bundle.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"BUNDLE_CONFIG": str(path), "BENTOML_HOME": str(isolated_home(directory))}
    bundle = bundle_process(env=env)
    servers = (bundle, stable, flaky, vllm, mlserver, kserve, torchserve)
    try:
        start_together(*(s.start for s in servers), aborts=[s.abort for s in servers])
        yield RoutingStack(
            stable, flaky, vllm, bundle, config, mlserver=mlserver, kserve=kserve,
            torchserve=torchserve,
        )  # fmt: skip
    finally:
        torchserve.close()
        kserve.stop()
        mlserver.stop()
        bundle.stop()
        vllm.stop()
        flaky.close()
        stable.close()
