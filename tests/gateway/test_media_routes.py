"""/v1/images/classifications and /v1/audio/transcriptions in process, over fake runners."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient

from gateway.adapters.base import InferenceAdapter
from gateway.adapters.runner import SpeechRunnerAdapter, VisionRunnerAdapter
from gateway.app import create_app, install
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from settings import LimitSettings, Settings
from tests.gateway.fake_runners import FakeSpeechRunner, FakeVisionRunner
from tests.gateway.openai_errors import error_of
from tests.media import audio_bytes, forged_png, image_bytes, solid, tone

CLASSIFY = "/v1/images/classifications"
TRANSCRIBE = "/v1/audio/transcriptions"
LIMITS = LimitSettings(
    max_request_bytes=2_000_000, max_image_pixels=1_000_000, max_audio_seconds=70
)


@pytest.fixture
def vision_runner() -> FakeVisionRunner:
    return FakeVisionRunner()


@pytest.fixture
def speech_runner() -> FakeSpeechRunner:
    return FakeSpeechRunner()


def app_for(
    settings: Settings, vision_runner: FakeVisionRunner, speech_runner: FakeSpeechRunner
) -> Starlette:
    """The routes over the fake runners, with adapters bound to `settings` as the bundle's."""
    routes = [
        Route("resnet", "image", "vision", "resnet"),
        Route("whisper", "speech", "speech", "whisper"),
    ]
    limits = settings.limits
    adapters: dict[str, InferenceAdapter] = {
        "vision": VisionRunnerAdapter(
            "vision",
            vision_runner,
            default_top_k=settings.vision.top_k,
            max_pixels=limits.max_image_pixels,
        ),
        "speech": SpeechRunnerAdapter(
            "speech", speech_runner, max_seconds=limits.max_audio_seconds
        ),
    }
    app = create_app()
    install(app, settings=settings, router=Router(Registry(routes), adapters))
    return app


@pytest.fixture
def client(
    vision_runner: FakeVisionRunner, speech_runner: FakeSpeechRunner
) -> Iterator[TestClient]:
    app = app_for(Settings(limits=LIMITS), vision_runner, speech_runner)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


PNG = image_bytes(solid((250, 10, 10)))


def test_multipart_classification(client: TestClient) -> None:
    r = client.post(
        CLASSIFY,
        files={"file": ("a.png", PNG, "image/png")},
        data={"model": "resnet", "top_k": "2"},
    )
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "resnet" and len(body["predictions"]) == 2
    assert set(body["predictions"][0]) == {"label", "index", "score"}
    assert body["predictions"][0]["score"] >= body["predictions"][1]["score"]


def test_raw_body_classification_with_query_parameters(client: TestClient) -> None:
    multipart = client.post(CLASSIFY, files={"file": ("a.png", PNG)}, data={"model": "resnet"})
    raw = client.post(
        f"{CLASSIFY}?model=resnet", content=PNG, headers={"content-type": "image/png"}
    )
    assert raw.status_code == 200 and raw.json() == multipart.json()
    assert len(raw.json()["predictions"]) == 4  # default top_k 5, capped by the 4 labels


def test_the_default_top_k_comes_from_settings(
    vision_runner: FakeVisionRunner, speech_runner: FakeSpeechRunner
) -> None:
    settings = Settings.model_validate({"limits": LIMITS, "vision": {"top_k": 2}})
    with TestClient(app_for(settings, vision_runner, speech_runner)) as client:
        r = client.post(
            f"{CLASSIFY}?model=resnet", content=PNG, headers={"content-type": "image/png"}
        )
    assert len(r.json()["predictions"]) == 2


