"""The speech recognition runner: Whisper through `transformers`, batched by BentoML.

`transcribe` is the batchable API. Its items are 30 s windows of 16 kHz mono audio (the caller
decodes, resamples and splits files, so a corrupt file fails only its own request), and each item
carries its own request's options: BentoML's dispatcher runs one call over the merged list of
many requests, so per-request keyword arguments would not survive batching. Inside the batch the
runner groups items with equal options and runs one `generate` per group; with default options
that is one forward pass for the whole batch::

    client.transcribe(clips=[Clip(audio=samples, language="en")])  # [ClipText(text=...)]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import bentoml

from contract import audio
from contract.names import SPEECH as SPEECH_NAME
from contract.speech import Clip, ClipText, SpeechInfo
from runners.metrics import BATCH_SIZE
from runners.shell import batched_runner, starting
from settings import get_settings

if TYPE_CHECKING:
    from runners.whisper import Whisper

SETTINGS = get_settings()
SPEECH = SETTINGS.speech


@batched_runner(SPEECH_NAME)
class Transcriber:
    model = bentoml.models.BentoModel(SPEECH.model)

    def __init__(self) -> None:
        with starting(SPEECH.max_hold_ms) as device:
            from runners.whisper import Whisper  # torch loads in this service's process only

            stored = self.model
            self.tag = str(stored.tag)
            self.whisper: Whisper = Whisper.load(
                stored.path, device=device, max_new_tokens=SPEECH.max_new_tokens
            )

    @bentoml.api(
        batchable=SPEECH.batching,
        max_batch_size=SPEECH.max_batch_size,
        max_latency_ms=SPEECH.max_latency_ms,
    )
    def transcribe(self, clips: list[Clip]) -> list[ClipText]:
        """Text for each clip of at most 30 s (see `info` for the sampling rate)."""
        BATCH_SIZE.labels(runner=SPEECH_NAME).observe(len(clips))
        return self.whisper.transcribe(clips)

    @bentoml.api
    def info(self) -> SpeechInfo:
        return SpeechInfo(
            model=self.tag,
            sampling_rate=self.whisper.sampling_rate,
            languages=self.whisper.languages,
            chunk_seconds=audio.CHUNK_SECONDS,
        )
