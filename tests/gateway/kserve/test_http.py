"""KServe V2 routes in-process over a fake Triton and a fake image runner, driven with JSON and
with tritonclient's own request encoder and response parser (binary tensor extension)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from starlette.testclient import TestClient

from gateway.adapters.pixels import PixelTensorAdapter
from gateway.adapters.runner import VisionRunnerAdapter
from gateway.adapters.triton import TritonAdapter
from gateway.app import create_app, install
from gateway.routing.backend import Backend
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from gateway.tensors import ModelMetadata, TensorSpec
from settings import Settings
from tests.fakes import FakeAdapter, FakeTriton
from tests.gateway.fake_runners import LABELS, FakeVisionRunner, probabilities_for

SCALE = ModelMetadata(
    "scale", "python", ("1",),
    (TensorSpec("INPUT0", "FP32", (-1, -1)),), (TensorSpec("OUTPUT0", "FP32", (-1, -1)),),
)  # fmt: skip
NAMES = ModelMetadata(
    "names", "python", ("1",),
    (TensorSpec("IDS", "INT64", (-1, 1)),),
    (TensorSpec("LABEL", "BYTES", (-1, 1)), TensorSpec("DOUBLE", "INT64", (-1, 1))),
)  # fmt: skip
WORDS = np.array([b"zero", b"one", "zw\u00f6lf".encode()], dtype=object)


@pytest.fixture
def triton() -> FakeTriton:
    return FakeTriton(
        {
            "scale": (SCALE, lambda x: {"OUTPUT0": x["INPUT0"] * 2 + 1}),
            "names": (NAMES, lambda x: {"LABEL": WORDS[x["IDS"]], "DOUBLE": x["IDS"] * 2}),
        }
    )


@pytest.fixture
def client(triton: FakeTriton) -> Iterator[TestClient]:
    routes = [
        Route("scale-v", "tensor", "triton", "scale", versions=("1", "2")),
        Route("names", "tensor", "triton", "names"),
        Route("resnet", "image", "vision", "resnet"),
        Route("chat", "llm", "llm", "chat"),
    ]
    breaker = CircuitBreaker(failure_threshold=1, recovery_s=30)
    backends = {
        "triton": Backend(TritonAdapter("triton", triton), breaker=breaker, kind="triton"),
        "vision": Backend(
            PixelTensorAdapter(
                VisionRunnerAdapter(
                    "vision", FakeVisionRunner(), default_top_k=5, max_pixels=40_000_000
                )
            ),
            required=True,
        ),
        "llm": FakeAdapter("llm"),
    }
    app = create_app()
    install(app, settings=Settings(), router=Router(Registry(routes), backends))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def scale_request(data: list[list[float]], **extra: Any) -> dict[str, Any]:
    shape = [len(data), len(data[0])]
    return {
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": shape, "data": data}],
        **extra,
    }


def kserve_error(response: Any) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    return str(body["error"])


def test_server_metadata_live_and_ready(client: TestClient) -> None:
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    live, ready = client.get("/v2/health/live"), client.get("/v2/health/ready")
    assert (live.status_code, live.json()) == (200, {"live": True})  # the Open Inference
    assert (ready.status_code, ready.json()) == (200, {"ready": True})  # Protocol's bodies


def test_server_not_ready_is_503_with_ready_false() -> None:
    down = Backend(FakeAdapter("speech", healthy=False), required=True)
    app = create_app()
    install(app, settings=Settings(), router=Router(Registry([]), {"speech": down}))
    with TestClient(app) as client:
        r = client.get("/v2/health/ready")
        assert (r.status_code, r.json()) == (503, {"ready": False})
        assert client.get("/v2/health/live").json() == {"live": True}


def test_model_metadata_under_the_public_name(client: TestClient) -> None:
    r = client.get("/v2/models/scale-v")
    assert r.status_code == 200
    assert r.json() == {
        "name": "scale-v",
        "versions": ["1", "2"],
        "platform": "python",
        "inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, -1]}],
        "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, -1]}],
    }
    assert client.get("/v2/models/scale-v/versions/2").json()["name"] == "scale-v"


def test_image_runner_metadata_comes_from_its_info(client: TestClient) -> None:
    meta = client.get("/v2/models/resnet").json()
    assert meta["inputs"] == [
        {"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 28, 28]}
    ]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(LABELS)]}
    ]


def test_infer_with_json_tensors(client: TestClient, triton: FakeTriton) -> None:
    r = client.post(
        "/v2/models/scale-v/versions/2/infer", json=scale_request([[1, 2], [3, 4]], id="r1")
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "model_name": "scale-v",
        "model_version": "2",
        "id": "r1",
        "outputs": [{"name": "OUTPUT0", "datatype": "FP32", "shape": [2, 2], "data": [3, 5, 7, 9]}],
    }
    model, version, _, _ = triton.calls[0]
    assert (model, version) == ("scale", "2")  # the upstream name, the version passed on


def test_infer_with_tritonclient_binary_tensors(client: TestClient) -> None:
    ids = np.array([[0], [2], [1]], dtype=np.int64)
    tensor = httpclient.InferInput("IDS", list(ids.shape), "INT64")
    tensor.set_data_from_numpy(ids, binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    r = client.post(
        "/v2/models/names/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(json_size)},
    )
    assert r.status_code == 200, r.text
    result = httpclient.InferenceServerClient.parse_response_body(
        r.content, header_length=int(r.headers["Inference-Header-Content-Length"])
    )
    assert result.as_numpy("LABEL").reshape(-1).tolist() == [b"zero", "zw\u00f6lf".encode(), b"one"]
    np.testing.assert_array_equal(result.as_numpy("DOUBLE"), ids * 2)


def test_outputs_can_be_asked_for_one_by_one_in_json_or_binary(client: TestClient) -> None:
    ids = {"name": "IDS", "datatype": "INT64", "shape": [2, 1], "data": [1, 2]}
    outputs = [{"name": "LABEL"}, {"name": "DOUBLE", "parameters": {"binary_data": True}}]
    r = client.post("/v2/models/names/infer", json={"inputs": [ids], "outputs": outputs})
    assert r.status_code == 200, r.text
    result = httpclient.InferenceServerClient.parse_response_body(
        r.content, header_length=int(r.headers["Inference-Header-Content-Length"])
    )
    assert result.get_output("LABEL")["data"] == ["one", "zw\u00f6lf"]
    np.testing.assert_array_equal(result.as_numpy("DOUBLE"), [[2], [4]])


def test_image_runner_takes_pixel_tensors(client: TestClient) -> None:
    pixels = np.random.default_rng(0).random((2, 3, 28, 28), dtype=np.float32)
    tensor = httpclient.InferInput("pixel_values", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor])
    r = client.post(
        "/v2/models/resnet/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(json_size)},
    )
    assert r.status_code == 200, r.text
    result = httpclient.InferenceServerClient.parse_response_body(
        r.content, header_length=int(r.headers["Inference-Header-Content-Length"])
    )
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities_for(pixels))


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v2/models/nope/infer", scale_request([[1.0]]), 404, "'nope' does not exist"),
        ("/v2/models/chat/infer", scale_request([[1.0]]), 400, "'chat' is of kind 'llm'"),
        ("/v2/models/scale-v/versions/9/infer", scale_request([[1.0]]), 404, "no version '9'"),
        ("/v2/models/scale-v/infer", {"inputs": []}, 400, "inputs"),
        ("/v2/models/scale-v/infer", {"inputs": [{"name": "INPUT0"}]}, 400, "datatype"),
        (
            "/v2/models/scale-v/infer",
            {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [2, 2], "data": [1]}]},
            400,
            "1 values do not fill shape [2, 2]",
        ),
        (
            "/v2/models/scale-v/infer",
            {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1], "data": ["x"]}]},
            400,
            "Input 'INPUT0'",
        ),
        ("/v2/models/scale-v/infer", scale_request([[1.0]]) | {"outputs": [{"name": "Z"}]}, 400,
         "Unknown output 'Z'"),
        ("/v2/models/resnet/infer", scale_request([[1.0]]), 400, "Unknown input 'INPUT0'"),
    ],
)  # fmt: skip
def test_errors_come_back_in_kserve_shape(
    client: TestClient, path: str, body: dict[str, Any], status: int, message: str
) -> None:
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in kserve_error(r)


def test_json_nested_100000_levels_deep_is_400_in_kserve_shape(client: TestClient) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for part in (b'"data":' + deep, b'"data":[1],"parameters":{"p":' + deep + b"}"):
        body = b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1],' + part + b"}]}"
        r = client.post("/v2/models/scale-v/infer", content=body)
        assert r.status_code == 400, r.text
        assert kserve_error(r).startswith("Not a KServe V2 inference request: body: Invalid JSON")
        assert "recursion limit exceeded" in kserve_error(r)


def test_bad_binary_framing_is_400(client: TestClient) -> None:
    head = (
        b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,2],'
        b'"parameters":{"binary_data_size":8}}]}'
    )
    r = client.post(
        "/v2/models/scale-v/infer",
        content=head + b"\0" * 4,
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert r.status_code == 400 and "binary_data_size" in kserve_error(r)
    r = client.post(
        "/v2/models/scale-v/infer", content=b"{}", headers={"Inference-Header-Content-Length": "99"}
    )
    assert r.status_code == 400 and "Inference-Header-Content-Length" in kserve_error(r)


def test_backend_down_opens_its_breaker_then_503_with_retry_after(
    client: TestClient, triton: FakeTriton
) -> None:
    triton.down = True
    r = client.post("/v2/models/scale-v/infer", json=scale_request([[1.0]]))
    assert r.status_code == 503 and "Backend 'triton' is unavailable" in kserve_error(r)
    r = client.post("/v2/models/scale-v/infer", json=scale_request([[1.0]]))
    assert r.status_code == 503 and r.headers["retry-after"] == "30"
    assert "circuit breaker is open" in kserve_error(r)
    assert client.get("/v2/models/scale-v/ready").status_code == 503
    assert client.get("/v2/health/ready").status_code == 200  # triton is not required


def test_model_ready(client: TestClient, triton: FakeTriton) -> None:
    r = client.get("/v2/models/names/ready")
    assert r.status_code == 200 and r.json() == {"name": "names", "ready": True}
    assert client.get("/v2/models/resnet/ready").status_code == 200
    triton.down = True
    assert client.get("/v2/models/names/ready").status_code == 503


def test_status_lists_backends_with_breakers_and_models(
    client: TestClient, triton: FakeTriton
) -> None:
    triton.down = True
    client.post("/v2/models/scale-v/infer", json=scale_request([[1.0]]))
    status = client.get("/status").json()
    backends = {b["name"]: b for b in status["backends"]}
    assert status["ready"] is True
    assert backends["triton"]["breaker"]["state"] == "open" and not backends["triton"]["ready"]
    assert backends["vision"]["ready"] and backends["vision"]["required"]
    models = {m["name"]: m for m in status["models"]}
    assert models["scale-v"]["upstream"] == "scale" and models["scale-v"]["versions"] == ["1", "2"]