@pytest.mark.parametrize(
    ("kwargs", "status", "param", "message"),
    [
        (
            {"content": PNG, "headers": {"content-type": "text/plain"}},
            415,
            None,
            "multipart/form-data",
        ),
        ({"files": {"file": ("a.txt", b"hello", "text/plain")}}, 415, "file", "expected image/*"),
        ({"files": {"other": ("a.png", PNG, "image/png")}}, 400, "file", "'file' is required"),
        ({"files": {"file": ("a.png", b"", "image/png")}}, 400, "file", "empty"),
        ({"files": {"file": ("a.png", PNG[:100], "image/png")}}, 400, "file", "corrupt"),
        ({"files": {"file": ("a.png", forged_png(5000, 5000), "image/png")}}, 413, "file", "limit"),
        ({"files": {"file": ("a.png", b"x" * 2_100_000, "image/png")}}, 413, None, "limit"),
        ({"files": {"file": ("a.png", PNG)}, "data": {"top_k": "0"}}, 400, "top_k", "greater than"),
        (
            {"files": {"file": ("a.png", PNG)}, "data": {"top_k": "9"}},
            400,
            "top_k",
            "between 1 and 4",
        ),
        ({"files": {"file": ("a.png", PNG)}, "data": {"top_k": "two"}}, 400, "top_k", "integer"),
        ({"files": {"file": ("a.png", PNG)}, "data": {"model": ""}}, 400, "model", "at least 1"),
    ],
)
def test_bad_image_requests_are_4xx_and_the_server_keeps_serving(
    client: TestClient,
    vision_runner: FakeVisionRunner,
    kwargs: dict[str, Any],
    status: int,
    param: str | None,
    message: str,
) -> None:
    if "files" in kwargs:
        kwargs = {**kwargs, "data": {"model": "resnet", **kwargs.get("data", {})}}
    err = error_of(client.post(f"{CLASSIFY}?model=resnet", **kwargs), status)
    assert message in err["message"] and err["param"] == param
    assert vision_runner.sent("predict") == []
    ok = client.post(CLASSIFY, files={"file": ("a.png", PNG)}, data={"model": "resnet"})
    assert ok.status_code == 200


def test_unknown_model_is_404_listing_the_image_models(client: TestClient) -> None:
    r = client.post(CLASSIFY, files={"file": ("a.png", PNG)}, data={"model": "vit"})
    err = error_of(r, 404)
    assert "vit" in err["message"] and "resnet" in err["message"]
    assert "whisper" not in err["message"]


def test_an_unavailable_runner_is_503_in_openai_shape(
    client: TestClient, vision_runner: FakeVisionRunner
) -> None:
    vision_runner.fail_next(ConnectionRefusedError("no runner"))
    r = client.post(CLASSIFY, files={"file": ("a.png", PNG)}, data={"model": "resnet"})
    err = error_of(r, 503)
    assert err["type"] == "service_unavailable" and "'vision'" in err["message"]


# --- audio -------------------------------------------------------------------------------------

WAV = audio_bytes(tone(65.0, 440, 8000), 8000, "WAV")


@pytest.fixture
def oai(client: TestClient) -> openai.OpenAI:
    """The real openai client, sending through the in-process app."""
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=client)


def test_openai_client_json_and_text(oai: openai.OpenAI) -> None:
    result = oai.audio.transcriptions.create(model="whisper", file=("a.wav", WAV), language="de")
    assert result.text == "30.0s de - 0 30.0s de - 0 5.0s de - 0"
    text = oai.audio.transcriptions.create(
        model="whisper", file=("a.wav", WAV), response_format="text", prompt="hi", temperature=0.3
    )
    assert text.strip() == "30.0s - hi 0.3 30.0s - hi 0.3 5.0s - hi 0.3"


def test_openai_client_verbose_json(oai: openai.OpenAI) -> None:
    result = oai.audio.transcriptions.create(
        model="whisper", file=("a.wav", WAV), response_format="verbose_json"
    )
    assert (result.language, result.duration) == ("english", 65.0)
    assert result.segments is not None
    assert [(s.id, s.start, s.end, s.seek, s.avg_logprob) for s in result.segments] == [
        (0, 0.0, 30.0, 0, -0.3),
        (1, 30.0, 60.0, 3000, -0.3),
        (2, 60.0, 65.0, 6000, -0.05),
    ]
    assert {s.no_speech_prob for s in result.segments} == {0.25}
    assert result.segments[2].text == "5.0s - - 0" and result.segments[2].tokens == [1, 2, 3]


