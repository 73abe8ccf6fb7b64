"""KServe V2 over gRPC in-process: the gateway's gRPC server over a fake Triton and fake image and
speech runners, called with the real `tritonclient.grpc` (sync) and `tritonclient.grpc.aio`
clients, and with the raw protobuf stub where tritonclient hides something (typed contents,
trailing metadata)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
from starlette.testclient import TestClient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.adapters.pixels import PixelTensorAdapter
from gateway.adapters.runner import SpeechRunnerAdapter, VisionRunnerAdapter
from gateway.adapters.transcript_tensors import TranscriptTensorAdapter
from gateway.adapters.triton import TritonAdapter
from gateway.app import create_app, install
from gateway.kserve.grpc import SERVICE, GrpcServer
from gateway.routing.backend import Backend
from gateway.routing.breaker import CircuitBreaker
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from gateway.scope.keys import digest
from gateway.scope.pipeline import PipelineParts
from lifecycle import DRAIN
from settings import AuthSettings, KeySettings, LimitSettings, Settings
from tests.fakes import FakeAdapter, FakeTriton
from tests.gateway.fake_runners import FakeSpeechRunner, FakeVisionRunner, probabilities_for
from tests.gateway.kserve.test_http import NAMES, SCALE, WORDS
from tests.media import audio_bytes, tone

T = TypeVar("T")

KEY, LIMITED_KEY, NARROW_KEY = "sk-team-a", "sk-tiny", "sk-narrow"
KEYS = [
    KeySettings(name="team-a", sha256=digest(KEY)),
    KeySettings(name="tiny", sha256=digest(LIMITED_KEY), rpm=1),
    KeySettings(name="narrow", sha256=digest(NARROW_KEY), models=["scale*"]),
]


class Stack:
    """The gRPC server on an event loop of its own thread (the sync client blocks its caller),
    over a router like the bundle's: a Triton backend, the image and the speech runner."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.triton = FakeTriton(
            {
                "scale": (SCALE, lambda x: {"OUTPUT0": x["INPUT0"] * 2 + 1}),
                "names": (NAMES, lambda x: {"LABEL": WORDS[x["IDS"]], "DOUBLE": x["IDS"] * 2}),
            }
        )
        self.vision_runner = FakeVisionRunner()
        self.speech_runner = FakeSpeechRunner()
        routes = [
            Route("scale-v", "tensor", "triton", "scale", versions=("1", "2")),
            Route("names", "tensor", "triton", "names"),
            Route("resnet", "image", "vision", "resnet"),
            Route("whisper", "speech", "speech", "whisper"),
            Route("chat", "llm", "llm", "chat"),
        ]
        breaker = CircuitBreaker(failure_threshold=1, recovery_s=30)
        self.router = Router(
            Registry(routes),
            {
                "triton": Backend(TritonAdapter("triton", self.triton), breaker=breaker),
                "vision": Backend(
                    PixelTensorAdapter(
                        VisionRunnerAdapter(
                            "vision", self.vision_runner, default_top_k=5, max_pixels=40_000_000
                        )
                    ),
                    required=True,
                ),
                "speech": TranscriptTensorAdapter(
                    SpeechRunnerAdapter("speech", self.speech_runner, max_seconds=600)
                ),
                "llm": FakeAdapter("llm"),
            },
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.parts = self.run(self._parts())
        self.server = GrpcServer(
            lambda: self.router, settings, lambda: self.parts, host="127.0.0.1", port=0
        )
        self.port = self.run(self.server.start())
        self.url = f"127.0.0.1:{self.port}"

    async def _parts(self) -> PipelineParts:
        return PipelineParts.from_settings(self.settings)

    def run(self, coro: Awaitable[T]) -> T:
        async def wrap() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrap(), self.loop).result(timeout=30)

    def close(self) -> None:
        self.run(self.server.stop(0))
        self.run(self.parts.aclose())
        self.run(self.router.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def stack() -> Iterator[Stack]:
    s = Stack(Settings())
    yield s
    s.close()


@pytest.fixture
def keyed() -> Iterator[Stack]:
    s = Stack(Settings(auth=AuthSettings(keys=KEYS)))
    yield s
    s.close()


@pytest.fixture
def client(stack: Stack) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(stack.url)
    yield c
    c.close()


@pytest.fixture
def access_lines() -> Iterator[list[dict[str, Any]]]:
    """The access log's JSON lines, as the pipeline writes them."""
    lines: list[dict[str, Any]] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(record.getMessage()))

    logger = logging.getLogger("gateway.access")
    handler, level = Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def fp32(name: str, array: np.ndarray) -> grpcclient.InferInput:
    wire = grpcclient.InferInput(name, list(array.shape), "FP32")
    wire.set_data_from_numpy(array)
    return wire


