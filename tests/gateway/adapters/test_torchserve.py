"""The TorchServe adapter over a fake TorchServe (an httpx transport answering in TorchServe's
own shapes: its predictions, its management API's model descriptions, its errors), and how the
configuration builds it. tests/integration/test_routing_torchserve.py runs a real one."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.adapters.base import InferRequest
from gateway.adapters.torchserve import TorchServeAdapter
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    PayloadTooLarge,
)
from gateway.routing.build import build_router
from gateway.routing.registry import Registry
from gateway.tensors import Tensor, TensorRequest
from settings import RoutingSettings

SCORES = {"cat": 0.1, "dog": 0.6, "fox": 0.05, "owl": 0.25}


def ts_error(code: int, kind: str, message: str) -> httpx.Response:
    return httpx.Response(code, json={"code": code, "type": kind, "message": message})


class FakeTorchServe:
    """Models by name: a function of the request body giving the answer (or an error
    response); every request is kept for the test to read."""

    def __init__(self, models: dict[str, Callable[[bytes], httpx.Response]]) -> None:
        self.models = models
        self.requests: list[httpx.Request] = []
        self.versions = {"1.0"}
        self.ready = True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        parts = request.url.path.strip("/").split("/")
        if parts == ["ping"]:
            return httpx.Response(200, json={"status": "Healthy"})
        if len(parts) not in (2, 3) or parts[0] not in ("predictions", "models"):
            return ts_error(404, "ResourceNotFoundException", "Requested resource is not found")
        model, version = parts[1], parts[2] if len(parts) == 3 else "1.0"
        if model not in self.models:
            return ts_error(404, "ModelNotFoundException", f"Model not found: {model}")
        if version not in self.versions:
            message = f"Model version: {version} does not exist for model: {model}"
            return ts_error(404, "ModelVersionNotFoundException", message)
        if parts[0] == "models":
            status = "READY" if self.ready else "UNLOADING"
            return httpx.Response(
                200, json=[{"modelName": model, "modelVersion": version,
                            "workers": [{"id": "9000", "status": status}]}],
            )  # fmt: skip
        return self.models[model](request.content)


def answer(body: Any) -> Callable[[bytes], httpx.Response]:
    return lambda _: httpx.Response(200, content=json.dumps(body).encode())


@pytest.fixture
def server() -> FakeTorchServe:
    return FakeTorchServe(
        {
            "resnet": answer(SCORES),
            "upper": lambda body: httpx.Response(200, content=body.upper()),
            "busy": lambda _: ts_error(
                503, "ServiceUnavailableException", 'Model "busy" has no worker to serve'
            ),
            "picky": lambda _: httpx.Response(
                400, content=b'{"code": 400, "message": "The file is not a JPEG image."}'
            ),
            "broken": lambda _: ts_error(500, "InternalServerException", "Worker died."),
            "huge": lambda _: ts_error(413, "RequestEntityTooLarge", "body over 6553500"),
            "garbled": lambda _: httpx.Response(200, content=b"<html>"),
            "batched": answer([SCORES]),
        }
    )


def adapter_of(handler: Callable[[httpx.Request], httpx.Response]) -> TorchServeAdapter:
    transport = httpx.MockTransport(handler)
    return TorchServeAdapter(
        "ts",
        httpx.AsyncClient(base_url="http://ts:8080", transport=transport),
        management=httpx.AsyncClient(base_url="http://ts:8081", transport=transport),
    )


@pytest.fixture
def adapter(server: FakeTorchServe) -> TorchServeAdapter:
    return adapter_of(server)


def classify(model: str, top_k: int | None = None, request_id: str | None = None) -> InferRequest:
    options = {} if top_k is None else {"top_k": top_k}
    return InferRequest("classify", model, b"\xff\xd8jpeg", options, request_id=request_id)


def tensors(*inputs: Tensor, version: str = "", outputs: tuple[str, ...] = ()) -> InferRequest:
    return InferRequest(
        "infer", "upper", TensorRequest(inputs=inputs, version=version, outputs=outputs)
    )


def data(*items: bytes, name: str = "data", datatype: str = "BYTES") -> Tensor:
    array = np.empty(len(items), dtype=object)
    array[:] = list(items)
    return Tensor(name, datatype, array)


# -- image: {label: score} -> Prediction ---------------------------------------------------------


async def test_a_classification_is_the_best_scores_each_with_its_class_index(
    adapter: TorchServeAdapter, server: FakeTorchServe
) -> None:
    result = await adapter.predict(classify("resnet", top_k=2, request_id="req-7"))
    assert [(p.label, p.index, p.score) for p in result.body] == [
        ("dog", 1, 0.6),
        ("owl", 3, 0.25),
    ]
    sent = server.requests[-1]
    assert (sent.method, sent.url.path) == ("POST", "/predictions/resnet")
    assert sent.content == b"\xff\xd8jpeg"
    assert sent.headers["X-Request-Id"] == "req-7"
    assert sent.headers["Content-Type"] == "application/octet-stream"  # not a form


async def test_without_top_k_it_answers_the_default_or_every_class_if_fewer(
    adapter: TorchServeAdapter,
) -> None:
    result = await adapter.predict(classify("resnet"))
    assert [p.label for p in result.body] == ["dog", "owl", "cat", "fox"]


async def test_a_handler_answering_a_batch_of_one_is_read_too(adapter: TorchServeAdapter) -> None:
    result = await adapter.predict(classify("batched", top_k=1))
    assert result.body[0].label == "dog"


@pytest.mark.parametrize("k", [0, 5])
async def test_top_k_beyond_the_classes_answered_is_a_400(
    adapter: TorchServeAdapter, k: int
) -> None:
    with pytest.raises(InvalidRequest, match="top_k") as caught:
        await adapter.predict(classify("resnet", top_k=k))
    assert caught.value.param == "top_k"


@pytest.mark.parametrize(
    "body", [["a", "b"], {"cat": "high"}, {}, {"cat": float("nan")}, {"cat": True}, 7]
)
async def test_an_answer_not_label_to_score_is_the_backends_failure(body: Any) -> None:
    adapter = adapter_of(FakeTorchServe({"resnet": answer(body)}))
    with pytest.raises(BackendError, match="Backend 'ts' failed: expected the classification"):
        await adapter.predict(classify("resnet"))


async def test_an_answer_that_is_not_json_is_the_backends_failure(
    adapter: TorchServeAdapter,
) -> None:
    with pytest.raises(BackendError, match="'ts' failed: the classification answer is not JSON"):
        await adapter.predict(classify("garbled"))


# -- tensor: BYTES `data` -> body, answer -> BYTES `output` ---------------------------------------


async def test_a_tensor_model_takes_the_body_and_answers_the_bytes(
    adapter: TorchServeAdapter, server: FakeTorchServe
) -> None:
    result = await adapter.predict(tensors(data(b"hello\x00")))
    (output,) = result.body
    assert (output.name, output.datatype, output.shape) == ("output", "BYTES", (1,))
    assert output.data[0] == b"HELLO\x00"
    assert server.requests[-1].url.path == "/predictions/upper"


async def test_a_version_goes_into_the_path(
    adapter: TorchServeAdapter, server: FakeTorchServe
) -> None:
    await adapter.predict(tensors(data(b"x"), version="1.0"))
    assert server.requests[-1].url.path == "/predictions/upper/1.0"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (tensors(data(b"x", name="text")), "Unknown input 'text'; the model takes 'data'"),
        (tensors(data(b"x", b"y")), "must have shape [1]"),
        (tensors(Tensor("data", "FP32", np.ones(1, np.float32))), "must be BYTES, got FP32"),
        (tensors(data(b"x"), data(b"y")), "exactly one input"),
        (tensors(data(b"x"), outputs=("probabilities",)), "Unknown output 'probabilities'"),
        (tensors(data("text")), "must hold bytes"),  # type: ignore[arg-type]
    ],
)
async def test_tensors_the_model_cannot_take_are_refused_before_sending(
    adapter: TorchServeAdapter, server: FakeTorchServe, request_: InferRequest, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message.replace("[", r"\[")):
        await adapter.predict(request_)
    assert server.requests == []


async def test_other_tasks_are_refused(adapter: TorchServeAdapter) -> None:
    with pytest.raises(InvalidRequest, match="'ts' backend does not do 'chat'"):
        await adapter.predict(InferRequest("chat", "resnet", {"messages": []}))


# -- errors ----------------------------------------------------------------------------------


async def test_no_worker_free_is_a_503_with_retry_after(adapter: TorchServeAdapter) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        await adapter.predict(classify("busy"))
    assert caught.value.status == 503
    assert caught.value.headers["Retry-After"] == "1"
    assert "Backend 'ts' is unavailable: HTTP 503: Model \"busy\" has no worker" in str(
        caught.value
    )


async def test_the_handlers_own_400_is_the_clients_error(adapter: TorchServeAdapter) -> None:
    with pytest.raises(InvalidRequest, match=r"^The file is not a JPEG image\.$"):
        await adapter.predict(classify("picky"))


async def test_a_body_too_large_for_torchserve_is_a_413(adapter: TorchServeAdapter) -> None:
    with pytest.raises(PayloadTooLarge, match="'ts' refused the body as too large"):
        await adapter.predict(classify("huge"))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("missing", "Backend 'ts' failed: HTTP 404: Model not found: missing"),
        ("broken", "Backend 'ts' failed: HTTP 500: Worker died."),
    ],
)
async def test_a_missing_model_or_a_server_error_is_a_502_naming_the_backend(
    adapter: TorchServeAdapter, model: str, message: str
) -> None:
    with pytest.raises(BackendError) as caught:
        await adapter.predict(classify(model))
    assert (caught.value.status, str(caught.value)) == (502, message)


async def test_an_unreachable_server_is_a_503_and_a_slow_one_a_504() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    def stall(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(BackendUnavailable, match="'ts' is unavailable: ConnectError"):
        await adapter_of(refuse).predict(classify("resnet"))
    slow = TorchServeAdapter(
        "ts",
        httpx.AsyncClient(transport=httpx.MockTransport(stall), timeout=3.0),
        management=httpx.AsyncClient(transport=httpx.MockTransport(stall)),
    )
    with pytest.raises(BackendTimeout, match="'ts' did not answer within 3 s"):
        await slow.predict(classify("resnet"))
    assert await adapter_of(refuse).health() is False
    assert await adapter_of(refuse).model_ready("resnet", "") is False


# -- management API: metadata, readiness; health ----------------------------------------------


async def test_metadata_is_data_in_output_out_once_torchserve_has_the_model(
    adapter: TorchServeAdapter, server: FakeTorchServe
) -> None:
    meta = await adapter.metadata("upper", "")
    assert (meta.platform, meta.versions) == ("torchserve", ("1.0",))
    assert [(s.name, s.datatype, s.shape) for s in (*meta.inputs, *meta.outputs)] == [
        ("data", "BYTES", (1,)),
        ("output", "BYTES", (1,)),
    ]
    assert str(server.requests[-1].url) == "http://ts:8081/models/upper"
    with pytest.raises(BackendError, match="HTTP 404: Model version: 2 does not exist"):
        await adapter.metadata("upper", "2")


async def test_a_model_is_ready_while_a_worker_is(
    adapter: TorchServeAdapter, server: FakeTorchServe
) -> None:
    assert await adapter.model_ready("upper", "1.0") is True
    assert await adapter.model_ready("nothing", "") is False
    server.ready = False
    assert await adapter.model_ready("upper", "") is False
    assert await adapter.health() is True
    assert server.requests[-1].url.path == "/ping"


# -- configuration ------------------------------------------------------------------------------


def routing(**models: dict[str, Any]) -> RoutingSettings:
    return RoutingSettings.model_validate(
        {
            "backends": {"ts": {"kind": "torchserve", "url": "http://10.0.0.8:8080",
                                "management_port": 9081}},
            "models": models,
        }
    )  # fmt: skip


def test_its_models_say_their_kind() -> None:
    registry = Registry.from_settings(
        routing(
            resnet={"backend": "ts", "kind": "image"}, upper={"backend": "ts", "kind": "tensor"}
        ),
        [],
    )
    assert registry.kind_of("resnet") == "image"
    assert registry.kind_of("upper") == "tensor"
    with pytest.raises(ValueError, match="model 'm': a torchserve backend's model says its kind"):
        Registry.from_settings(routing(m={"backend": "ts"}), [])


def test_a_kind_that_is_not_the_backends_is_refused() -> None:
    settings = RoutingSettings.model_validate(
        {"backends": {"t": {"kind": "triton", "url": "h:8001"}},
         "models": {"m": {"backend": "t", "kind": "image"}}}
    )  # fmt: skip
    with pytest.raises(ValueError, match="backend 't' serves tensor models, not image"):
        Registry.from_settings(settings, [])


def test_an_address_that_is_not_a_url_is_refused() -> None:
    with pytest.raises(ValueError, match="TorchServe's inference API"):
        RoutingSettings.model_validate(
            {"backends": {"ts": {"kind": "torchserve", "url": "10.0.0.8:8080"}}}
        )


async def test_the_router_calls_its_management_api_on_the_management_port() -> None:
    router = build_router(
        routing(upper={"backend": "ts", "kind": "tensor"}), bundled={}, bundled_routes=[]
    )
    backend = router.backends["ts"]
    (endpoint,) = backend.pool.endpoints
    adapter = endpoint.adapter
    assert isinstance(adapter, TorchServeAdapter)
    assert str(adapter._management.base_url) == "http://10.0.0.8:9081"
    assert backend.kind == "torchserve"
    await router.aclose()