def test_openai_client_srt_and_vtt(oai: openai.OpenAI) -> None:
    srt = oai.audio.transcriptions.create(
        model="whisper", file=("a.wav", WAV), response_format="srt"
    )
    vtt = oai.audio.transcriptions.create(
        model="whisper", file=("a.wav", WAV), response_format="vtt"
    )
    assert srt.startswith("1\n00:00:00,000 --> 00:00:30,000\n30.0s - - 0\n\n2\n")
    assert "3\n00:01:00,000 --> 00:01:05,000\n5.0s - - 0\n" in srt
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:30.000\n30.0s - - 0\n")


W = {"model": "whisper"}


@pytest.mark.parametrize(
    ("form", "file", "status", "param", "message"),
    [
        ({}, ("a.wav", WAV, "audio/wav"), 400, "model", "required"),
        ({**W, "response_format": "xml"}, ("a.wav", WAV), 400, "response_format", "json"),
        ({**W, "temperature": "2"}, ("a.wav", WAV), 400, "temperature", "less than"),
        ({**W, "language": "xx"}, ("a.wav", WAV), 400, "language", "Unsupported"),
        (W, ("a.png", PNG, "image/png"), 415, "file", "expected audio/*"),
        (W, ("a.wav", b"", "audio/wav"), 400, "file", "empty"),
        (W, ("a.wav", b"RIFF" + b"\0" * 100, "audio/wav"), 400, "file", "not WAV"),
        (W, ("a.wav", audio_bytes(tone(71, 1, 1000), 1000)), 413, "file", "limit is 70 s"),
    ],
)
def test_bad_transcription_requests_are_4xx_and_the_server_keeps_serving(
    client: TestClient,
    speech_runner: FakeSpeechRunner,
    form: dict[str, str],
    file: tuple[str, bytes] | tuple[str, bytes, str],
    status: int,
    param: str,
    message: str,
) -> None:
    err = error_of(client.post(TRANSCRIBE, files={"file": file}, data=form), status)
    assert message in err["message"] and err["param"] == param
    assert speech_runner.sent("transcribe") == []
    ok = client.post(TRANSCRIBE, files={"file": ("a.wav", WAV)}, data=W)
    assert ok.status_code == 200


def test_transcription_needs_multipart(client: TestClient) -> None:
    r = client.post(
        f"{TRANSCRIBE}?model=whisper", content=WAV, headers={"content-type": "audio/wav"}
    )
    assert "multipart/form-data" in error_of(r, 415)["message"]


def test_unknown_speech_model_is_404(client: TestClient) -> None:
    r = client.post(TRANSCRIBE, files={"file": ("a.wav", WAV)}, data={"model": "nope"})
    assert "whisper" in error_of(r, 404)["message"]


def test_an_image_model_sent_to_transcriptions_is_told_where_it_is_served(
    client: TestClient,
) -> None:
    r = client.post(TRANSCRIBE, files={"file": ("a.wav", WAV)}, data={"model": "resnet"})
    err = error_of(r, 400)
    assert err["code"] == "wrong_endpoint" and err["param"] == "model"
    assert "'resnet' is of kind 'image', served on /v1/images/classifications" in err["message"]


def test_openai_client_translation_runs_the_translate_task(
    oai: openai.OpenAI, speech_runner: FakeSpeechRunner
) -> None:
    result = oai.audio.translations.create(
        model="whisper", file=("a.wav", WAV), response_format="verbose_json"
    )
    (sent,) = speech_runner.sent("transcribe")
    assert {clip.task for clip in sent["clips"]} == {"translate"}
    assert result.model_extra is not None and result.model_extra["task"] == "translate"
    text = oai.audio.translations.create(model="whisper", file=("a.wav", WAV))
    assert text.text == result.text
