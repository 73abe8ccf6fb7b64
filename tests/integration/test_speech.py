"""Transcription through the real bundle: openai client -> gateway -> batched Whisper runner."""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import psutil
import pytest

from tests.integration.batching import batch_counts
from tests.media import audio_bytes, image_bytes, noise_image, tone
from tests.servers.memory import PeakGrowth

pytestmark = pytest.mark.integration

MODEL = "demo-whisper"
SPEECH = audio_bytes(tone(35.0, 440, 22_050), 22_050, "WAV")  # two 30 s windows


@pytest.fixture(scope="module")
def client(bundle_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{bundle_url}/v1", api_key="unused", max_retries=0, timeout=300)


def test_json(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(model=MODEL, file=("speech.wav", SPEECH))
    verbose = client.audio.transcriptions.create(
        model=MODEL, file=("speech.wav", SPEECH), response_format="verbose_json"
    )
    assert verbose.segments is not None and len(verbose.segments) == 2
    assert all(s.tokens and s.text for s in verbose.segments)  # both 30 s windows decoded
    assert result.text == verbose.text == " ".join(s.text for s in verbose.segments)


def test_text(client: openai.OpenAI) -> None:
    def as_json(language: str) -> str:
        return client.audio.transcriptions.create(
            model=MODEL, file=("speech.wav", SPEECH), language=language
        ).text

    text = client.audio.transcriptions.create(
        model=MODEL, file=("speech.wav", SPEECH), response_format="text", language="en"
    )
    english = as_json("en")
    assert english and text == english + "\n"  # the JSON transcript, as plain text
    # The language is the model's: it is in the decoder's prompt (the demo model writes
    # different text for each of these two), not only a label on the answer.
    assert as_json("de") != english


def test_verbose_json_has_a_segment_per_30_seconds(client: openai.OpenAI) -> None:
    result = client.audio.transcriptions.create(
        model=MODEL, file=("speech.wav", SPEECH), response_format="verbose_json", language="de"
    )
    assert result.language == "german" and result.duration == pytest.approx(35.0, abs=0.01)
    assert result.segments is not None
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 30.0), (30.0, 35.0)]
    assert all(s.avg_logprob < 0 and 0 <= s.no_speech_prob <= 1 for s in result.segments)
    assert all(s.tokens for s in result.segments)  # Whisper never starts a window with its end
    assert result.text == " ".join(s.text for s in result.segments if s.text)


def test_srt_and_vtt(client: openai.OpenAI) -> None:
    srt = client.audio.transcriptions.create(
        model=MODEL, file=("speech.wav", SPEECH), response_format="srt"
    )
    vtt = client.audio.transcriptions.create(
        model=MODEL, file=("speech.wav", SPEECH), response_format="vtt"
    )
    assert srt.startswith("1\n00:00:00,000 --> 00:00:30,000\n")
    assert "\n2\n00:00:30,000 --> 00:00:35,000\n" in srt
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:30.000\n")
    # Cue blocks are separated by blank lines, and cue text has none.
    srt_cues = [block.split("\n", 2)[2] for block in srt.split("\n\n") if block]
    vtt_cues = [block.split("\n", 1)[1] for block in vtt.split("\n\n")[1:] if block]
    assert len(srt_cues) == 2 and all(srt_cues) and srt_cues == vtt_cues
    text = client.audio.transcriptions.create(model=MODEL, file=("speech.wav", SPEECH)).text
    # The cues hold the transcript's words (cue lines are stripped and "-->" is escaped).
    assert " ".join(srt_cues).split() == text.replace("-->", "->").split()


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_compressed_formats_and_options(client: openai.OpenAI, fmt: str) -> None:
    data = audio_bytes(tone(2.0, 300, 44_100), 44_100, fmt)
    result = client.audio.transcriptions.create(
        model=MODEL,
        file=(f"clip.{fmt.lower()}", data),
        prompt="The weather",
        temperature=0.2,
        response_format="verbose_json",
    )
    # Decoded whole and resampled right: 2 s at 44.1 kHz is 2 s at the model's 16 kHz.
    assert result.duration == pytest.approx(2.0, abs=0.01)
    assert result.segments is not None and len(result.segments) == 1
    (segment,) = result.segments
    assert segment.start == 0.0 and segment.end == result.duration
    assert segment.tokens and result.text == segment.text
    assert not result.text.startswith("The weather")  # the prompt conditions, is not transcript


