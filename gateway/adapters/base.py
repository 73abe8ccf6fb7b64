"""The one interface every backend implements, whatever protocol it speaks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Task = Literal["chat", "completion", "classify", "transcribe", "infer"]


@dataclass(frozen=True)
class InferRequest:
    """A request as the gateway hands it to a backend.

    `payload` is task-specific: the OpenAI JSON body for chat/completion, an `ImageBatch` for
    classify, an `AudioClip` for transcribe, KServe tensors for infer.
    """

    task: Task
    model: str  # the model's name at the backend
    payload: Any
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferResponse:
    body: Any
    status: int = 200


@runtime_checkable
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
