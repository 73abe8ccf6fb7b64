"""The Kubernetes topology for real, without Kubernetes: each BentoML service of the bundle as a
process of its own on a port of its own, started with exactly the command and environment its
Deployment in deploy/kubernetes gives (what the image's entrypoint runs for those args), then one
request per modality through the gateway.

Only what a machine is not a cluster changes: Service DNS names and port 3000 become loopback
ports, the headless Service the gateway resolves to find the llm pods (llm.engine_discover) is a
name that resolves to this machine's loopback, the ConfigMap's Redis becomes a real redis-server
started here, and the Secret's placeholder key is replaced by one this test knows.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.scope.keys import digest
from tests.media import audio_bytes, image_bytes, noise_image, tone
from tests.servers.bentoml_home import isolated_home
from tests.servers.bundle import ROOT, build_bento
from tests.servers.process import ServerProcess, free_port, http_ok, start_together
from tests.servers.redis import RedisProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEY = "sk-topology-test"
OVERLAY = ROOT / "deploy/kubernetes/cpu"
ENGINE_DNS = "localhost"  # stands for the headless Service llm-engine: resolves to 127.0.0.1


def rendered() -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAY)], check=True, capture_output=True, text=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def deployments(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The bundle's Deployments by service name (the --service-name their args give)."""
    found = {}
    for doc in docs:
        if doc["kind"] != "Deployment":
            continue
        container = doc["spec"]["template"]["spec"]["containers"][0]
        args = container.get("args") or []
        if "--service-name" in args:
            found[args[args.index("--service-name") + 1]] = container
    return found


def config_map(docs: list[dict[str, Any]], key: str) -> str:
    for doc in docs:
        if doc["kind"] in ("ConfigMap", "Secret") and key in (doc.get("data") or {}):
            data = doc["data"][key]
            if doc["kind"] == "Secret":
                import base64

                data = base64.b64decode(data).decode()
            return str(data)
    raise LookupError(key)


