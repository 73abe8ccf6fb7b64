"""The vision and speech runner adapters over fake runner clients: decoding, options, errors."""

from __future__ import annotations

from http import HTTPStatus

import aiohttp
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException

from gateway.adapters.base import InferRequest
from gateway.adapters.runner import SpeechRunnerAdapter, VisionRunnerAdapter
from gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    InvalidRequest,
    PayloadTooLarge,
)
from tests.gateway.fake_runners import LABELS, FakeSpeechRunner, FakeVisionRunner
from tests.media import audio_bytes, forged_png, image_bytes, noise_image, solid, tone


@pytest.fixture
def runner() -> FakeVisionRunner:
    return FakeVisionRunner()


@pytest.fixture
def vision(runner: FakeVisionRunner) -> VisionRunnerAdapter:
    return VisionRunnerAdapter("vision", runner, default_top_k=5, max_pixels=1_000_000)


def classify(data: bytes, **options: object) -> InferRequest:
    return InferRequest("classify", "fake-resnet", data, options)


async def test_classify_sends_one_preprocessed_image_and_ranks_the_labels(
    vision: VisionRunnerAdapter, runner: FakeVisionRunner
) -> None:
    result = await vision.predict(classify(image_bytes(solid((250, 10, 10))), top_k=4))
    (sent,) = runner.sent("predict")
    assert sent["pixel_values"].shape == (1, 3, 28, 28)
    predictions = result.body
    assert predictions[0].label == "cat"  # the red channel's class
    assert [p.score for p in predictions] == sorted((p.score for p in predictions), reverse=True)
    assert all(LABELS[p.index] == p.label for p in predictions)


async def test_default_top_k_is_capped_by_the_number_of_labels(runner: FakeVisionRunner) -> None:
    vision = VisionRunnerAdapter("vision", runner, default_top_k=10, max_pixels=1_000_000)
    result = await vision.predict(classify(image_bytes(noise_image(1))))
    assert len(result.body) == len(LABELS)


@pytest.mark.parametrize("top_k", [0, 5])
async def test_top_k_out_of_range_is_400(vision: VisionRunnerAdapter, top_k: int) -> None:
    with pytest.raises(InvalidRequest, match="between 1 and 4") as err:
        await vision.predict(classify(image_bytes(noise_image(1)), top_k=top_k))
    assert err.value.param == "top_k"


async def test_bad_images_never_reach_the_runner(
    vision: VisionRunnerAdapter, runner: FakeVisionRunner
) -> None:
    with pytest.raises(InvalidRequest) as corrupt:
        await vision.predict(classify(image_bytes(noise_image(2), "JPEG")[:200]))
    with pytest.raises(PayloadTooLarge) as bomb:
        await vision.predict(classify(forged_png(50_000, 50_000)))
    assert (corrupt.value.status, corrupt.value.code) == (400, "invalid_image")
    assert (bomb.value.status, bomb.value.code) == (413, "image_too_large")
    assert runner.sent("predict") == []


async def test_infer_passes_pixel_tensors_to_the_runner(
    vision: VisionRunnerAdapter, runner: FakeVisionRunner
) -> None:
    """Their shape is checked once, against the model's declared input (pixels.py)."""
    pixels = np.zeros((2, 3, 28, 28), np.float32)
    result = await vision.predict(InferRequest("infer", "fake-resnet", pixels))
    assert result.body.shape == (2, len(LABELS))
    assert runner.sent("predict")[0]["pixel_values"] is pixels


async def test_info_is_asked_once(vision: VisionRunnerAdapter, runner: FakeVisionRunner) -> None:
    for seed in range(3):
        await vision.predict(classify(image_bytes(noise_image(seed))))
    assert len(runner.sent("info")) == 1


@pytest.mark.parametrize(
    ("failure", "error", "status"),
    [
        (
            BentoMLException("process is overloaded", error_code=HTTPStatus.SERVICE_UNAVAILABLE),
            BackendOverloaded,
            503,
        ),
        (
            BentoMLException('{"error": "boom"}', error_code=HTTPStatus.INTERNAL_SERVER_ERROR),
            BackendError,
            502,
        ),
        (aiohttp.ClientConnectionError("refused"), BackendUnavailable, 503),
        (TimeoutError(), BackendTimeout, 504),
    ],
)
async def test_runner_failures_name_the_backend(
    vision: VisionRunnerAdapter,
    runner: FakeVisionRunner,
    failure: BaseException,
    error: type[BackendError | BackendOverloaded],
    status: int,
) -> None:
    await vision.predict(classify(image_bytes(noise_image(1))))  # info is cached from here on
    runner.fail_next(failure)
    with pytest.raises(error) as err:
        await vision.predict(classify(image_bytes(noise_image(1))))
    assert type(err.value) is error and err.value.status == status
    assert err.value.backend == "vision" and "'vision'" in err.value.message


