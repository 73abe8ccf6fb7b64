"""Behaving in-memory fakes for tests: an adapter to enqueue results or failures into, and a
Triton transport serving numpy functions."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from gateway.adapters.base import InferRequest, InferResponse
from gateway.errors import BackendError, BackendUnavailable
from gateway.tensors import ModelMetadata, Tensor

TensorFunction = Callable[[dict[str, np.ndarray]], Mapping[str, Any]]


class FakeAdapter:
    def __init__(self, name: str = "fake", *, healthy: bool = True) -> None:
        self.name = name
        self.healthy = healthy
        self.requests: list[InferRequest] = []
        self._results: deque[Any] = deque()
        self.closed = False

    def enqueue(self, *results: Any) -> None:
        """Each result is an `InferResponse`, a list of stream chunks, or an exception to raise.

        In a chunk list, an exception element is raised at that point of the stream. A future
        makes predict() (or the stream, in a chunk list) wait until it is resolved.
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
        if isinstance(result, asyncio.Future):  # a slow backend: answers when it is resolved
            result = await result
        assert isinstance(result, InferResponse), "enqueue an InferResponse for predict()"
        return result

    async def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        for chunk in self._next(request):
            if isinstance(chunk, asyncio.Future):
                chunk = await chunk
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk

    async def health(self) -> bool:
        return self.healthy

    async def aclose(self) -> None:
        self.closed = True


class FakeTriton:
    """A behaving `TritonTransport`: models are numpy functions; it can be taken down.

    fake = FakeTriton({"double": (metadata, lambda inputs: {"OUT": inputs["IN"] * 2})})
    fake.down = True            # every call fails like an unreachable server
    fake.fail_next(BackendError("triton", "boom"))
    """

    def __init__(self, models: dict[str, tuple[ModelMetadata, TensorFunction]]) -> None:
        self.models = models
        self.down = False
        self.calls: list[tuple[str, str, tuple[Tensor, ...], dict[str, Any]]] = []
        self.metadata_calls = 0
        self.request_ids: list[str] = []
        self.closed = False
        self._failures: deque[BaseException] = deque()

    def fail_next(self, *errors: BaseException) -> None:
        self._failures.extend(errors)

    async def metadata(self, model: str, version: str) -> ModelMetadata:
        self._check()
        self.metadata_calls += 1
        return self._model(model)[0]

    async def infer(
        self,
        model: str,
        version: str,
        inputs: Sequence[Tensor],
        outputs: Sequence[str],
        parameters: Mapping[str, Any],
        request_id: str = "",
    ) -> tuple[Tensor, ...]:
        self._check()
        self.calls.append((model, version, tuple(inputs), dict(parameters)))
        self.request_ids.append(request_id)
        meta, fn = self._model(model)
        results = fn({t.name: t.data for t in inputs})
        wanted = outputs or [s.name for s in meta.outputs]
        types = {s.name: s.datatype for s in meta.outputs}
        return tuple(Tensor(n, types[n], np.asarray(results[n])) for n in wanted)

    async def server_ready(self) -> bool:
        self._check()
        return True

    async def model_ready(self, model: str, version: str) -> bool:
        self._check()
        return model in self.models

    async def aclose(self) -> None:
        self.closed = True

    def _check(self) -> None:
        if self.down:
            raise BackendUnavailable("triton", "ConnectError: connection refused")
        if self._failures:
            raise self._failures.popleft()

    def _model(self, model: str) -> tuple[ModelMetadata, TensorFunction]:
        if model not in self.models:
            raise BackendError("triton", f"NOT_FOUND: unknown model '{model}'")
        return self.models[model]
