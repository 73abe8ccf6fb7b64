"""The tfserving backend against a real server of TF Serving's `:predict` REST format: KServe's own
model server (V1 protocol; tests/servers/kserve_model.py), in the row format (`tfs`, the default)
and the columnar one (`tfs-columnar`), answered on the bundle's /v2 to tritonclient (HTTP and
gRPC), httpx and curl.

Not verified here, since KServe's V1 server does not serve them as TF Serving does: the status
body (`model_version_status`; KServe answers `{"name", "ready"}`, which the adapter also reads),
the signature metadata (KServe has no `/metadata`: its models declare nothing) and versioned
paths (`/versions/{v}`). The unit tests (tests/gateway/adapters/test_tfserving.py) cover those in
TF Serving's own shapes.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import RoutingStack
from tests.servers.kserve_model import FEATURES, reference_linear

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

FORMATS = {"row": "predictions", "columnar": "outputs"}  # the answer's field, naming its tensor
X = np.array([[1.0, 0.0, 0.0], [0.5, -2.0, 3.0]], dtype=np.float32)


def model(name: str, fmt: str) -> str:
    return f"tfs-{name}" if fmt == "row" else f"tfs-{name}-columnar"


@pytest.fixture(scope="module")
def stack(routing_stack: RoutingStack) -> RoutingStack:
    return routing_stack


def fp32(array: np.ndarray, name: str = "x") -> httpclient.InferInput:
    wire = httpclient.InferInput(name, list(array.shape), "FP32")
    wire.set_data_from_numpy(array)
    return wire


def strings(*items: str, name: str = "tag") -> httpclient.InferInput:
    wire = httpclient.InferInput(name, [len(items)], "BYTES")
    wire.set_data_from_numpy(np.array([s.encode() for s in items], dtype=object))
    return wire


def infer_json(url: str, name: str, inputs: list[dict[str, Any]]) -> httpx.Response:
    return httpx.post(f"{url}/v2/models/{name}/infer", json={"inputs": inputs}, timeout=60)


def test_ready_and_metadata_through_tritonclient(gateway: httpclient.InferenceServerClient) -> None:
    for fmt in FORMATS:
        assert gateway.is_model_ready(model("linear", fmt))
    meta = gateway.get_model_metadata("tfs-linear")
    assert meta["name"] == "tfs-linear" and meta["platform"] == "tensorflow_serving"
    assert (meta["inputs"], meta["outputs"]) == ([], [])  # KServe's V1 serves no signature


@pytest.mark.parametrize("fmt", FORMATS)
def test_linear_through_tritonclient_http(
    gateway: httpclient.InferenceServerClient, fmt: str
) -> None:
    result = gateway.infer(model("linear", fmt), [fp32(X)])
    output = FORMATS[fmt]  # an unnamed answer is named after its field
    assert result.get_output(output)["datatype"] == "FP64"  # JSON floats
    np.testing.assert_allclose(result.as_numpy(output), reference_linear(X))


@pytest.mark.parametrize("fmt", FORMATS)
def test_named_inputs_and_outputs_with_strings(
    gateway: httpclient.InferenceServerClient, fmt: str
) -> None:
    result = gateway.infer(model("tagged", fmt), [fp32(X), strings("cat", "dog")])
    np.testing.assert_allclose(result.as_numpy("y"), reference_linear(X))
    assert [t.decode() for t in result.as_numpy("tag")] == ["CAT", "DOG"]
    only = gateway.infer(
        model("tagged", fmt),
        [fp32(X), strings("a", "b")],
        outputs=[httpclient.InferRequestedOutput("tag")],
    )
    assert [o["name"] for o in only.get_response()["outputs"]] == ["tag"]


def test_linear_through_the_bundles_grpc_port(stack: RoutingStack) -> None:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.config['gateway']['grpc_port']}")
    wire = grpcclient.InferInput("x", list(X.shape), "FP32")
    wire.set_data_from_numpy(X)
    try:
        result = client.infer("tfs-linear", [wire])
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("predictions"), reference_linear(X))


def test_json_with_curl(stack: RoutingStack) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]}
    out = subprocess.run(
        ["curl", "-sS", "--max-time", "60", "-H", "Content-Type: application/json",
         "-d", json.dumps(body), f"{stack.url}/v2/models/tfs-linear-columnar/infer"],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    answer = json.loads(out.stdout)
    assert answer["model_name"] == "tfs-linear-columnar"
    assert answer["outputs"] == [
        {"name": "outputs", "datatype": "FP64", "shape": [1, 2],
         "data": reference_linear(np.array([[1, 2, 3]])).reshape(-1).tolist()},
    ]  # fmt: skip


def test_bad_tensors_are_kserve_shaped_400s(stack: RoutingStack) -> None:
    short = [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]
    r = infer_json(stack.url, "tfs-linear", short)  # refused by the model server
    assert r.status_code == 400 and set(r.json()) == {"error"}
    assert f"expected rows of {FEATURES} numbers" in r.json()["error"]
    uneven = [
        {"name": "x", "datatype": "FP32", "shape": [2, 3], "data": [0] * 6},
        {"name": "tag", "datatype": "BYTES", "shape": [1], "data": ["a"]},
    ]
    r = infer_json(stack.url, "tfs-tagged", uneven)  # the row format cannot carry them
    assert r.status_code == 400 and "share its first (batch) dimension" in r.json()["error"]
    r = infer_json(stack.url, "tfs-tagged-columnar", uneven)  # the columnar format can
    assert r.status_code == 200, r.text
    assert [o["shape"] for o in r.json()["outputs"]] == [[2, 2], [1]]


def test_errors_reach_tritonclient(gateway: httpclient.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException, match="no version '2'") as err:
        gateway.infer("tfs-linear", [fp32(X)], model_version="2")
    assert err.value.status() == "404"


def test_a_backend_with_nothing_listening_is_a_quick_503_naming_it(stack: RoutingStack) -> None:
    x = [{"name": "x", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]
    started = time.monotonic()
    r = infer_json(stack.url, "tfs-dead-linear", x)
    seconds = time.monotonic() - started
    assert r.status_code == 503, r.text
    assert "Backend 'tfs-dead'" in r.json()["error"]
    assert seconds < 3.0, seconds
    status = httpx.get(f"{stack.url}/status", timeout=30).json()
    health = {b["name"]: b["healthy"] for b in status["backends"]}
    assert health["tfs"] and health["tfs-columnar"] and not health["tfs-dead"]
