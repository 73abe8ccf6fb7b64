"""The one interface every backend implements, whatever protocol it speaks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Task = Literal["chat", "completion", "responses", "classify", "transcribe", "infer", "embed"]


@dataclass(frozen=True, eq=False)
class Embeddings:
    """The `embed` task's body: one float32 row per input, and the tokens the model read."""

    vectors: Any  # numpy float32 ndarray (inputs, dimensions)
    tokens: int


@dataclass(frozen=True)
class InferRequest:
    """A request as the gateway hands it to a backend.

    `payload` is task-specific: the OpenAI JSON body for chat/completion, an `ImageBatch` for
    classify, an `AudioClip` for transcribe, KServe tensors for infer, the inputs (texts or
    token-id lists) for embed.
    """

    task: Task
    model: str  # the model's name at the backend
    payload: Any
    options: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None  # the gateway's id of the request, passed to the backend


@dataclass(frozen=True)
class InferResponse:
    body: Any
    status: int = 200


@dataclass(frozen=True)
class Segment:
    id: int
    start: float  # seconds
    end: float
    text: str
    tokens: tuple[int, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass(frozen=True)
class Transcript:
    """The body of a `transcribe` response, whichever backend made it."""

    text: str
    language: str | None  # ISO code
    duration: float  # seconds of audio
    segments: tuple[Segment, ...]
    temperature: float = 0.0
    language_name: str | None = None  # as OpenAI names it ("german")
    task: str = "transcribe"  # or "translate" (into English)


class InferenceAdapter(Protocol):
    name: str  # the backend's name, used in errors, metrics and the status endpoint

    async def predict(self, request: InferRequest) -> InferResponse: ...

    def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        """Yield the response as it is produced (server-sent events for OpenAI backends).

        Raises a `GatewayError` before the first chunk if the backend refuses the request.
        """
        ...

    async def health(self) -> bool: ...

    async def aclose(self) -> None: ...