async def test_a_shed_request_says_when_to_retry(
    vision: VisionRunnerAdapter, runner: FakeVisionRunner
) -> None:
    runner.fail_next(BentoMLException("overloaded", error_code=HTTPStatus.SERVICE_UNAVAILABLE))
    with pytest.raises(BackendOverloaded) as err:
        await vision.predict(classify(image_bytes(noise_image(1))))
    assert err.value.headers == {"Retry-After": "1"}


@pytest.mark.parametrize(("ready", "healthy"), [(True, True), (False, False), (OSError(), False)])
async def test_health_follows_the_runner(ready: object, healthy: bool) -> None:
    runner = FakeVisionRunner(ready=ready)  # type: ignore[arg-type]
    assert (
        await VisionRunnerAdapter("vision", runner, default_top_k=5, max_pixels=40_000_000).health()
        is healthy
    )


async def test_unsupported_tasks_are_refused(vision: VisionRunnerAdapter) -> None:
    with pytest.raises(InvalidRequest, match="does not do 'transcribe'"):
        await vision.predict(InferRequest("transcribe", "fake-resnet", b""))


# --- speech ------------------------------------------------------------------------------------


def transcribe(data: bytes, **options: object) -> InferRequest:
    return InferRequest("transcribe", "fake-whisper", data, options)


async def test_long_audio_goes_out_as_one_batch_of_30_second_clips() -> None:
    runner = FakeSpeechRunner()
    speech = SpeechRunnerAdapter("speech", runner, max_seconds=600)
    data = audio_bytes(tone(65.0, 440, 8000), 8000, "FLAC")
    result = await speech.predict(transcribe(data, language="DE", prompt="hi", temperature=0.5))
    (sent,) = runner.sent("transcribe")
    assert [len(c.audio) for c in sent["clips"]] == [480_000, 480_000, 80_000]
    assert {(c.language, c.prompt, c.temperature) for c in sent["clips"]} == {("de", "hi", 0.5)}
    transcript = result.body
    assert transcript.text == "30.0s de hi 0.5 30.0s de hi 0.5 5.0s de hi 0.5"
    assert [(s.start, s.end) for s in transcript.segments] == [(0, 30), (30, 60), (60, 65)]
    assert (transcript.language, transcript.duration) == ("de", 65.0)


async def test_unsupported_language_is_400_before_decoding() -> None:
    runner = FakeSpeechRunner()
    with pytest.raises(InvalidRequest, match="Unsupported language 'klingon'") as err:
        await SpeechRunnerAdapter("speech", runner, max_seconds=600).predict(
            transcribe(b"x", language="klingon")
        )
    assert err.value.param == "language" and runner.sent("transcribe") == []


async def test_english_only_models_take_english_without_a_language_token() -> None:
    runner = FakeSpeechRunner(languages=[])
    speech = SpeechRunnerAdapter("speech", runner, max_seconds=600)
    await speech.predict(transcribe(audio_bytes(tone(1.0, 440, 16_000), 16_000), language="en"))
    assert runner.sent("transcribe")[0]["clips"][0].language is None


async def test_too_long_or_corrupt_audio_is_refused_without_the_runner() -> None:
    runner = FakeSpeechRunner()
    speech = SpeechRunnerAdapter("speech", runner, max_seconds=2)
    with pytest.raises(PayloadTooLarge, match="limit is 2 s"):
        await speech.predict(transcribe(audio_bytes(tone(3.0, 440, 8000), 8000)))
    with pytest.raises(InvalidRequest, match="not WAV, FLAC, OGG or MP3"):
        await speech.predict(transcribe(image_bytes(noise_image(1))))
    assert runner.sent("transcribe") == []


async def test_a_failed_clip_fails_the_request_as_a_backend_error() -> None:
    runner = FakeSpeechRunner()
    runner.transcribe = lambda clips: [  # type: ignore[method-assign]
        type(runner).transcribe(runner, clips)[0].model_copy(update={"error": "ValueError: nope"})
    ]
    with pytest.raises(BackendError, match="nope"):
        await SpeechRunnerAdapter("speech", runner, max_seconds=600).predict(
            transcribe(audio_bytes(tone(1.0, 440, 16_000), 16_000))
        )


async def test_a_call_on_a_connection_the_runner_just_closed_is_sent_again(
    vision: VisionRunnerAdapter, runner: FakeVisionRunner
) -> None:
    await vision.info()
    runner.fail_next(aiohttp.ServerDisconnectedError())
    result = await vision.predict(classify(image_bytes(noise_image(1))))
    assert len(result.body) == len(LABELS)
    assert len(runner.sent("predict")) == 2


async def test_a_runner_that_keeps_disconnecting_is_unavailable(
    vision: VisionRunnerAdapter, runner: FakeVisionRunner
) -> None:
    await vision.info()
    runner.fail_next(aiohttp.ServerDisconnectedError(), aiohttp.ServerDisconnectedError())
    with pytest.raises(BackendUnavailable, match="ServerDisconnected"):
        await vision.predict(classify(image_bytes(noise_image(1))))