def bytes_input(name: str, items: list[bytes]) -> grpcclient.InferInput:
    wire = grpcclient.InferInput(name, [len(items)], "BYTES")
    wire.set_data_from_numpy(np.array(items, dtype=object))
    return wire


def status_of(call: Callable[[], Any]) -> tuple[str, str]:
    with pytest.raises(InferenceServerException) as err:
        call()
    return str(err.value.status()), str(err.value.message())


WAV_1S = audio_bytes(tone(1.0, 440, 16_000), 16_000)
WAV_2S = audio_bytes(tone(2.0, 440, 22_050), 22_050)  # resampled to the model's 16 kHz


# -- the server ----------------------------------------------------------------------------------


def test_live_ready_and_server_metadata(client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "serving-bundle" and meta["extensions"] == ["binary_tensor_data"]


def test_not_ready_while_a_required_runner_is_down(
    stack: Stack, client: grpcclient.InferenceServerClient
) -> None:
    stack.vision_runner.ready = False
    assert client.is_server_live() and not client.is_server_ready()
    assert not client.is_model_ready("resnet")
    assert client.is_model_ready("names")


def test_other_rpcs_are_unimplemented(client: grpcclient.InferenceServerClient) -> None:
    status, message = status_of(lambda: client.get_model_config("names"))
    assert status == "StatusCode.UNIMPLEMENTED" and "ModelConfig" in message
    status, _ = status_of(lambda: client.get_inference_statistics("names"))
    assert status == "StatusCode.UNIMPLEMENTED"


# -- metadata ------------------------------------------------------------------------------------


def test_model_metadata_under_the_public_name(client: grpcclient.InferenceServerClient) -> None:
    meta = client.get_model_metadata("scale-v", as_json=True)
    assert meta["name"] == "scale-v" and meta["versions"] == ["1", "2"]
    assert meta["platform"] == "python"
    assert meta["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "-1"]}]
    assert client.get_model_metadata("scale-v", "2").name == "scale-v"
    assert client.is_model_ready("scale-v", "1")


def test_runner_models_describe_their_tensors(client: grpcclient.InferenceServerClient) -> None:
    resnet = client.get_model_metadata("resnet")
    assert [(t.name, t.datatype, list(t.shape)) for t in resnet.inputs] == [
        ("pixel_values", "FP32", [-1, 3, 28, 28])
    ]
    whisper = client.get_model_metadata("whisper")
    assert [(t.name, t.datatype, list(t.shape)) for t in whisper.inputs] == [
        ("audio", "BYTES", [-1]),
        ("language", "BYTES", [-1]),
        ("task", "BYTES", [-1]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in whisper.outputs] == [
        ("text", "BYTES", [-1])
    ]


# -- infer ---------------------------------------------------------------------------------------


def test_infer_fp32_raw(stack: Stack, client: grpcclient.InferenceServerClient) -> None:
    x = np.array([[1, 2], [3, 4]], dtype=np.float32)
    result = client.infer("scale-v", [fp32("INPUT0", x)], model_version="2", request_id="r1")
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2 + 1)
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("scale-v", "2", "r1")
    model, version, _, _ = stack.triton.calls[0]
    assert (model, version) == ("scale", "2")
    assert stack.triton.request_ids == ["r1"]  # the request's id goes on to Triton


def test_infer_bytes_out_and_requested_outputs(client: grpcclient.InferenceServerClient) -> None:
    ids = np.array([[0], [2], [1]], dtype=np.int64)
    tensor = grpcclient.InferInput("IDS", list(ids.shape), "INT64")
    tensor.set_data_from_numpy(ids)
    result = client.infer("names", [tensor])
    assert result.as_numpy("LABEL").reshape(-1).tolist() == [b"zero", "zw\u00f6lf".encode(), b"one"]
    np.testing.assert_array_equal(result.as_numpy("DOUBLE"), ids * 2)
    only = client.infer("names", [tensor], outputs=[grpcclient.InferRequestedOutput("DOUBLE")])
    assert [o.name for o in only.get_response().outputs] == ["DOUBLE"]


def test_image_runner_takes_pixel_tensors(client: grpcclient.InferenceServerClient) -> None:
    pixels = np.random.default_rng(0).random((2, 3, 28, 28), dtype=np.float32)
    result = client.infer("resnet", [fp32("pixel_values", pixels)])
    np.testing.assert_allclose(result.as_numpy("probabilities"), probabilities_for(pixels))


def test_speech_model_turns_audio_files_into_text(
    stack: Stack, client: grpcclient.InferenceServerClient
) -> None:
    result = client.infer("whisper", [bytes_input("audio", [WAV_1S, WAV_2S])])
    assert result.as_numpy("text").tolist() == [b"1.0s - - 0", b"2.0s - - 0"]
    result = client.infer(
        "whisper",
        [bytes_input("audio", [WAV_1S])],
        parameters={"language": "de", "task": "translate"},
    )
    assert result.as_numpy("text").tolist() == [b"1.0s de - 0"]
    clips = stack.speech_runner.sent("transcribe")[-1]["clips"]
    assert [(c.language, c.task) for c in clips] == [("de", "translate")]
    per_file = client.infer(
        "whisper",
        [bytes_input("audio", [WAV_1S, WAV_1S]), bytes_input("language", [b"fr", b"de"])],
    )
    assert per_file.as_numpy("text").tolist() == [b"1.0s fr - 0", b"1.0s de - 0"]


def test_typed_contents_are_taken_too(stack: Stack) -> None:
    """Clients other than tritonclient may send InferTensorContents instead of raw bytes."""

    async def call() -> tuple[Any, Any]:
        async with grpc.aio.insecure_channel(stack.url) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = service_pb2.ModelInferRequest(model_name="scale-v", id="typed")
            tensor = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 3])
            tensor.contents.fp32_contents.extend([1.0, 2.0, 3.0])
            scale = await stub.ModelInfer(request)
            words = service_pb2.ModelInferRequest(model_name="whisper")
            words.inputs.add(
                name="audio", datatype="BYTES", shape=[1]
            ).contents.bytes_contents.append(WAV_1S)
            return scale, await stub.ModelInfer(words)

    scale, words = asyncio.run(call())
    assert [o.name for o in scale.outputs] == ["OUTPUT0"] and list(scale.outputs[0].shape) == [1, 3]
    np.testing.assert_array_equal(
        np.frombuffer(scale.raw_output_contents[0], dtype="<f4"), [3.0, 5.0, 7.0]
    )
    assert scale.id == "typed"
    assert words.raw_output_contents[0] == len(b"1.0s - - 0").to_bytes(4, "little") + b"1.0s - - 0"