def clip(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    samples = 0.2 * rng.standard_normal(16_000 * 3) + tone(3.0, 200 + 90 * seed, 16_000)
    return audio_bytes(samples.astype(np.float32), 16_000, "WAV")


def test_concurrent_requests_are_batched_without_mixing_up_answers(
    client: openai.OpenAI, bundle_url: str
) -> None:
    clips = [clip(seed) for seed in range(8)]

    def transcribe(data: bytes) -> tuple[str, float]:
        result = client.audio.transcriptions.create(
            model=MODEL, file=("c.wav", data), response_format="verbose_json"
        )
        (segment,) = result.segments or []
        return result.text, segment.no_speech_prob

    def burst() -> list[tuple[str, float]]:
        with ThreadPoolExecutor(len(clips)) as pool:
            return list(pool.map(transcribe, clips))

    with contextlib.suppress(openai.APIStatusError):
        burst()  # trains BentoML's latency model on a batch (see test_vision.py)
    alone = [transcribe(data) for data in clips]
    _, multi_before = batch_counts(bundle_url, "speech")
    together = burst()
    # The demo model's random weights write the same text for every one of these clips, so the
    # texts cannot show a mix-up. The no-speech probability is computed from each clip's own
    # audio: each answer must be nearest to the one its clip got alone (batching changes it by
    # float noise, ~1e-11, against gaps of ~1e-9 between clips).
    assert [text for text, _ in together] == [text for text, _ in alone]
    solo = [p for _, p in alone]
    assert len(set(solo)) == len(clips), f"the clips cannot be told apart: {solo}"

    def closest(p: float) -> int:
        return min(range(len(solo)), key=lambda j: abs(p - solo[j]))

    assert [closest(p) for _, p in together] == list(range(len(clips))), (together, alone)
    _, multi_after = batch_counts(bundle_url, "speech")
    assert multi_after > multi_before, "no batch of more than one clip was formed"


@pytest.mark.parametrize(
    ("file", "fields", "error", "message"),
    [
        (("a.wav", b"RIFF" + bytes(200)), {}, openai.BadRequestError, "not WAV"),
        (("a.png", image_bytes(noise_image(1)), "image/png"), {}, openai.APIStatusError, "audio/*"),
        (("a.wav", SPEECH), {"language": "xx"}, openai.BadRequestError, "Unsupported language"),
        (("a.wav", SPEECH), {"model": "nope"}, openai.NotFoundError, MODEL),
        (("a.wav", audio_bytes(tone(601, 1, 1000), 1000)), {}, openai.APIStatusError, "limit"),
    ],
)
def test_bad_input_is_4xx_and_the_next_request_succeeds(
    client: openai.OpenAI,
    file: tuple[str, bytes] | tuple[str, bytes, str],
    fields: dict[str, str],
    error: type[openai.APIStatusError],
    message: str,
) -> None:
    kwargs = {"model": MODEL, **fields}
    with pytest.raises(error) as err:
        client.audio.transcriptions.create(file=file, **kwargs)  # type: ignore[call-overload]
    assert 400 <= err.value.status_code < 500 and message in err.value.message
    assert client.audio.transcriptions.create(model=MODEL, file=("ok.wav", clip(0))).text


# A /v2 request of 100,000 one-byte files took the gateway worker 5-22 s and +511 MB (one decode
# task per element) before its 400; JSON nested 100,000 deep was a 500 RecursionError on /v1.
MANY = 100_000


def v2_body(shape: int, data: str) -> bytes:
    audio = f'{{"name":"audio","datatype":"BYTES","shape":[{shape}],"data":{data}}}'
    return f'{{"inputs":[{audio}]}}'.encode()


BAD_V2_BODIES = {
    "100000 audio elements": (
        v2_body(MANY, json.dumps(["x"] * MANY)),
        "Input 'audio' has 100000 BYTES elements; the limit is 4096 per input.",
    ),
    "nested 100000 deep": (v2_body(1, "[" * MANY + "]" * MANY), "recursion limit exceeded"),
}


@pytest.mark.parametrize("case", list(BAD_V2_BODIES))
def test_a_bad_v2_body_is_a_400_at_once_and_costs_the_gateway_little(
    bundle_url: str, gateway_worker: psutil.Process, case: str
) -> None:
    body, message = BAD_V2_BODIES[case]
    with PeakGrowth(gateway_worker.pid) as grown:
        started = time.monotonic()
        r = httpx.post(f"{bundle_url}/v2/models/{MODEL}/infer", content=body, timeout=60)
        took = time.monotonic() - started
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and message in r.json()["error"]
    assert took < 3, f"{took:.1f} s"
    assert grown.mib < 100, f"the gateway worker grew by {grown.mib:.0f} MiB"
