"""Per-key limits shared through a real Redis by two gateway workers, under `bentoml serve`.

The gateway (`service:RemoteGateway`, two workers) routes KServe V2 requests to the routing
stack's real Triton; the key's limits live in a real redis-server started here.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway.keys import digest
from tests.integration.conftest import RoutingStack
from tests.integration.prometheus import metric_value
from tests.servers.bentoml_home import isolated_home
from tests.servers.bundle import BENTOML, ROOT
from tests.servers.process import ServerProcess, free_port, http_ok
from tests.servers.redis import RedisProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEY = "sk-shared-limits-test"
RPM = 12
INFER = {"inputs": [{"name": "INPUT0", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(routing_stack: RoutingStack, redis: RedisProcess) -> Iterator[ServerProcess]:
    directory = Path(tempfile.mkdtemp(prefix="shared-limits-"))
    config: dict[str, Any] = {
        "gateway": {"workers": 2},
        "ratelimit": {"storage": redis.url},
        "auth": {"keys": [{"name": "team-a", "sha256": digest(KEY), "rpm": RPM}]},
        "routing": {
            "backends": {
                "triton": {"kind": "triton", "url": routing_stack.triton.http_url,
                           "protocol": "http"},
            },
            "models": {"scale": {"backend": "triton"}},
        },
    }  # fmt: skip
    (directory / "routes.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        "remote-gateway",
        [*BENTOML, "serve", "service:RemoteGateway", "--port", str(port), "--host", "127.0.0.1"],
        ready=http_ok(f"{url}/readyz"),
        url=url,
        env={
            "BUNDLE_CONFIG": str(directory / "routes.yaml"),
            "BENTOML_HOME": str(isolated_home(directory)),
        },
        cwd=ROOT,
        timeout_s=180,
    ).start()
    try:
        yield server
    finally:
        server.stop()


def infer(url: str) -> httpx.Response:
    """One request on a connection of its own, so the kernel spreads them over the workers."""
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.post(
            "/v2/models/scale/infer", json=INFER, headers={"Authorization": f"Bearer {KEY}"}
        )


def access_lines(server: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith('{"request_id"'):
            lines.append(json.loads(line))
    return lines


def test_two_workers_share_the_keys_rpm_through_redis(gateway: ServerProcess) -> None:
    responses = [infer(gateway.url) for _ in range(RPM + 8)]
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == RPM, statuses
    assert statuses.count(429) == 8
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["x-ratelimit-limit-requests"] == str(RPM)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(refused.headers["retry-after"]) >= 1
    assert "team-a" in refused.json()["error"]  # KServe's shape on /v2, the key's name
    served = {line["worker"] for line in access_lines(gateway) if line["status"] == 200}
    assert len(served) == 2, "both workers served requests (else this proves nothing)"


def test_redis_down_fails_open_with_a_metric(gateway: ServerProcess, redis: RedisProcess) -> None:
    redis.kill()
    try:
        responses = [infer(gateway.url) for _ in range(4)]
        assert [r.status_code for r in responses] == [200] * 4
        assert metric_value(gateway.url, "gateway_ratelimit_storage_errors_total") >= 4
    finally:
        redis.start()
