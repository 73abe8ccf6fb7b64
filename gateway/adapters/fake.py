"""A behaving in-memory adapter for tests: enqueue results or failures, see what it was sent."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from gateway.adapters.base import InferRequest, InferResponse


class FakeAdapter:
    def __init__(self, name: str = "fake", *, healthy: bool = True) -> None:
        self.name = name
        self.healthy = healthy
        self.requests: list[InferRequest] = []
        self._results: deque[Any] = deque()
        self.closed = False

    def enqueue(self, *results: Any) -> None:
        """Each result is an `InferResponse`, a list of stream chunks, or an exception to raise.

        In a chunk list, an exception element is raised at that point of the stream.
        """
        self._results.extend(results)

    def _next(self, request: InferRequest) -> Any:
        self.requests.append(request)
        if not self._results:
            raise AssertionError(f"{self.name}: no result enqueued for {request.task}")
        result = self._results.popleft()
        if isinstance(result, BaseException):
            raise result
        return result

    async def predict(self, request: InferRequest) -> InferResponse:
        result = self._next(request)
        assert isinstance(result, InferResponse), "enqueue an InferResponse for predict()"
        return result

    async def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        for chunk in self._next(request):
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk

    async def health(self) -> bool:
        return self.healthy

    async def aclose(self) -> None:
        self.closed = True
