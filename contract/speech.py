"""What the speech runner takes and answers: 30 s clips with their options, text per clip.

The gateway decodes, resamples and windows files (contract.audio) and sends `Clip`s; BentoML
batches the clips of many requests into one `transcribe` call.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from bentoml.validators import TensorSchema
from pydantic import BaseModel, Field


class Clip(BaseModel):
    """At most 30 s of mono float32 audio at the model's sampling rate, with decoding options."""

    audio: Annotated[np.ndarray, TensorSchema("numpy-array", "float32")]
    language: str | None = None  # ISO code ("en"); None detects it
    prompt: str | None = None  # earlier text that conditions the transcript (Whisper prompt_ids)
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0  # 0 decodes greedily
    task: Literal["transcribe", "translate"] = "transcribe"  # translate: into English

    def options(self) -> Options:
        return (self.language, self.prompt or None, self.temperature, self.task)


Options = tuple[str | None, str | None, float, str]  # what one `generate` call shares


class ClipText(BaseModel):
    text: str = ""
    tokens: list[int] = []  # the text's token ids (no special or timestamp tokens)
    language: str | None = None
    # Whisper's quality signals, as OpenAI's verbose_json reports them: the mean log-probability
    # of the decoded tokens (through the first end-of-text) and the probability of the
    # no-speech token right after <|startoftranscript|>
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    error: str | None = None  # set when this item failed; the other items still have results


class SpeechInfo(BaseModel):
    model: str  # the store tag
    sampling_rate: int
    languages: dict[str, str]  # the codes `language` accepts -> names ("de": "german"); empty
    # for English-only models
    chunk_seconds: float
