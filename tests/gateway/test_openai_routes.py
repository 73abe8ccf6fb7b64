from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from starlette.testclient import TestClient

from gateway.adapters.base import InferResponse, OpenedStream
from gateway.api.openai import EventStream, UsageTap
from gateway.errors import BackendError, BackendUnavailable
from gateway.scope.context import RequestContext
from tests.fakes import FakeAdapter
from tests.gateway.openai_errors import error_of

CHAT = {"model": "tiny-llm", "messages": [{"role": "user", "content": "hi"}]}


def test_models_lists_every_route_with_kind_and_backend(client: TestClient) -> None:
    r = client.get("/v1/models")
    assert r.status_code == 200
    assert r.json()["data"][0] | {"created": 0} == {
        "id": "tiny-llm",
        "object": "model",
        "created": 0,
        "owned_by": "serving-bundle",
        "kind": "llm",
        "backend": "llm",
    }


def test_chat_is_sent_upstream_under_the_backend_model_name(
    client: TestClient, llm: FakeAdapter
) -> None:
    llm.enqueue(InferResponse({"id": "x", "choices": []}))
    r = client.post("/v1/chat/completions", json={**CHAT, "temperature": 0.3, "seed": 7})
    assert r.status_code == 200 and r.json() == {"id": "x", "choices": []}
    sent = llm.requests[0]
    assert (sent.task, sent.model) == ("chat", "tiny-llm-upstream")
    assert sent.payload["temperature"] == 0.3 and sent.payload["seed"] == 7


def test_unknown_model_is_404_naming_the_available_ones(client: TestClient) -> None:
    r = client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
    assert r.status_code == 404
    err = error_of(r)
    assert "gpt-9" in err["message"] and "tiny-llm" in err["message"]
    assert err["param"] == "model"


def test_missing_model_is_400(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": "x"})
    assert r.status_code == 400 and error_of(r)["param"] == "model"


def test_malformed_json_is_400_and_the_server_keeps_serving(
    client: TestClient, llm: FakeAdapter
) -> None:
    r = client.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "not valid JSON" in error_of(r)["message"]
    llm.enqueue(InferResponse({"ok": True}))
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_json_nested_100000_levels_deep_is_400_not_a_recursion_error(
    client: TestClient, llm: FakeAdapter
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/v1/chat/completions", "/v1/embeddings"):
        r = client.post(path, content=b'{"model":"tiny-llm","x":' + deep + b"}")
        assert r.status_code == 400, r.text
        assert error_of(r)["message"].startswith("The request body is not valid JSON: recursion")
    assert llm.requests == []
    nested = {"type": "object", "properties": {"a": {"type": "array", "items": {}}}}
    for _ in range(40):  # a deep but sane JSON schema still passes
        nested = {"type": "object", "properties": {"a": nested}}
    llm.enqueue(InferResponse({"ok": True}))
    r = client.post("/v1/chat/completions", json={**CHAT, "response_format": nested})
    assert r.status_code == 200 and llm.requests[0].payload["response_format"] == nested


def test_wrong_content_type_is_415(client: TestClient) -> None:
    r = client.post(
        "/v1/chat/completions", content=b"model=x", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415 and "application/json" in error_of(r)["message"]


def test_non_object_and_empty_bodies_are_400(client: TestClient) -> None:
    assert client.post("/v1/chat/completions", json=[1, 2]).status_code == 400
    r = client.post(
        "/v1/chat/completions", content=b"", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "empty" in error_of(r)["message"]


def test_oversized_body_is_413(client: TestClient) -> None:
    limit = client.app.state.settings.limits.max_request_bytes  # type: ignore[attr-defined]
    r = client.post(
        "/v1/completions", content=b"x" * (limit + 1), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413


def test_backend_down_is_503_naming_the_backend(client: TestClient, llm: FakeAdapter) -> None:
    llm.enqueue(BackendUnavailable("llm", "connection refused"))
    r = client.post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 503 and "'llm'" in error_of(r)["message"]


def test_stream_is_relayed_as_server_sent_events(client: TestClient, llm: FakeAdapter) -> None:
    llm.enqueue([b'data: {"n": 1}\n\n', b'data: {"n": 2}\n\n', b"data: [DONE]\n\n"])
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        body = r.read()
    assert body == b'data: {"n": 1}\n\ndata: {"n": 2}\n\ndata: [DONE]\n\n'


def test_stream_refused_before_first_chunk_is_a_json_error(
    client: TestClient, llm: FakeAdapter
) -> None:
    llm.enqueue(BackendUnavailable("llm", "engine not ready"))
    r = client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 503 and "not ready" in error_of(r)["message"]


def test_stream_failing_midway_ends_with_an_error_event(
    client: TestClient, llm: FakeAdapter
) -> None:
    llm.enqueue([b'data: {"n": 1}\n\n', BackendError("llm", "stream broke off")])
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as r:
        events = [line for line in r.iter_lines() if line]
    assert events[0] == 'data: {"n": 1}'
    assert json.loads(events[1].removeprefix("data: "))["error"]["type"] == "backend_error"
    assert events[-1] == "data: [DONE]"


def test_unknown_path_is_404_in_openai_shape(client: TestClient) -> None:
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and "/v1/nothing-here" in error_of(r)["message"]


def test_one_model_is_retrieved_by_id_and_an_unknown_one_is_404(client: TestClient) -> None:
    r = client.get("/v1/models/tiny-llm")
    assert r.status_code == 200
    assert (r.json()["id"], r.json()["object"], r.json()["kind"]) == ("tiny-llm", "model", "llm")
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and "tiny-llm" in error_of(missing)["message"]


def test_the_openapi_document_lists_every_route_with_its_body(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    paths = spec["paths"]
    expected = {"/v1/chat/completions", "/v1/models/{model}", "/v1/images/classifications",
                "/v1/audio/translations", "/v2/models/{model}/infer", "/status"}  # fmt: skip
    assert expected <= set(paths)
    upload = paths["/v1/images/classifications"]["post"]["requestBody"]["content"]
    assert {"model", "file", "top_k"} <= set(upload["multipart/form-data"]["schema"]["properties"])
    infer = paths["/v2/models/{model}/infer"]["post"]
    assert "inputs" in infer["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert infer["parameters"][0]["name"] == "model"


async def test_a_client_that_goes_away_stops_the_relay_and_closes_the_upstream_stream() -> None:
    """EventStream: the disconnect is seen at the next chunk; the upstream generator is closed
    (so the engine sees its client go away), and the response ends without error."""
    closed = asyncio.Event()
    gone = asyncio.Event()
    sent: list[dict[str, object]] = []

    async def upstream() -> AsyncIterator[bytes]:
        try:
            while True:
                await asyncio.sleep(0.001)
                yield b'data: {"n": 1}\n\n'
        finally:
            closed.set()

    async def receive() -> dict[str, object]:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)
        if len(sent) == 3:  # the start and two chunks, then the client leaves
            gone.set()

    tap = UsageTap(RequestContext("id", "POST", "/v1/chat/completions"), strip=False)
    response = EventStream(tap, OpenedStream(b'data: {"n": 0}\n\n', upstream()))
    await asyncio.wait_for(response({"type": "http"}, receive, send), 5)  # type: ignore[arg-type]
    assert closed.is_set()
    assert 3 <= len(sent) <= 5, "the relay went on after the disconnect"
    assert sent[0]["type"] == "http.response.start"