# -- errors --------------------------------------------------------------------------------------


def test_unknown_model_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    x = np.ones((1, 1), dtype=np.float32)
    status, message = status_of(lambda: client.infer("nope", [fp32("INPUT0", x)]))
    assert status == "StatusCode.NOT_FOUND" and "'nope' does not exist" in message
    assert "scale-v" in message and "whisper" in message  # the models it does serve
    status, _ = status_of(lambda: client.get_model_metadata("nope"))
    assert status == "StatusCode.NOT_FOUND"
    status, _ = status_of(lambda: client.is_model_ready("nope"))
    assert status == "StatusCode.NOT_FOUND"


def test_a_model_kserve_does_not_serve_says_where_it_is_served(
    client: grpcclient.InferenceServerClient,
) -> None:
    x = np.ones((1, 1), dtype=np.float32)
    for call in (
        lambda: client.infer("chat", [fp32("INPUT0", x)]),
        lambda: client.get_model_metadata("chat"),
        lambda: client.is_model_ready("chat"),
    ):
        status, message = status_of(call)
        assert status == "StatusCode.INVALID_ARGUMENT", (status, message)
        assert "'chat' is of kind 'llm', served on /v1/chat/completions" in message, message


def test_unknown_version_is_not_found(client: grpcclient.InferenceServerClient) -> None:
    x = np.ones((1, 1), dtype=np.float32)
    status, message = status_of(lambda: client.infer("scale-v", [fp32("INPUT0", x)], "9"))
    assert status == "StatusCode.NOT_FOUND" and "no version '9'" in message


@pytest.mark.parametrize(
    ("model", "inputs", "message"),
    [
        ("scale-v", lambda: [fp32("INPUT0", np.ones(3, np.float32))], "must have shape [-1, -1]"),
        ("scale-v", lambda: [fp32("WRONG", np.ones((1, 1), np.float32))], "Unknown input 'WRONG'"),
        ("resnet", lambda: [fp32("pixel_values", np.ones((1, 3, 5, 5), np.float32))],
         "must have shape [-1, 3, 28, 28]"),
        ("whisper", lambda: [bytes_input("audio", [b"not audio"])], "audio"),
        ("whisper", lambda: [bytes_input("audio", [WAV_1S]), bytes_input("task", [b"sing"])],
         "Unknown task 'sing'"),
        ("whisper", lambda: [bytes_input("audio", [WAV_1S]), bytes_input("language", [b"xx"])],
         "Unsupported language 'xx'"),
    ],
)  # fmt: skip
def test_bad_requests_are_invalid_argument(
    client: grpcclient.InferenceServerClient,
    model: str,
    inputs: Callable[[], list[grpcclient.InferInput]],
    message: str,
) -> None:
    status, text = status_of(lambda: client.infer(model, inputs()))
    assert status == "StatusCode.INVALID_ARGUMENT", text
    assert message in text


