"""Wire schemas of the image and audio routes (/v1/images/classifications, /v1/audio/...)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contract.vision import Prediction
from gateway.errors import InvalidRequest

P = TypeVar("P", bound=BaseModel)


class _Params(BaseModel):
    """Form fields or query parameters; unknown ones are ignored, as OpenAI's API does."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: Annotated[str, Field(min_length=1)]


class ClassificationParams(_Params):
    top_k: Annotated[int, Field(ge=1)] | None = None


class TranslationParams(_Params):
    """/v1/audio/translations: into English, so no `language`."""

    prompt: str | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    response_format: Literal["json", "text", "verbose_json", "srt", "vtt"] = "json"


class TranscriptionParams(TranslationParams):
    language: str | None = None


class ClassificationResponse(BaseModel):
    model: str
    predictions: list[Prediction]


class TranscriptionResponse(BaseModel):
    text: str


class TranscriptionSegment(BaseModel):
    id: int
    seek: int  # offset of the segment in 10 ms frames, as Whisper counts them
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float


class TranscriptionVerbose(BaseModel):
    task: Literal["transcribe", "translate"] = "transcribe"
    language: str  # the language's English name, lower case, as OpenAI answers ("german")
    duration: float
    text: str
    segments: list[TranscriptionSegment]


def parse_params(cls: type[P], fields: Mapping[str, Any]) -> P:
    """Validate form fields; the first problem becomes a 400 naming the parameter."""
    try:
        return cls.model_validate(dict(fields))
    except ValidationError as exc:
        err = exc.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        message = "is required" if err["type"] == "missing" else err["msg"]
        raise InvalidRequest(f"'{param}' {message}.", param=param) from None