def host_address() -> str:
    """An address of this machine other than loopback (the one a default route would use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
        address = str(s.getsockname()[0])
    assert not address.startswith("127."), address
    return address


@pytest.fixture(scope="module")
def urls() -> Iterator[dict[str, str]]:
    docs = rendered()
    services = deployments(docs)
    assert {"gateway", "llm", "vision", "speech", "embed"} <= set(services)
    llm_host = host_address()  # where the llm pod is reached, as another pod's Service is
    work = Path(tempfile.mkdtemp(prefix="topology-"))
    redis = RedisProcess().start()
    config = yaml.safe_load(config_map(docs, "bundle.yaml"))
    for section in ("ratelimit", "cache"):
        if str(config.get(section, {}).get("storage", "")).startswith("redis://"):
            db = config[section]["storage"].rsplit("/", 1)[-1]
            config[section]["storage"] = f"{redis.url.rsplit('/', 1)[0]}/{db}"
    ports = {name: free_port() for name in services}
    config.setdefault("llm", {})["port"] = free_port()  # vLLM's own port, inside the llm pod
    # The headless Service over the llm pods: a name this machine resolves, at the llm process's
    # engine (vLLM) and service (/readyz) ports, as the pod's 8100 and 3000.
    discover = config["llm"]["engine_discover"]
    assert discover["port"] == 8100 and discover["health_port"] == 3000, discover
    discover |= {"dns": ENGINE_DNS, "port": config["llm"]["port"], "health_port": ports["llm"]}
    if config.get("gateway", {}).get("grpc_port"):
        config["gateway"]["grpc_port"] = free_port()
    (work / "bundle.yaml").write_text(yaml.safe_dump(config))
    (work / "keys.yaml").write_text(yaml.safe_dump([{"name": "test", "sha256": digest(KEY)}]))
    bento = subprocess.run(
        [sys.executable, "-m", "bentoml", "get", build_bento(), "-o", "path"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    home = isolated_home(work)
    processes = []
    for name, container in services.items():
        args = list(container["args"])
        args[args.index("--port") + 1] = str(ports[name])
        # The llm pod is reached at this host's own address, as a Service in another pod is:
        # not loopback, so only llm.engine_discover can send the gateway past its proxy.
        args[args.index("--host") + 1] = "0.0.0.0" if name == "llm" else "127.0.0.1"
        for i, arg in enumerate(args):
            if i and args[i - 1] == "--depends":
                dep = arg.split("=", 1)[0]
                host = llm_host if dep == "llm" else "127.0.0.1"
                args[i] = f"{dep}=http://{host}:{ports[dep]}"
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        assert env.pop("BUNDLE_CONFIG").startswith("/etc/serving-bundle/")
        env["BUNDLE_CONFIG"] = str(work / "bundle.yaml")
        if "BUNDLE_KEYS_FILE" in env:
            env["BUNDLE_KEYS_FILE"] = str(work / "keys.yaml")
        env["BENTOML_HOME"] = str(home / name)  # a pod of its own: its own metrics dir
        (home / name).mkdir()
        for shared in ("models", "bentos", "envs"):
            (home / name / shared).symlink_to(home / shared)
        # The image's entrypoint turns `start-http-server ARGS` into exactly this:
        command = [sys.executable, "-m", "bentoml_cli._internal.start", *args, bento]
        processes.append(
            ServerProcess(
                name,
                command,
                ready=http_ok(f"http://127.0.0.1:{ports[name]}/readyz"),
                url=f"http://127.0.0.1:{ports[name]}",
                env={**env, "VLLM_CPU_KVCACHE_SPACE": "1"},
                timeout_s=420,
            )
        )
    try:
        start_together(*(p.start for p in processes), aborts=[p.abort for p in processes])
        found = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
        yield found | {"engine": f"http://127.0.0.1:{config['llm']['port']}"}
    finally:
        for process in processes:
            process.stop()
        redis.stop()


@pytest.fixture(scope="module")
def gateway_url(urls: dict[str, str]) -> str:
    return urls["gateway"]


def test_each_modality_through_the_gateway_pod(gateway_url: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=gateway_url, headers=headers, timeout=120) as client:
        assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        chat = client.post(
            "/v1/chat/completions",
            json={
                "model": "demo-llm",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 4,
            },
        )
        image = client.post(
            "/v1/images/classifications",
            data={"model": "demo-resnet"},
            files={"file": ("x.png", image_bytes(noise_image(2)), "image/png")},
        )
        audio = client.post("/v1/audio/transcriptions",
                            data={"model": "demo-whisper", "response_format": "verbose_json"},
                            files={"file": ("x.wav", audio_bytes(tone(1.0, 440, 16_000), 16_000),
                                            "audio/wav")})  # fmt: skip
        models = {m["id"] for m in client.get("/v1/models").json()["data"]}
        embed = client.post("/v1/embeddings", json={"model": "demo-embed", "input": "hi"})
    assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 4
    assert image.status_code == 200 and len(image.json()["predictions"]) == 5
    assert audio.status_code == 200 and audio.json()["duration"] == 1.0
    assert "demo-embed" in models  # deploy/kubernetes/base/embed.yaml: always deployed
    assert embed.status_code == 200 and embed.json()["data"][0]["embedding"]
    assert json.loads(chat.text)["model"] == "demo-llm"


def test_the_gateway_finds_the_llm_engine_by_its_dns_name(urls: dict[str, str]) -> None:
    """llm.engine_discover (the headless Service llm-engine in the ConfigMap): the gateway
    resolves the name, lists the engine it found on /status, ready once the llm service's
    /readyz says so, and sends chat requests there."""
    from prometheus_client.parser import text_string_to_metric_families

    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=urls["gateway"], headers=headers, timeout=120) as client:
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}],
                  "max_tokens": 2},
        )  # fmt: skip
        status = client.get("/status")
        metrics = client.get("/metrics")
    assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] == 2, chat.text
    assert status.status_code == 200, status.text
    (llm,) = [b for b in status.json()["backends"] if b["name"] == "llm"]
    assert llm["ready"] and llm["target"].startswith(f"dns:{ENGINE_DNS}:"), llm
    states = {e["endpoint"]: e["state"] for e in llm["endpoints"]}
    assert states.get(urls["engine"]) == "ready", states
    sent = {
        sample.labels["endpoint"]: sample.value
        for family in text_string_to_metric_families(metrics.text)
        for sample in family.samples
        if sample.name == "gateway_endpoint_requests_total" and sample.labels["backend"] == "llm"
    }
    assert sent.get(urls["engine"], 0) >= 1, sent


def test_llm_streams_come_from_the_engine_port_past_the_llm_services_proxy(
    urls: dict[str, str],
) -> None:
    """llm.engine_discover (llm-engine:8100 in the ConfigMap): the gateway reaches vLLM in its
    pod, so the llm service's BentoML proxy counts the gateway's health checks but no
    completion."""
    from prometheus_client.parser import text_string_to_metric_families

    with httpx.Client(base_url=urls["gateway"], timeout=120) as client:
        body = {"model": "demo-llm", "prompt": "hi", "max_tokens": 2, "stream": True}
        with client.stream(
            "POST", "/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
        ) as r:
            assert r.status_code == 200 and "data: [DONE]" in r.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{urls['llm']}/metrics").text):
        for sample in family.samples:
            if sample.name == "bentoml_service_request_total":
                endpoint = sample.labels["endpoint"]
                counts[endpoint] = counts.get(endpoint, 0) + sample.value
    assert counts.get("/readyz", 0) > 0, counts  # the proxy counts what it serves
    assert not any(v for e, v in counts.items() if e.startswith("/v1/")), counts
