"""The Triton adapter over a fake transport, and each transport's error mapping."""

from __future__ import annotations

from typing import Any

import aiohttp
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from gateway.adapters.base import InferRequest
from gateway.adapters.triton import TritonAdapter
from gateway.adapters.triton_transport import GrpcTransport, HttpTransport
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
)
from gateway.tensors import ModelMetadata, Tensor, TensorRequest, TensorSpec
from tests.fakes import FakeTriton

SCALE = ModelMetadata(
    "scale",
    "python",
    ("1",),
    (TensorSpec("INPUT0", "FP32", (-1, -1)),),
    (TensorSpec("OUTPUT0", "FP32", (-1, -1)),),
)


@pytest.fixture
def triton() -> FakeTriton:
    return FakeTriton({"scale": (SCALE, lambda x: {"OUTPUT0": x["INPUT0"] * 2 + 1})})


@pytest.fixture
def adapter(triton: FakeTriton) -> TritonAdapter:
    return TritonAdapter("triton", triton)


def infer(*inputs: Tensor, outputs: tuple[str, ...] = (), **parameters: Any) -> InferRequest:
    return InferRequest("infer", "scale", TensorRequest(inputs, outputs, parameters=parameters))


def fp32(name: str, data: Any) -> Tensor:
    return Tensor(name, "FP32", np.asarray(data, dtype=np.float32))


async def test_infer_returns_the_model_outputs(adapter: TritonAdapter) -> None:
    result = await adapter.predict(infer(fp32("INPUT0", [[1, 2], [3, 4]])))
    (out,) = result.body
    assert (out.name, out.datatype) == ("OUTPUT0", "FP32")
    np.testing.assert_array_equal(out.data, [[3, 5], [7, 9]])


async def test_metadata_is_discovered_once(adapter: TritonAdapter, triton: FakeTriton) -> None:
    for _ in range(3):
        await adapter.predict(infer(fp32("INPUT0", [[1.0]])))
    assert triton.metadata_calls == 1
    assert await adapter.metadata("scale", "") == SCALE


