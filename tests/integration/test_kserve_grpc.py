"""KServe V2 over gRPC on the real bundle: `tritonclient.grpc` against the gateway's gRPC port
(`gateway.grpc_port`, a free port in the routing stack's config) as a Triton user would, for the
bundled image and speech runners and a model on a real Triton server; each answer compared with
the same request over HTTP (/v2, /v1) or straight to Triton."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import httpx
import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import RoutingStack
from tests.media import audio_bytes, tone
from tests.servers.memory import PeakGrowth
from tests.servers.triton_models import CLASSIFY_SHAPE, reference_classify, reference_scale

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SPEECH = audio_bytes(tone(35.0, 440, 22_050), 22_050, "WAV")  # as tests/integration/test_speech.py


@pytest.fixture(scope="module")
def stack(routing_stack: RoutingStack) -> RoutingStack:
    return routing_stack


@pytest.fixture(scope="module")
def grpc_url(stack: RoutingStack) -> str:
    return f"127.0.0.1:{stack.config['gateway']['grpc_port']}"


@pytest.fixture
def gateway(grpc_url: str) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(grpc_url)
    yield client
    client.close()


@pytest.fixture
def http(stack: RoutingStack) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(
        stack.url.removeprefix("http://"), network_timeout=120
    )
    yield client
    client.close()


def fp32(name: str, array: np.ndarray) -> grpcclient.InferInput:
    wire = grpcclient.InferInput(name, list(array.shape), "FP32")
    wire.set_data_from_numpy(array)
    return wire


def audio(*files: bytes) -> grpcclient.InferInput:
    wire = grpcclient.InferInput("audio", [len(files)], "BYTES")
    wire.set_data_from_numpy(np.array(files, dtype=object))
    return wire


def test_server_live_ready_and_metadata(gateway: grpcclient.InferenceServerClient) -> None:
    assert gateway.is_server_live() and gateway.is_server_ready()
    assert gateway.get_server_metadata().name == "serving-bundle"
    for model in ("scale", "classify", "demo-resnet", "demo-whisper"):
        assert gateway.is_model_ready(model), model
    with pytest.raises(InferenceServerException) as err:
        gateway.get_model_metadata("nope")
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "demo-whisper" in str(err.value.message())


def test_resnet_over_grpc_agrees_with_v2_over_http(
    gateway: grpcclient.InferenceServerClient, http: httpclient.InferenceServerClient
) -> None:
    meta = gateway.get_model_metadata("demo-resnet")
    (spec,) = meta.inputs
    assert (spec.name, spec.datatype, spec.shape[0]) == ("pixel_values", "FP32", -1)
    pixels = np.random.default_rng(3).random((2, *spec.shape[1:]), dtype=np.float32)
    via_grpc = gateway.infer("demo-resnet", [fp32("pixel_values", pixels)], client_timeout=120)
    wire = httpclient.InferInput("pixel_values", list(pixels.shape), "FP32")
    wire.set_data_from_numpy(pixels, binary_data=True)
    via_http = http.infer("demo-resnet", [wire])
    probabilities = via_grpc.as_numpy("probabilities")
    assert probabilities.shape == (2, meta.outputs[0].shape[1])
    np.testing.assert_allclose(
        probabilities, via_http.as_numpy("probabilities"), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)


def test_whisper_over_grpc_transcribes_like_the_openai_route(
    stack: RoutingStack, gateway: grpcclient.InferenceServerClient
) -> None:
    meta = gateway.get_model_metadata("demo-whisper")
    assert [(t.name, t.datatype) for t in meta.inputs] == [
        ("audio", "BYTES"),
        ("language", "BYTES"),
        ("task", "BYTES"),
    ]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("text", "BYTES")]
    english = gateway.infer(
        "demo-whisper", [audio(SPEECH)], parameters={"language": "en"}, client_timeout=240
    )
    (text,) = [t.decode() for t in english.as_numpy("text").tolist()]
    r = httpx.post(
        f"{stack.url}/v1/audio/transcriptions",
        files={"file": ("speech.wav", SPEECH, "audio/wav")},
        data={"model": "demo-whisper", "language": "en"},
        timeout=240,
    )
    assert r.status_code == 200, r.text
    assert text and text == r.json()["text"]  # greedy decoding: the same words either way
    both = gateway.infer(
        "demo-whisper", [audio(SPEECH, SPEECH)], parameters={"language": "de"}, client_timeout=240
    )
    german = [t.decode() for t in both.as_numpy("text").tolist()]
    assert german[0] == german[1] and german[0] != text  # the language reaches the model


def test_triton_model_over_grpc_gives_the_numbers_triton_computes(
    stack: RoutingStack, gateway: grpcclient.InferenceServerClient
) -> None:
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    via = gateway.infer("scale", [fp32("INPUT0", x)], model_version="1", request_id="grpc-1")
    direct = grpcclient.InferenceServerClient(stack.triton.grpc_url)
    try:
        straight = direct.infer("scale", [fp32("INPUT0", x)])
    finally:
        direct.close()
    np.testing.assert_array_equal(via.as_numpy("OUTPUT0"), straight.as_numpy("OUTPUT0"))
    np.testing.assert_array_equal(via.as_numpy("OUTPUT0"), reference_scale(x))
    response = via.get_response()
    assert (response.model_name, response.model_version, response.id) == ("scale", "1", "grpc-1")
    pixels = np.random.default_rng(5).random((3, *CLASSIFY_SHAPE), dtype=np.float32)
    result = gateway.infer("classify", [fp32("pixel_values", pixels)])  # a BYTES output too
    want_probs, want_labels = reference_classify(pixels)
    np.testing.assert_allclose(result.as_numpy("probs"), want_probs, rtol=1e-5, atol=1e-6)
    assert [b.decode() for b in result.as_numpy("label").reshape(-1)] == want_labels


def test_100000_audio_elements_are_refused_at_once_and_cost_the_gateway_little(
    gateway: grpcclient.InferenceServerClient, gateway_worker: psutil.Process
) -> None:
    wire = audio(*[b"x"] * 100_000)  # raw_input_contents, as tritonclient sends BYTES
    with PeakGrowth(gateway_worker.pid) as grown:
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as err:
            gateway.infer("demo-whisper", [wire], client_timeout=60)
        took = time.monotonic() - started
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert err.value.message() == (
        "Input 'audio' has 100000 BYTES elements; the limit is 4096 per input."
    )
    assert took < 3, f"{took:.1f} s"
    assert grown.mib < 100, f"the gateway worker grew by {grown.mib:.0f} MiB"


async def test_aio_client_and_request_id_in_trailing_metadata(grpc_url: str) -> None:
    client = grpc_aio.InferenceServerClient(grpc_url)
    try:
        assert await client.is_server_ready()
        x = np.ones((1, 4), dtype=np.float32)
        result = await client.infer("scale", [fp32("INPUT0", x)])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), reference_scale(x))
    finally:
        await client.close()
    request = service_pb2.ModelInferRequest(model_name="scale")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.float32(2).tobytes())
    async with grpc.aio.insecure_channel(grpc_url) as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=(("x-request-id", "grpc-trail-1"),), timeout=60
        )
        response = await call
        assert dict(await call.trailing_metadata())["x-request-id"] == "grpc-trail-1"
    assert np.frombuffer(response.raw_output_contents[0], dtype="<f4").tolist() == [5.0]
