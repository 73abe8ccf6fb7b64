"""The speech runner as a KServe V2 model: audio files in a BYTES tensor, transcripts out, over the
HTTP /v2 route (tritonclient.http's own request encoder and response parser, and JSON bodies),
beside the OpenAI route the same backend keeps serving."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from starlette.testclient import TestClient

from gateway.adapters.base import InferRequest, InferResponse
from gateway.adapters.runner import SpeechRunnerAdapter
from gateway.adapters.transcript_tensors import TranscriptTensorAdapter
from gateway.app import create_app, install
from gateway.errors import InvalidRequest
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from gateway.tensors import Tensor, TensorRequest
from settings import Settings, parse_settings
from tests.gateway.fake_runners import FakeSpeechRunner
from tests.media import audio_bytes, image_bytes, noise_image, tone

WAV_1S = audio_bytes(tone(1.0, 440, 16_000), 16_000)
FLAC_2S = audio_bytes(tone(2.0, 300, 22_050), 22_050, "FLAC")


@pytest.fixture
def runner() -> FakeSpeechRunner:
    return FakeSpeechRunner()


@pytest.fixture
def client(runner: FakeSpeechRunner) -> Iterator[TestClient]:
    with serve(runner, Settings()) as c:
        yield c


@contextlib.contextmanager
def serve(runner: FakeSpeechRunner, settings: Settings) -> Iterator[TestClient]:
    speech = TranscriptTensorAdapter(SpeechRunnerAdapter("speech", runner, max_seconds=5))
    router = Router(Registry([Route("whisper", "speech", "speech", "whisper")]), {"speech": speech})
    app = create_app()
    install(app, settings=settings, router=router)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def audio_input(*files: bytes) -> httpclient.InferInput:
    wire = httpclient.InferInput("audio", [len(files)], "BYTES")
    wire.set_data_from_numpy(np.array(files, dtype=object), binary_data=True)
    return wire


def text_input(name: str, *values: str) -> httpclient.InferInput:
    wire = httpclient.InferInput(name, [len(values)], "BYTES")
    wire.set_data_from_numpy(
        np.array([v.encode() for v in values], dtype=object), binary_data=False
    )
    return wire


def infer(
    client: TestClient, inputs: list[httpclient.InferInput], **parameters: Any
) -> tuple[int, Any]:
    """POST /v2/models/whisper/infer as tritonclient.http would; the status and the result."""
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        inputs, parameters=parameters or None
    )
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    r = client.post("/v2/models/whisper/infer", content=body, headers=headers)
    if r.status_code != 200:
        return r.status_code, r.json()["error"]
    length = r.headers.get("Inference-Header-Content-Length")
    result = httpclient.InferenceServerClient.parse_response_body(
        r.content, header_length=int(length) if length else None
    )
    return r.status_code, result


def texts(result: Any) -> list[str]:
    out = result.get_output("text")
    assert out["datatype"] == "BYTES"
    if "data" in out:  # JSON
        return list(out["data"])
    return [x.decode() for x in result.as_numpy("text").reshape(-1)]


def test_metadata_and_ready(client: TestClient) -> None:
    meta = client.get("/v2/models/whisper").json()
    assert meta == {
        "name": "whisper",
        "versions": [],
        "platform": "bentoml",
        "inputs": [
            {"name": "audio", "datatype": "BYTES", "shape": [-1]},
            {"name": "language", "datatype": "BYTES", "shape": [-1]},
            {"name": "task", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
    }
    assert client.get("/v2/models/whisper/ready").json() == {"name": "whisper", "ready": True}


def test_one_transcript_per_file(client: TestClient, runner: FakeSpeechRunner) -> None:
    status, result = infer(client, [audio_input(WAV_1S, FLAC_2S)])
    assert status == 200, result
    assert texts(result) == ["1.0s - - 0", "2.0s - - 0"]
    assert result.get_output("text")["shape"] == [2]
    assert len(runner.sent("transcribe")) == 2  # sent together, batched by the runner


def test_outputs_in_json_unless_asked_for_binary(client: TestClient) -> None:
    r = client.post(
        "/v2/models/whisper/infer",
        json={"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "data": ["x"]}]},
    )
    assert r.status_code == 400  # "x" is no audio file: JSON strings cannot carry one
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [audio_input(WAV_1S)], outputs=[httpclient.InferRequestedOutput("text", binary_data=False)]
    )
    r = client.post(
        "/v2/models/whisper/infer",
        content=body,
        headers={"Inference-Header-Content-Length": str(json_size)},
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["outputs"] == [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["1.0s - - 0"]}
    ]


def test_language_and_task_as_parameters(client: TestClient, runner: FakeSpeechRunner) -> None:
    status, result = infer(client, [audio_input(WAV_1S)], language="DE", task="translate")
    assert status == 200, result
    assert texts(result) == ["1.0s de - 0"]
    (clip,) = runner.sent("transcribe")[0]["clips"]
    assert (clip.language, clip.task) == ("de", "translate")


def test_language_and_task_as_inputs_for_all_or_each_file(
    client: TestClient, runner: FakeSpeechRunner
) -> None:
    status, result = infer(
        client, [audio_input(WAV_1S, WAV_1S), text_input("language", "fr"), text_input("task", "")]
    )
    assert status == 200, result
    assert texts(result) == ["1.0s fr - 0", "1.0s fr - 0"]
    status, result = infer(
        client, [audio_input(WAV_1S, WAV_1S), text_input("language", "fr", "de")]
    )
    assert status == 200, result
    assert texts(result) == ["1.0s fr - 0", "1.0s de - 0"]
    tasks = {c.task for call in runner.sent("transcribe") for c in call["clips"]}
    assert tasks == {"transcribe"}


@pytest.mark.parametrize(
    ("inputs", "parameters", "status", "message"),
    [
        (lambda: [text_input("language", "de")], {}, 400, "Expected the input 'audio'"),
        (lambda: [audio_input()], {}, 400, "at least one audio file"),
        (lambda: [audio_input(WAV_1S), text_input("language", "de", "fr")], {}, 400,
         "2 values for 1 audio files"),
        (lambda: [audio_input(WAV_1S), text_input("language", "de")], {"language": "fr"}, 400,
         "not both"),
        (lambda: [audio_input(WAV_1S)], {"task": "sing"}, 400, "Unknown task 'sing'"),
        (lambda: [audio_input(WAV_1S)], {"language": 7}, 400, "must be a string"),
        (lambda: [audio_input(WAV_1S)], {"language": "klingon"}, 400, "Unsupported language"),
        (lambda: [audio_input(image_bytes(noise_image(1)))], {}, 400, "not WAV, FLAC, OGG or MP3"),
        (lambda: [audio_input(audio_bytes(tone(6.0, 440, 8000), 8000))], {}, 413,
         "the limit is 5 s"),
        (lambda: [text_input("audio", "x"), text_input("audio", "y")], {}, 400, "only once"),
        (lambda: [text_input("speech", "x")], {}, 400, "Unknown input 'speech'"),
    ],
)  # fmt: skip
def test_bad_requests(
    client: TestClient,
    runner: FakeSpeechRunner,
    inputs: Any,
    parameters: dict[str, Any],
    status: int,
    message: str,
) -> None:
    got, error = infer(client, inputs(), **parameters)
    assert got == status, error
    assert message in error
    assert runner.sent("transcribe") == []  # nothing bad reaches the runner


def test_100000_one_byte_files_are_refused_before_any_is_decoded(
    client: TestClient, runner: FakeSpeechRunner
) -> None:
    n = 100_000  # was 10 s and +600 MB of decode tasks, one per element, before its 400
    body = {"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [n], "data": ["x"] * n}]}
    r = client.post("/v2/models/whisper/infer", json=body)
    assert r.status_code == 400
    assert r.json() == {
        "error": "Input 'audio' has 100000 BYTES elements; the limit is 4096 per input."
    }
    status, error = infer(client, [audio_input(*[b"x"] * n)])  # binary, as tritonclient sends
    assert status == 400 and error.startswith("Input 'audio' has 100000 BYTES elements")
    assert runner.sent("transcribe") == []


def test_the_configured_limit_counts_every_bytes_input(runner: FakeSpeechRunner) -> None:
    with serve(runner, parse_settings({"limits": {"max_bytes_elements": 2}})) as client:
        status, result = infer(client, [audio_input(WAV_1S, WAV_1S)])
        assert status == 200 and len(texts(result)) == 2
        status, error = infer(
            client, [audio_input(WAV_1S), text_input("language", "de", "fr", "en")]
        )
        assert (status, error) == (
            400,
            "Input 'language' has 3 BYTES elements; the limit is 2 per input.",
        )


def test_wrong_datatype_is_refused(client: TestClient) -> None:
    wire = httpclient.InferInput("audio", [2], "FP32")
    wire.set_data_from_numpy(np.ones(2, np.float32))
    status, error = infer(client, [wire])
    assert status == 400 and "must be BYTES" in error


def test_the_openai_route_still_transcribes_through_the_wrapper(client: TestClient) -> None:
    r = client.post(
        "/v1/audio/transcriptions",
        data={"model": "whisper", "language": "fr"},
        files={"file": ("a.wav", WAV_1S, "audio/wav")},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"text": "1.0s fr - 0"}


async def test_a_failing_file_fails_the_request_and_cancels_the_rest() -> None:
    cancelled = asyncio.Event()

    class Inner:
        name = "speech"

        async def predict(self, request: InferRequest) -> InferResponse:
            if request.payload == b"slow":
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    cancelled.set()
                    raise
            raise InvalidRequest("not audio")

    files = np.empty(2, dtype=object)
    files[:] = [b"slow", b"bad"]
    payload = TensorRequest(inputs=(Tensor("audio", "BYTES", files),))
    adapter = TranscriptTensorAdapter(Inner())
    with pytest.raises(InvalidRequest, match="not audio"):
        await adapter.predict(InferRequest("infer", "whisper", payload))
    assert cancelled.is_set()
