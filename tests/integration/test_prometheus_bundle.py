"""A real Prometheus scrapes the real bundle under traffic, with the project's alert rules: the
metrics the dashboard and alerts are built on are there, and every query of theirs evaluates.

(tests/deploy/test_observability.py checks each query returns series against a target that
serves every metric; here some series legitimately do not exist yet, e.g. an open breaker.)
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.test_observability import (
    ALERTS,
    Prometheus,
    alert_rules,
    as_query,
    dashboard_targets,
    tool,
)
from tests.integration.conftest import RoutingStack
from tests.media import image_bytes, noise_image
from tests.servers.process import ServerProcess, free_port, http_ok

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# What the dashboard's main panels need from a bundle that has served traffic.
EXPECTED = [
    "gateway_requests_total",
    "gateway_request_duration_seconds_bucket",
    "gateway_time_to_first_byte_seconds_bucket",
    "gateway_admission_inflight",
    "gateway_breaker_state",
    "runner_batch_size_count",
    "vllm:num_requests_running",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:generation_tokens_total",
]


@pytest.fixture(scope="module")
def prometheus(routing_stack: RoutingStack) -> Iterator[Prometheus]:
    work = Path(tempfile.mkdtemp(prefix="prometheus-bundle-"))
    port = free_port()
    target = routing_stack.url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": "bundle", "static_configs": [
            {"targets": [target], "labels": {"service": "gateway"}}]}],
    }  # fmt: skip
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        "prometheus",
        [tool("prometheus"), f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        ready=http_ok(f"{url}/-/ready"),
        cwd=work,
        timeout_s=60,
    ).start()  # fmt: skip
    try:
        yield Prometheus(url)
    finally:
        server.stop()


def traffic(url: str) -> None:
    chat = {"model": "demo-llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    image = {"file": ("x.png", image_bytes(noise_image(3)), "image/png")}

    def one(i: int) -> int:
        with httpx.Client(base_url=url, timeout=60) as client:
            if i % 2:
                return client.post("/v1/chat/completions", json=chat).status_code
            return client.post(
                "/v1/images/classifications", data={"model": "demo-resnet"}, files=image
            ).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(one, range(32))) == {200}


def test_prometheus_scrapes_the_bundle_and_every_query_evaluates(
    prometheus: Prometheus, routing_stack: RoutingStack
) -> None:
    traffic(routing_stack.url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        names = prometheus.metric_names()
        if (
            all(name in names for name in EXPECTED)
            and prometheus.query('sum(gateway_requests_total{status="2xx"})')["result"]
        ):
            break
        time.sleep(1)
    missing = [name for name in EXPECTED if name not in prometheus.metric_names()]
    assert not missing, f"the bundle's /metrics lacks {missing}"
    served = float(
        prometheus.query('sum(gateway_requests_total{status="2xx"})')["result"][0]["value"][1]
    )
    assert served >= 32
    for panel, expr in dashboard_targets():
        assert prometheus.query(as_query(expr))["resultType"] == "vector", panel
    for rule in alert_rules():
        assert prometheus.query(rule["expr"])["resultType"] == "vector", rule["alert"]
    rules = {r["name"]: r for r in prometheus.rules()}
    assert all(r["health"] == "ok" for r in rules.values()), {
        name: r.get("lastError") for name, r in rules.items() if r["health"] != "ok"
    }
