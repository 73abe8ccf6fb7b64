"""API keys and per-key limits, shared through a real Redis by two gateway replicas, with the
real clients (openai, tritonclient) a user would call the gateway with.

The gateway (`service:RemoteGateway` under `bentoml serve`: one replica with two workers, a
second with one) routes KServe V2 requests to the routing stack's real Triton and chat
completions to an OpenAI-compatible upstream; the keys' limits live in a real redis-server
started here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.scope.keys import digest
from tests.integration.conftest import RoutingStack
from tests.integration.prometheus import metric_value
from tests.servers.bundle import remote_gateway_process
from tests.servers.process import ServerProcess
from tests.servers.redis import RedisProcess
from tests.servers.upstream import upstream_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEY = "sk-shared-limits-test"  # team-a: rpm
TOKENS_KEY = "sk-tokens-test"  # team-b: tpm, only remote-* models
PARALLEL_KEY = "sk-parallel-test"  # team-c: one request at a time
RPM = 12
TPM = 60
INFER = {"inputs": [{"name": "INPUT0", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8}]}


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisProcess]:
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerProcess]:
    """An OpenAI-compatible server that reports usage (the stack's vLLM may be stopped by the
    time this module runs: test_routing_llm stops it)."""
    server = upstream_process(prefill_ms=1, token_ms=1).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def config(
    routing_stack: RoutingStack, redis: RedisProcess, upstream: ServerProcess
) -> dict[str, Any]:
    return {
        "gateway": {"workers": 2},
        "ratelimit": {"storage": redis.url},
        "auth": {"keys": [
            {"name": "team-a", "sha256": digest(KEY), "rpm": RPM},
            {"name": "team-b", "sha256": digest(TOKENS_KEY), "tpm": TPM, "models": ["remote-*"]},
            {"name": "team-c", "sha256": digest(PARALLEL_KEY), "max_parallel": 1},
        ]},
        "routing": {
            "backends": {
                "triton": {"kind": "triton", "url": routing_stack.triton.http_url,
                           "protocol": "http"},
                "vllm": {"kind": "openai", "url": upstream.url},
            },
            "models": {"scale": {"backend": "triton"},
                       "sleepy": {"backend": "triton"},
                       "remote-llm": {"backend": "vllm"}},
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def gateway(config: dict[str, Any]) -> Iterator[ServerProcess]:
    server = remote_gateway_process(config).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def replica(config: dict[str, Any]) -> Iterator[ServerProcess]:
    """A second replica of the same gateway: one worker, the same keys and Redis."""
    server = remote_gateway_process({**config, "gateway": {"workers": 1}}).start()
    try:
        yield server
    finally:
        server.stop()


def infer(url: str, key: str = PARALLEL_KEY) -> httpx.Response:
    """One request on a connection of its own, so the kernel spreads them over the workers."""
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.post(
            "/v2/models/scale/infer", json=INFER, headers={"Authorization": f"Bearer {key}"}
        )


def access_lines(server: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        if line.startswith('{"request_id"'):
            lines.append(json.loads(line))
    return lines


def test_two_replicas_share_the_keys_rpm_through_redis(
    gateway: ServerProcess, replica: ServerProcess
) -> None:
    """A burst of RPM + 8 requests on one key, alternated over two replicas (the two-worker
    gateway and a second one): exactly RPM served in all, each replica served some, and each
    refusal carries the limit's headers. Which of a process's workers takes a connection is the
    kernel's choice, so sharing is shown between processes, where the test picks the target."""
    n = RPM + 8
    urls = [gateway.url, replica.url] * (n // 2)
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(infer, urls, [KEY] * n))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == RPM, statuses
    assert statuses.count(429) == 8
    served_by = {url for url, r in zip(urls, responses, strict=True) if r.status_code == 200}
    assert served_by == {gateway.url, replica.url}, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["x-ratelimit-limit-requests"] == str(RPM)
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(refused.headers["retry-after"]) >= 1
    assert "team-a" in refused.json()["error"]  # KServe's shape on /v2, the key's name


def test_the_openai_client_needs_a_key_and_hits_its_token_limit(gateway: ServerProcess) -> None:
    anonymous = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="sk-not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        anonymous.models.list()
    assert denied.value.code == "invalid_api_key"

    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=TOKENS_KEY, max_retries=0)
    chat = {"model": "remote-llm", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 16, "temperature": 0}  # fmt: skip
    raw = client.chat.completions.with_raw_response.create(**chat)
    used = raw.parse().usage.total_tokens
    assert raw.headers["x-ratelimit-limit-tokens"] == str(TPM)
    request_id = raw.headers["x-request-id"]
    with pytest.raises(openai.RateLimitError) as limited:
        for _ in range(TPM // used + 2):
            client.chat.completions.create(**chat)
    assert "tokens per minute" in limited.value.message
    assert limited.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(limited.value.response.headers["retry-after"]) >= 1
    (line,) = [entry for entry in access_lines(gateway) if entry["request_id"] == request_id]
    assert (line["key"], line["model"], line["backend"]) == ("team-b", "remote-llm", "vllm")
    assert line["prompt_tokens"] + line["completion_tokens"] == used


def test_tritonclient_sends_the_key_and_the_allow_list_holds(gateway: ServerProcess) -> None:
    address = gateway.url.removeprefix("http://")
    client = httpclient.InferenceServerClient(address)
    x = httpclient.InferInput("INPUT0", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[1, 2, 3, 4]], dtype=np.float32))
    ok = client.infer("scale", [x], headers={"Authorization": f"Bearer {PARALLEL_KEY}"})
    assert ok.as_numpy("OUTPUT0").tolist() == [[3.0, 5.0, 7.0, 9.0]]
    with pytest.raises(InferenceServerException) as denied:
        client.infer("scale", [x])
    assert "API key" in str(denied.value)
    with pytest.raises(InferenceServerException) as forbidden:
        client.infer("scale", [x], headers={"api-key": TOKENS_KEY})  # team-b: remote-* only
    assert "team-b" in str(forbidden.value)


def test_max_parallel_refuses_a_second_request_in_flight(gateway: ServerProcess) -> None:
    sleepy = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    headers = {"Authorization": f"Bearer {PARALLEL_KEY}"}

    def call() -> httpx.Response:
        with httpx.Client(base_url=gateway.url, timeout=60) as client:
            return client.post("/v2/models/sleepy/infer", json=sleepy, headers=headers)

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(call)
        time.sleep(1.0)  # sleepy takes seconds: the first is in flight
        second = pool.submit(call).result()
        assert first.result().status_code == 200
    assert second.status_code == 429 and "parallel requests" in second.json()["error"]


def test_redis_down_fails_open_with_a_metric(gateway: ServerProcess, redis: RedisProcess) -> None:
    redis.kill()
    try:
        responses = [infer(gateway.url) for _ in range(4)]
        assert [r.status_code for r in responses] == [200] * 4
        assert metric_value(gateway.url, "gateway_ratelimit_storage_errors_total") >= 4
    finally:
        redis.start()
