"""Speech to text, OpenAI-compatible: POST /v1/audio/transcriptions and /v1/audio/translations.

    curl -s localhost:3000/v1/audio/transcriptions -F model=demo-whisper -F file=@talk.mp3 \\
         -F response_format=srt

    client = openai.OpenAI(base_url="http://localhost:3000/v1", api_key="unused")
    client.audio.transcriptions.create(model="demo-whisper", file=open("talk.mp3", "rb"))

Audio longer than 30 s is transcribed in 30 s windows (one batch); each window is a segment.
"""

from __future__ import annotations

import zlib

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from gateway.adapters.base import Transcript
from gateway.api import calls
from gateway.api.common import context, router_of
from gateway.api.media_protocol import (
    TranscriptionParams,
    TranscriptionResponse,
    TranscriptionSegment,
    TranscriptionVerbose,
    TranslationParams,
    parse_params,
)
from gateway.api.subtitles import to_srt, to_vtt
from gateway.api.uploads import read_upload

FRAMES_PER_SECOND = 100  # Whisper's mel frames; OpenAI's `seek` counts them


async def create_transcription(request: Request) -> Response:
    return await _speech_to_text(request, "transcribe")


async def create_translation(request: Request) -> Response:
    """Whisper's translate task: speech in any language it knows to English text."""
    return await _speech_to_text(request, "translate")


async def _speech_to_text(request: Request, task: str) -> Response:
    settings = request.app.state.settings
    upload = await read_upload(
        request, media="audio", limit=settings.limits.max_request_bytes, allow_raw=False
    )
    params = parse_params(
        TranscriptionParams if task == "transcribe" else TranslationParams, upload.fields
    )
    transcript = await calls.speech_to_text(
        router_of(request),
        context(request),
        upload.data,
        model=params.model,
        language=getattr(params, "language", None),
        prompt=params.prompt,
        temperature=params.temperature,
        translate=task == "translate",
    )
    return render(transcript, params.response_format)


def render(transcript: Transcript, response_format: str) -> Response:
    cues = [(s.start, s.end, s.text) for s in transcript.segments if s.text]
    if response_format == "text":
        return PlainTextResponse(transcript.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(cues))
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(cues), media_type="text/vtt")
    if response_format == "verbose_json":
        return JSONResponse(verbose(transcript).model_dump())
    return JSONResponse(TranscriptionResponse(text=transcript.text).model_dump())


def verbose(transcript: Transcript) -> TranscriptionVerbose:
    segments = [
        TranscriptionSegment(
            id=s.id,
            seek=round(s.start * FRAMES_PER_SECOND),
            start=s.start,
            end=s.end,
            text=s.text,
            tokens=list(s.tokens),
            temperature=transcript.temperature,
            avg_logprob=s.avg_logprob,
            compression_ratio=compression_ratio(s.text),
            no_speech_prob=s.no_speech_prob,
        )
        for s in transcript.segments
    ]
    return TranscriptionVerbose(
        task="translate" if transcript.task == "translate" else "transcribe",
        language=transcript.language_name or transcript.language or "unknown",
        duration=transcript.duration,
        text=transcript.text,
        segments=segments,
    )


def compression_ratio(text: str) -> float:
    """Whisper's repetition signal: text bytes over zlib-compressed bytes (> 2.4 is suspect)."""
    data = text.encode()
    return len(data) / len(zlib.compress(data)) if data else 0.0


routes = [
    Route("/v1/audio/transcriptions", create_transcription, methods=["POST"]),
    Route("/v1/audio/translations", create_translation, methods=["POST"]),
]
