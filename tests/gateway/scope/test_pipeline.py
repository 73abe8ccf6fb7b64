"""The request pipeline in process: request ids, keys, per-key limits, usage, access log, bodies."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import resource
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

import lifecycle
from gateway.adapters.base import InferResponse
from gateway.app import create_app, install
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from gateway.scope.keys import digest
from settings import Settings, parse_settings
from tests.fakes import FakeAdapter

CHAT = {"model": "tiny-llm", "messages": [{"role": "user", "content": "hi"}]}
ALICE, BOB = "sk-alice-secret", "sk-bob-secret"
USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def settings_with(**sections: Any) -> Settings:
    return parse_settings(sections)


def keyed(**alice: Any) -> Settings:
    return settings_with(
        auth={
            "keys": [
                {"name": "alice", "sha256": digest(ALICE), **alice},
                {"name": "bob", "sha256": digest(BOB), "models": ["other-*"]},
            ]
        }
    )


@pytest.fixture
def llm() -> FakeAdapter:
    return FakeAdapter("llm")


@pytest.fixture
def client_for(llm: FakeAdapter) -> Iterator[Callable[[Settings], TestClient]]:
    """Makes the gateway app in process, over the fake LLM, with the given settings."""
    routes = [Route("tiny-llm", "llm", "llm", "tiny-llm"), Route("other-llm", "llm", "llm", "o")]
    with contextlib.ExitStack() as stack:

        def make(settings: Settings) -> TestClient:
            app = create_app()
            install(app, settings=settings, router=Router(Registry(routes), {"llm": llm}))
            return stack.enter_context(TestClient(app, raise_server_exceptions=False))

        yield make


@pytest.fixture
def open_client(client_for: Callable[[Settings], TestClient]) -> TestClient:
    return client_for(Settings())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def answer(usage: dict[str, int] | None = USAGE) -> InferResponse:
    return InferResponse({"id": "x", "choices": [{"index": 0}], "usage": usage})


# -- drain ------------------------------------------------------------------------------------


def test_a_draining_worker_refuses_in_each_protocols_shape_and_logs_the_refusal(
    open_client: TestClient,
    llm: FakeAdapter,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(lifecycle.DRAIN, "draining", True)
    monkeypatch.setattr(lifecycle.DRAIN, "refuse_new", True)
    monkeypatch.setattr(lifecycle.DRAIN, "retry_after_s", 7)
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        openai_style = open_client.post("/v1/chat/completions", json=CHAT)
        kserve_style = open_client.get("/v2/models/tiny-llm")
    assert openai_style.status_code == kserve_style.status_code == 503
    assert openai_style.headers["retry-after"] == "7"
    assert openai_style.headers["connection"] == "close"
    assert openai_style.json()["error"]["code"] == "draining"
    assert "shutting down" in kserve_style.json()["error"]
    assert openai_style.headers["x-request-id"] and not llm.requests
    logged = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [r["status"] for r in logged] == [503, 503]
    assert lifecycle.DRAIN.inflight == 0


# -- request ids -------------------------------------------------------------------------------


def test_every_response_carries_a_fresh_request_id_which_reaches_the_backend(
    open_client: TestClient, llm: FakeAdapter
) -> None:
    llm.enqueue(answer(), answer())
    first = open_client.post("/v1/chat/completions", json=CHAT)
    second = open_client.post("/v1/chat/completions", json=CHAT)
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert len(set(ids)) == 2 and all(len(i) == 32 for i in ids)
    assert [r.request_id for r in llm.requests] == ids


def test_the_clients_request_id_is_kept_on_success_errors_and_kserve(
    open_client: TestClient, llm: FakeAdapter
) -> None:
    llm.enqueue(answer())
    ok = open_client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "trace-1"})
    missing = open_client.post(
        "/v1/chat/completions", json={**CHAT, "model": "nope"}, headers={"X-Request-Id": "t-2"}
    )
    v2 = open_client.get("/v2/models/nope", headers={"X-Request-Id": "t-3"})
    assert (ok.status_code, ok.headers["x-request-id"]) == (200, "trace-1")
    assert (missing.status_code, missing.headers["x-request-id"]) == (404, "t-2")
    assert (v2.status_code, v2.headers["x-request-id"]) == (404, "t-3")
    assert "error" in v2.json() and isinstance(v2.json()["error"], str)  # KServe's shape


def test_an_unusable_client_request_id_is_replaced(open_client: TestClient) -> None:
    r = open_client.get("/v1/models", headers={"X-Request-Id": "has spaces " + "x" * 200})
    assert r.headers["x-request-id"] != "has spaces" and len(r.headers["x-request-id"]) == 32


# -- keys --------------------------------------------------------------------------------------


@pytest.fixture
def keyed_client(client_for: Callable[[Settings], TestClient]) -> TestClient:
    return client_for(keyed())


def test_no_keys_configured_means_auth_is_off(open_client: TestClient, llm: FakeAdapter) -> None:
    llm.enqueue(answer())
    assert open_client.post("/v1/chat/completions", json=CHAT).status_code == 200


@pytest.mark.parametrize(
    ("headers", "says"),
    [({}, "didn't provide an API key"), (bearer("sk-wrong"), "Incorrect API key")],
)
def test_missing_or_wrong_key_is_401_in_openai_shape_without_calling_the_backend(
    keyed_client: TestClient, llm: FakeAdapter, headers: dict[str, str], says: str
) -> None:
    r = keyed_client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert r.status_code == 401
    err = r.json()["error"]
    assert err["code"] == "invalid_api_key" and says in err["message"]
    assert "sk-wrong" not in r.text
    assert llm.requests == []


def test_a_key_works_as_bearer_or_api_key_header(
    keyed_client: TestClient, llm: FakeAdapter
) -> None:
    llm.enqueue(answer(), answer())
    assert keyed_client.post("/v1/chat/completions", json=CHAT, headers=bearer(ALICE)).is_success
    r = keyed_client.post("/v1/chat/completions", json=CHAT, headers={"api-key": ALICE})
    assert r.status_code == 200


def test_kserve_routes_need_a_key_too_and_answer_in_kserve_shape(keyed_client: TestClient) -> None:
    r = keyed_client.get("/v2/models/tiny-llm")
    assert r.status_code == 401 and "API key" in r.json()["error"]


def test_a_model_outside_the_keys_allow_list_is_403_and_hidden_from_404s(
    keyed_client: TestClient, llm: FakeAdapter
) -> None:
    r = keyed_client.post("/v1/chat/completions", json=CHAT, headers=bearer(BOB))
    assert r.status_code == 403
    assert (
        r.json()["error"]["code"] == "model_not_allowed" and "bob" in r.json()["error"]["message"]
    )
    missing = keyed_client.post(
        "/v1/chat/completions", json={**CHAT, "model": "x"}, headers=bearer(BOB)
    )
    assert "other-llm" in missing.text and "tiny-llm" not in missing.text
    assert llm.requests == []


# -- limits ------------------------------------------------------------------------------------


def test_rpm_refuses_with_429_and_openai_headers_and_paces_successes(
    client_for: Callable[[Settings], TestClient], llm: FakeAdapter
) -> None:
    client = client_for(keyed(rpm=2))
    llm.enqueue(answer(), answer())
    first = client.post("/v1/chat/completions", json=CHAT, headers=bearer(ALICE))
    second = client.post("/v1/chat/completions", json=CHAT, headers=bearer(ALICE))
    third = client.post("/v1/chat/completions", json=CHAT, headers=bearer(ALICE))
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.status_code == 429
    assert third.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(third.headers["retry-after"]) >= 1
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(llm.requests) == 2
    other = client.post(
        "/v1/chat/completions", json={**CHAT, "model": "other-llm"}, headers=bearer(BOB)
    )
    assert other.status_code != 429  # bob has his own (no) limits


def test_tokens_are_counted_from_the_engines_usage_against_tpm(
    client_for: Callable[[Settings], TestClient], llm: FakeAdapter
) -> None:
    client = client_for(keyed(tpm=20))
    llm.enqueue(answer(), answer())
    first = client.post("/v1/chat/completions", json=CHAT, headers=bearer(ALICE))
    assert first.headers["x-ratelimit-limit-tokens"] == "20"
    client.post("/v1/chat/completions", json=CHAT, headers=bearer(ALICE))  # 12 + 12 > 20
    refused = client.post("/v1/chat/completions", json=CHAT, headers=bearer(ALICE))
    assert refused.status_code == 429 and "tokens per minute" in refused.json()["error"]["message"]


STREAM = [
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n',
    b'data: {"id":"c","choices":[{"index":0,"delta":{"con',  # an event split across chunks
    b'tent":"b"}}]}\n\ndata: {"id":"c","choices":[],"usage":{"prompt_tokens":3,'
    b'"completion_tokens":2,"total_tokens":5}}\n\n',
    b"data: [DONE]\n\n",
]


def test_a_stream_asks_for_usage_counts_it_and_hides_it_from_a_client_that_did_not_ask(
    client_for: Callable[[Settings], TestClient],
    llm: FakeAdapter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = client_for(keyed(tpm=1000))
    llm.enqueue(list(STREAM))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        r = client.post(
            "/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(ALICE)
        )
    assert llm.requests[0].payload["stream_options"] == {"include_usage": True}
    assert r.content == STREAM[0] + STREAM[1] + b'tent":"b"}}]}\n\n' + STREAM[3]
    (line,) = [json.loads(rec.getMessage()) for rec in caplog.records]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (3, 2)
    assert line["key"] == "alice" and line["status"] == 200 and line["ttft_ms"] is not None


def test_a_client_that_asked_for_usage_gets_it(open_client: TestClient, llm: FakeAdapter) -> None:
    llm.enqueue(list(STREAM))
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    r = open_client.post("/v1/chat/completions", json=body)
    assert r.content == b"".join(STREAM)


# -- access log --------------------------------------------------------------------------------


def test_one_json_line_per_request_with_the_fields_to_trace_it(
    open_client: TestClient, llm: FakeAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    llm.enqueue(answer())
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        ok = open_client.post("/v1/chat/completions", json=CHAT)
        bad = open_client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
    lines = [json.loads(rec.getMessage()) for rec in caplog.records]
    assert [line["request_id"] for line in lines] == [
        ok.headers["x-request-id"],
        bad.headers["x-request-id"],
    ]
    assert lines[0]["model"] == "tiny-llm" and lines[0]["backend"] == "llm"
    assert (lines[0]["prompt_tokens"], lines[0]["completion_tokens"]) == (7, 5)
    assert lines[0]["status"] == 200 and lines[0]["latency_ms"] > 0
    assert 0 <= lines[0]["body_ms"] <= lines[0]["latency_ms"]  # the client's part of it
    assert lines[1]["status"] == 404 and lines[1]["path"] == "/v1/chat/completions"
    assert "ALICE" not in caplog.text


# -- bodies ------------------------------------------------------------------------------------


def test_a_gzip_bomb_is_refused_before_it_inflates_and_memory_stays_bounded(
    open_client: TestClient,
) -> None:
    bomb = gzip.compress(b"\0" * (512 * 1024 * 1024), compresslevel=9)  # 512 MiB -> ~500 KB
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = open_client.post(
        "/v1/chat/completions",
        content=bomb,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.status_code == 413 and "inflates to more than" in r.json()["error"]["message"]
    assert grown_mib < 100  # the limit is 25 MiB; inflating it whole would take 512 MiB


def test_a_gzip_json_body_is_accepted_on_v1(open_client: TestClient, llm: FakeAdapter) -> None:
    llm.enqueue(answer())
    r = open_client.post(
        "/v1/chat/completions",
        content=gzip.compress(json.dumps(CHAT).encode()),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 200 and llm.requests[0].payload["messages"] == CHAT["messages"]


@pytest.mark.parametrize(
    ("encoding", "body", "status", "says"),
    [
        ("gzip", b"not gzip at all", 400, "not valid gzip"),
        ("gzip", gzip.compress(b"{}")[:-6], 400, "ends early"),
        ("br", b"{}", 415, "Unsupported Content-Encoding"),
    ],
)
def test_bad_encodings_are_4xx(
    open_client: TestClient, encoding: str, body: bytes, status: int, says: str
) -> None:
    r = open_client.post(
        "/v1/chat/completions",
        content=body,
        headers={"Content-Encoding": encoding, "Content-Type": "application/json"},
    )
    assert r.status_code == status and says in r.json()["error"]["message"]


RESPONSES_STREAM = [
    b'event: response.created\ndata: {"type":"response.created","response":{"id":"r"}}\n\n',
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"delta":"hi"}\n\n',
    b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r",'
    b'"usage":{"input_tokens":4,"output_tokens":6,"total_tokens":10}}}\n\n',
]


def test_a_responses_stream_is_relayed_as_is_and_its_usage_counted(
    open_client: TestClient, llm: FakeAdapter, caplog: pytest.LogCaptureFixture
) -> None:
    llm.enqueue(list(RESPONSES_STREAM))
    with caplog.at_level(logging.INFO, logger="gateway.access"):
        r = open_client.post(
            "/v1/responses", json={"model": "tiny-llm", "input": "hi", "stream": True}
        )
    assert r.content == b"".join(RESPONSES_STREAM)
    assert llm.requests[0].task == "responses" and "stream_options" not in llm.requests[0].payload
    (line,) = [json.loads(rec.getMessage()) for rec in caplog.records]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (4, 6)