def test_raw_contents_that_do_not_fill_the_shape_are_invalid(stack: Stack) -> None:
    async def call(request: Any) -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(stack.url) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
            return err.value

    short = service_pb2.ModelInferRequest(model_name="scale-v", raw_input_contents=[b"\0" * 4])
    short.inputs.add(name="INPUT0", datatype="FP32", shape=[2, 2])
    err = asyncio.run(call(short))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "4 bytes do not hold 4 FP32 values" in str(err.details())
    none = service_pb2.ModelInferRequest(model_name="scale-v")
    err = asyncio.run(call(none))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "inputs" in str(err.details())


def test_a_backend_that_is_down_is_unavailable(
    stack: Stack, client: grpcclient.InferenceServerClient
) -> None:
    stack.triton.down = True
    x = np.ones((1, 1), dtype=np.float32)
    status, message = status_of(lambda: client.infer("scale-v", [fp32("INPUT0", x)]))
    assert status == "StatusCode.UNAVAILABLE" and "Backend 'triton' is unavailable" in message
    status, message = status_of(lambda: client.infer("scale-v", [fp32("INPUT0", x)]))
    assert status == "StatusCode.UNAVAILABLE" and "circuit breaker is open" in message


def test_messages_over_the_request_limit_are_refused_by_grpc() -> None:
    s = Stack(Settings(limits=LimitSettings(max_request_bytes=1024)))
    try:
        with grpcclient.InferenceServerClient(s.url) as c:
            status, _ = status_of(lambda: c.infer("whisper", [bytes_input("audio", [WAV_1S])]))
            assert status == "StatusCode.RESOURCE_EXHAUSTED"
            x = np.ones((1, 4), dtype=np.float32)  # a small one still passes
            c.infer("scale-v", [fp32("INPUT0", x)])
    finally:
        s.close()


# -- the pipeline: keys, limits, request ids, access log -----------------------------------------


def test_http_and_grpc_go_through_one_request_scope(
    keyed: Stack, access_lines: list[dict[str, Any]]
) -> None:
    """A key check, a per-key limit and the access log give the same verdicts on both
    transports: the gRPC calls and the /v2 HTTP requests below mirror each other."""
    app = create_app()
    install(app, settings=keyed.settings, router=keyed.router)
    body = {"inputs": [{"name": "INPUT0", "shape": [1, 1], "datatype": "FP32", "data": [1.0]}]}
    x = np.ones((1, 1), dtype=np.float32)
    tiny = {"authorization": f"Bearer {LIMITED_KEY}"}
    with TestClient(app) as http, grpcclient.InferenceServerClient(keyed.url) as c:
        no_key = http.post("/v2/models/scale-v/infer", json=body)
        status, message = status_of(lambda: c.infer("scale-v", [fp32("INPUT0", x)]))
        assert (no_key.status_code, status) == (401, "StatusCode.UNAUTHENTICATED")
        assert no_key.json()["error"] == message
        assert http.post("/v2/models/scale-v/infer", json=body, headers=tiny).status_code == 200
        c.infer("scale-v", [fp32("INPUT0", x)], headers=tiny)
        limited = http.post("/v2/models/scale-v/infer", json=body, headers=tiny)
        status, message = status_of(lambda: c.infer("scale-v", [fp32("INPUT0", x)], headers=tiny))
        assert (limited.status_code, status) == (429, "StatusCode.RESOURCE_EXHAUSTED")
        assert limited.json()["error"] == message
    by_transport: dict[str, list[tuple[Any, ...]]] = {"POST": [], "GRPC": []}
    for line in access_lines:
        by_transport[line["method"]].append((line["key"], line["status"], line["model"]))
    expected = [(None, 401, None), ("tiny", 200, "scale-v"), ("tiny", 429, None)]
    assert by_transport == {"POST": expected, "GRPC": expected}