async def test_model_parameters_pass_and_protocol_controls_are_dropped(
    adapter: TritonAdapter, triton: FakeTriton
) -> None:
    await adapter.predict(
        infer(fp32("INPUT0", [[1.0]]), sleep_s=0.2, binary_data_output=True, triton_x=1)
    )
    assert triton.calls[0][3] == {"sleep_s": 0.2}


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (infer(fp32("INPUT9", [[1.0]])), "Unknown input 'INPUT9'; the model takes 'INPUT0'"),
        (
            infer(Tensor("INPUT0", "INT64", np.ones((1, 1), np.int64))),
            "Input 'INPUT0' must be FP32, got INT64",
        ),
        (infer(fp32("INPUT0", [1.0, 2.0])), "must have shape [-1, -1]"),
        (infer(fp32("INPUT0", [[1.0]]), outputs=("OUT",)), "Unknown output 'OUT'"),
    ],
)
async def test_requests_that_do_not_fit_the_metadata_are_400(
    adapter: TritonAdapter, triton: FakeTriton, request_: InferRequest, message: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        await adapter.predict(request_)
    assert message in err.value.message
    assert triton.calls == []


async def test_health_is_false_when_the_server_is_down(
    adapter: TritonAdapter, triton: FakeTriton
) -> None:
    assert await adapter.health()
    triton.down = True
    assert not await adapter.health()
    assert not await adapter.model_ready("scale", "")
    with pytest.raises(BackendUnavailable):
        await adapter.predict(infer(fp32("INPUT0", [[1.0]])))


async def test_close_closes_the_client(adapter: TritonAdapter, triton: FakeTriton) -> None:
    await adapter.aclose()
    assert triton.closed


class FakeClient:
    """Stands in for a tritonclient aio client: every call raises the given error."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def get_model_metadata(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error

    async def infer(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("StatusCode.UNAVAILABLE", BackendUnavailable),
        ("StatusCode.DEADLINE_EXCEEDED", BackendTimeout),
        ("StatusCode.INVALID_ARGUMENT", InvalidRequest),
        ("StatusCode.INTERNAL", BackendError),
    ],
)
async def test_grpc_status_codes_map_to_gateway_errors(
    status: str, expected: type[GatewayError]
) -> None:
    transport = GrpcTransport(
        "triton", FakeClient(InferenceServerException("boom", status=status)), timeout_s=1
    )
    with pytest.raises(expected) as err:
        await transport.infer("m", "", [fp32("x", [1.0])], [], {})
    assert type(err.value) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (InferenceServerException("bad shape", status="400"), InvalidRequest),
        (InferenceServerException("model failed", status="500"), BackendError),
        (InferenceServerException("busy", status="503"), BackendUnavailable),
        (aiohttp.ServerDisconnectedError(), BackendUnavailable),
        (ConnectionRefusedError("refused"), BackendUnavailable),
        (TimeoutError(), BackendTimeout),
    ],
)
async def test_http_errors_map_to_gateway_errors(
    error: BaseException, expected: type[GatewayError]
) -> None:
    transport = HttpTransport("triton", FakeClient(error), timeout_s=1)
    with pytest.raises(expected) as err:
        await transport.metadata("m", "")
    assert type(err.value) is expected
    if isinstance(err.value, BackendError):
        assert err.value.backend == "triton"


# -- what differs in other KServe V2 servers (MLServer, tests/integration/test_routing_mlserver.py)


async def test_a_model_that_declares_no_tensors_leaves_them_to_the_server() -> None:
    bare = ModelMetadata("bare", "", (), (), ())
    fake = FakeTriton({"bare": (bare, lambda x: {})})
    adapter = TritonAdapter("mlserver", fake)
    request = TensorRequest((fp32("anything", [[1.0]]),))
    await adapter.predict(InferRequest("infer", "bare", request))
    assert fake.calls[0][2][0].name == "anything"


class RecordingClient:
    """A tritonclient aio HTTP client whose server lists `extensions`; infer records its
    inputs and outputs, then fails."""

    def __init__(self, extensions: list[str]) -> None:
        self.extensions = extensions
        self.sent: list[tuple[Any, Any]] = []

    async def get_server_metadata(self, *args: Any, **kwargs: Any) -> Any:
        return {"name": "server", "extensions": self.extensions}

    async def infer(self, model: str, inputs: Any, **kwargs: Any) -> Any:
        self.sent.append((inputs, kwargs["outputs"], kwargs["headers"]))
        raise InferenceServerException("recorded", status="500")


@pytest.mark.parametrize(("extensions", "binary"), [(["binary_tensor_data"], True), ([], False)])
async def test_http_tensors_go_binary_only_to_a_server_that_takes_them(
    extensions: list[str], binary: bool
) -> None:
    client = RecordingClient(extensions)
    transport = HttpTransport("mlserver", client, timeout_s=1)
    for _ in range(2):
        with pytest.raises(BackendError):
            await transport.infer("m", "", [fp32("x", [1.0])], ["y"], {})
    for inputs, outputs, headers in client.sent:
        assert (inputs[0]._get_binary_data() is not None) is binary
        assert outputs[0]._get_tensor()["parameters"].get("binary_data", False) is binary
        assert binary or headers == {"Content-Type": "application/json"}


async def test_an_error_body_that_is_a_traceback_is_cut_to_its_last_line() -> None:
    body = (
        'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: X has 3 features\n'
    )
    error = InferenceServerException("could not decode", status="500", debug_details=body)
    transport = HttpTransport("mlserver", FakeClient(error), timeout_s=1)
    with pytest.raises(BackendError) as err:
        await transport.metadata("m", "")
    assert err.value.message.endswith("HTTP 500: ValueError: X has 3 features")
