"""The Triton adapter against a second KServe V2 implementation: a real MLServer (Seldon) serving
two scikit-learn models trained at test time (tests/servers/mlserver_models.py), routed over HTTP
(`mlserver-http`) and gRPC (`mlserver-grpc`), and tritonclient over the bundle's /v2 and gRPC port.

What differs from Triton and is handled by the adapter: MLServer takes no binary tensors over
HTTP (tensors go as JSON), lists no versions and, for a model whose settings declare none, no
inputs or outputs (then the server checks them), and answers a failing model with a plain-text
traceback over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import RoutingStack
from tests.servers.mlserver_models import COEF, reference_regress

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PROTOCOLS = ["http", "grpc"]  # the backend's: the gateway reaches MLServer over either
X = np.array([[1.0, 0.0, 0.0, 0.0], [0.5, -2.0, 3.0, 1.25], [0.0, 0.0, 0.0, 0.0]])


@pytest.fixture(scope="module")
def stack(routing_stack: RoutingStack) -> RoutingStack:
    return routing_stack


@pytest.fixture
def gateway_grpc(stack: RoutingStack) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{stack.config['gateway']['grpc_port']}")
    yield client
    client.close()


@pytest.fixture
def direct(stack: RoutingStack) -> Iterator[httpclient.InferenceServerClient]:
    """tritonclient straight to MLServer, JSON tensors (MLServer takes no binary ones)."""
    client = httpclient.InferenceServerClient(stack.mlserver.http_url, network_timeout=60)
    yield client
    client.close()


def http_input(name: str, array: np.ndarray, *, binary: bool = True) -> httpclient.InferInput:
    wire = httpclient.InferInput(name, list(array.shape), "FP64")
    wire.set_data_from_numpy(array, binary_data=binary)
    return wire


def grpc_input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    wire = grpcclient.InferInput(name, list(array.shape), "FP64")
    wire.set_data_from_numpy(array)
    return wire


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_health_and_metadata_as_mlserver_declares_them(
    gateway: httpclient.InferenceServerClient, protocol: str
) -> None:
    assert gateway.is_model_ready(f"ml-regress-{protocol}")
    assert gateway.is_model_ready(f"ml-regress-{protocol}", "1")
    meta = gateway.get_model_metadata(f"ml-regress-{protocol}")
    assert meta["name"] == f"ml-regress-{protocol}" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP64", "shape": [-1, len(COEF)]}]
    assert meta["outputs"] == [{"name": "predict", "datatype": "FP64", "shape": [-1, 1]}]
    bare = gateway.get_model_metadata(f"ml-classes-{protocol}")
    assert (bare["inputs"], bare["outputs"]) == ([], [])  # MLServer declares none for it


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("binary", [True, False])
def test_regress_gives_the_fitted_function_through_tritonclient_http(
    gateway: httpclient.InferenceServerClient, protocol: str, binary: bool
) -> None:
    outputs = [httpclient.InferRequestedOutput("predict", binary_data=binary)]
    result = gateway.infer(
        f"ml-regress-{protocol}", [http_input("x", X, binary=binary)], outputs=outputs
    )
    np.testing.assert_allclose(result.as_numpy("predict"), reference_regress(X.tolist()))
    assert result.get_output("predict")["datatype"] == "FP64"
    versioned = gateway.infer(f"ml-regress-{protocol}", [http_input("x", X)], model_version="1")
    np.testing.assert_allclose(versioned.as_numpy("predict"), reference_regress(X.tolist()))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_regress_through_the_bundles_grpc_port(
    gateway_grpc: grpcclient.InferenceServerClient, protocol: str
) -> None:
    assert gateway_grpc.is_model_ready(f"ml-regress-{protocol}")
    result = gateway_grpc.infer(f"ml-regress-{protocol}", [grpc_input("x", X)], request_id="ml-1")
    np.testing.assert_allclose(result.as_numpy("predict"), reference_regress(X.tolist()))
    assert result.get_response().id == "ml-1"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_model_that_declares_nothing_answers_what_mlserver_computes(
    gateway: httpclient.InferenceServerClient,
    direct: httpclient.InferenceServerClient,
    protocol: str,
) -> None:
    wanted = ["predict_proba", "predict"]
    via = gateway.infer(
        f"ml-classes-{protocol}",
        [http_input("features", X)],  # any name: the server checks, not the gateway
        outputs=[httpclient.InferRequestedOutput(n) for n in wanted],
    )
    straight = direct.infer(
        "classes",
        [http_input("features", X, binary=False)],
        outputs=[httpclient.InferRequestedOutput(n, binary_data=False) for n in wanted],
    )
    np.testing.assert_array_equal(via.as_numpy("predict_proba"), straight.as_numpy("predict_proba"))
    np.testing.assert_array_equal(via.as_numpy("predict"), straight.as_numpy("predict"))
    assert via.get_output("predict")["datatype"] == "INT64"
    np.testing.assert_allclose(via.as_numpy("predict_proba").sum(axis=1), 1.0)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_bad_tensors_are_kserve_shaped_400s(
    gateway: httpclient.InferenceServerClient, protocol: str
) -> None:
    with pytest.raises(InferenceServerException, match="Unknown input 'WRONG'") as bad:
        gateway.infer(f"ml-regress-{protocol}", [http_input("WRONG", X)])  # the gateway's check
    assert bad.value.status() == "400"
    with pytest.raises(InferenceServerException, match="SKLearnModel only supports") as unknown:
        gateway.infer(  # MLServer's own refusal, passed on
            f"ml-classes-{protocol}",
            [http_input("features", X)],
            outputs=[httpclient.InferRequestedOutput("nope")],
        )
    assert unknown.value.status() == "400"
    with pytest.raises(InferenceServerException, match="no version '7'"):
        gateway.infer(f"ml-regress-{protocol}", [http_input("x", X)], model_version="7")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_failing_model_is_a_502_naming_the_backend_with_the_error_not_a_traceback(
    stack: RoutingStack, protocol: str
) -> None:
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 3], "data": [1, 2, 3]}]}
    r = httpx.post(f"{stack.url}/v2/models/ml-classes-{protocol}/infer", json=body, timeout=60)
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert f"Backend 'mlserver-{protocol}' failed" in error
    assert "X has 3 features, but LogisticRegression is expecting 4" in error
    assert "Traceback" not in error


def test_a_stopped_mlserver_is_a_quick_503_and_recovers(stack: RoutingStack) -> None:
    """Last in this module: MLServer stops, then starts again on the same ports."""
    body = {"inputs": [{"name": "x", "datatype": "FP64", "shape": [1, 4], "data": [1, 0, 0, 0]}]}

    def infer(protocol: str) -> tuple[httpx.Response, float]:
        started = time.monotonic()
        r = httpx.post(f"{stack.url}/v2/models/ml-regress-{protocol}/infer", json=body, timeout=60)
        return r, time.monotonic() - started

    stack.mlserver.stop()
    try:
        for protocol in PROTOCOLS:
            r, seconds = infer(protocol)
            assert r.status_code == 503, r.text
            assert f"'mlserver-{protocol}'" in r.json()["error"]
            assert seconds < 5.0, seconds  # refused, not waiting for the 10 s timeout
    finally:
        stack.mlserver.start()
    deadline = time.monotonic() + 60
    for protocol in PROTOCOLS:
        while (r := infer(protocol)[0]).status_code != 200 and time.monotonic() < deadline:
            time.sleep(float(r.headers.get("retry-after", "0.5")))
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == pytest.approx(reference_regress([[1, 0, 0, 0]])[0])
