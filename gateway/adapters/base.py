"""The one interface every backend implements, whatever protocol it speaks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio

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
    priority: str = "normal"  # its class (high, normal, low): an engine may schedule by it
    # The request's context (gateway/scope/context.py), for the router's layers only: the
    # picker reads its caller, the backend records the endpoint that served it. Adapters ignore it.
    context: Any = field(default=None, compare=False, repr=False)


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


class OpenedStream:
    """A response stream whose first chunk has arrived (None: it ended without any): the first
    chunk, the rest as it comes, and one `aclose()` that closes the upstream stream and then
    runs what each layer that opened it registered (its admission slot, its endpoint's count),
    once, however the relay ends. Retries, breakers, picks and fallbacks wrap the opening of a
    stream, never its body (as httpx's `stream()`)."""

    def __init__(self, first: bytes | None, rest: AsyncIterator[bytes]) -> None:
        self.first = first
        self.rest = rest
        self._closers: list[Callable[[], None]] = []
        self._closed = False

    @classmethod
    async def open(cls, chunks: AsyncIterator[bytes]) -> OpenedStream:
        """Wait for the first chunk of `chunks` (a failure before it closes them)."""
        try:
            return cls(await anext(chunks), chunks)
        except StopAsyncIteration:
            return cls(None, chunks)
        except BaseException:
            await close_stream(chunks)
            raise

    def on_close(self, closer: Callable[[], None]) -> OpenedStream:
        self._closers.append(closer)
        return self

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await close_stream(self.rest)
        finally:
            for closer in reversed(self._closers):
                closer()

    async def chunks(self) -> AsyncIterator[bytes]:
        """Every chunk, the first included; closes the stream at the end."""
        try:
            if self.first is None:
                return
            yield self.first
            async for chunk in self.rest:
                yield chunk
        finally:
            await self.aclose()


async def close_stream(chunks: AsyncIterator[bytes]) -> None:
    """Close a stream even in a cancelled task (the client went away): shielded. A generator
    that has run to its end has nothing left to close (the common case: no cancel scope)."""
    close = getattr(chunks, "aclose", None)
    if close is None or getattr(chunks, "ag_frame", True) is None:
        return
    with anyio.CancelScope(shield=True):
        await close()