def test_keys_are_checked_when_configured(keyed: Stack) -> None:
    x = np.ones((1, 1), dtype=np.float32)
    with grpcclient.InferenceServerClient(keyed.url) as c:
        status, message = status_of(lambda: c.infer("scale-v", [fp32("INPUT0", x)]))
        assert status == "StatusCode.UNAUTHENTICATED" and "didn't provide an API key" in message
        status, message = status_of(
            lambda: c.infer("scale-v", [fp32("INPUT0", x)], headers={"authorization": "Bearer x"})
        )
        assert status == "StatusCode.UNAUTHENTICATED" and "Incorrect API key" in message
        status, _ = status_of(lambda: c.is_server_live())
        assert status == "StatusCode.UNAUTHENTICATED"  # like /v2/health/live over HTTP
        bearer = {"authorization": f"Bearer {KEY}"}
        assert c.is_server_live(headers=bearer)
        c.infer("scale-v", [fp32("INPUT0", x)], headers=bearer)
        c.infer("scale-v", [fp32("INPUT0", x)], headers={"api-key": KEY})
        narrow = {"authorization": f"Bearer {NARROW_KEY}"}
        c.infer("scale-v", [fp32("INPUT0", x)], headers=narrow)
        status, message = status_of(lambda: c.get_model_metadata("resnet", headers=narrow))
        assert status == "StatusCode.PERMISSION_DENIED" and "'narrow' may not use" in message


async def test_rate_limits_are_resource_exhausted_with_retry_after(keyed: Stack) -> None:
    """With the aio client, and the raw stub to read the trailing metadata."""
    headers = {"authorization": f"Bearer {LIMITED_KEY}"}
    x = np.ones((1, 1), dtype=np.float32)
    client = grpc_aio.InferenceServerClient(keyed.url)
    try:
        result = await client.infer("scale-v", [fp32("INPUT0", x)], headers=headers)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [[3.0]])
        with pytest.raises(InferenceServerException) as err:
            await client.infer("scale-v", [fp32("INPUT0", x)], headers=headers)
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "Rate limit reached for API key 'tiny'" in str(err.value.message())
    finally:
        await client.close()
    async with grpc.aio.insecure_channel(keyed.url) as channel:
        call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
            service_pb2.ServerLiveRequest(), metadata=tuple(headers.items())
        )
        with pytest.raises(grpc.aio.AioRpcError) as rpc:
            await call
        trailing = dict(rpc.value.trailing_metadata() or ())
        assert rpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert int(trailing["retry-after"]) >= 1
        assert trailing["x-ratelimit-limit-requests"] == "1"
        assert trailing["x-ratelimit-remaining-requests"] == "0"


async def test_request_id_is_echoed_in_trailing_metadata(
    stack: Stack, access_lines: list[dict[str, Any]]
) -> None:
    request = service_pb2.ModelInferRequest(model_name="scale-v", id="from-body")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 1])
    request.raw_input_contents.append(np.float32(1).tobytes())
    async with grpc.aio.insecure_channel(stack.url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelInfer(request, metadata=(("x-request-id", "client-id-7"),))
        response = await call
        assert dict(await call.trailing_metadata())["x-request-id"] == "client-id-7"
        assert response.id == "from-body"  # the request's own id, as Triton answers
        call = stub.ModelInfer(request)  # no metadata: the request's id
        await call
        assert dict(await call.trailing_metadata())["x-request-id"] == "from-body"
        call = stub.ModelMetadata(service_pb2.ModelMetadataRequest(name="nope"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        generated = dict(err.value.trailing_metadata() or ())["x-request-id"]
        assert len(generated) == 32  # a fresh id, errors too
    assert stack.triton.request_ids == ["from-body", "from-body"]  # the id Triton logs, as on HTTP
    lines = [line for line in access_lines if line["path"].startswith(f"/{SERVICE}/")]
    assert [(line["request_id"], line["status"]) for line in lines] == [
        ("client-id-7", 200),
        ("from-body", 200),
        (generated, 404),
    ]
    first = lines[0]
    assert first["path"] == f"/{SERVICE}/ModelInfer" and first["method"] == "GRPC"
    assert (first["model"], first["backend"]) == ("scale-v", "triton")


def test_a_draining_worker_refuses_new_calls(
    client: grpcclient.InferenceServerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert client.is_server_live()
    assert DRAIN.inflight == 0  # the calls before were counted in and out
    monkeypatch.setattr(DRAIN, "draining", True)
    monkeypatch.setattr(DRAIN, "refuse_new", True)
    status, message = status_of(lambda: client.is_server_ready())
    assert status == "StatusCode.UNAVAILABLE" and "shutting down" in message
