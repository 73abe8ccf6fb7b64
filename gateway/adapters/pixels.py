"""KServe V2 tensors for the bundled image runner: one FP32 input in, probabilities out.

Wraps the vision runner's adapter (gateway/adapters/runner.py) and passes every other task
through, so the backend keeps one name, one breaker and one client::

    POST /v2/models/demo-resnet/infer
    {"inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [1, 3, 224, 224],
                 "data": [...]}]}
    -> {"outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 10], ...}]}
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from gateway.adapters.base import InferRequest, InferResponse
from gateway.errors import InvalidRequest
from gateway.kserve.codec import check_inputs, check_outputs
from gateway.tensors import ModelMetadata, Tensor, TensorRequest, TensorSpec

INPUT = "pixel_values"
OUTPUT = "probabilities"


class PixelTensorAdapter:
    """`infer` with a `TensorRequest` on top of a runner adapter whose `infer` takes pixels."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner  # a VisionRunnerAdapter: predict(infer: ndarray) and info()
        self.name: str = inner.name

    async def predict(self, request: InferRequest) -> InferResponse:
        if not isinstance(request.payload, TensorRequest):
            return await self.inner.predict(request)
        tensors: TensorRequest = request.payload
        meta = await self.metadata(request.model, tensors.version)
        check_inputs(tensors.inputs, meta.inputs)
        check_outputs(tensors.outputs, meta.outputs)
        if len(tensors.inputs) != 1:
            raise InvalidRequest(f"Expected exactly one input, '{INPUT}'.")
        pixels = tensors.inputs[0].data  # its shape and datatype checked above, against the model
        if pixels.shape[0] == 0 or not np.isfinite(pixels).all():
            raise InvalidRequest("Expected at least one image and only finite pixel values.")
        payload = np.ascontiguousarray(pixels, dtype=np.float32)  # a bad one would fail a batch
        result = await self.inner.predict(dataclasses.replace(request, payload=payload))
        probabilities = np.asarray(result.body, dtype=np.float32)
        return InferResponse((Tensor(OUTPUT, "FP32", probabilities),))

    def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        return self.inner.stream(request)

    async def metadata(self, model: str, version: str) -> ModelMetadata:
        info = await self.inner.info()
        return ModelMetadata(
            name=model,
            platform="bentoml",
            versions=(),
            inputs=(TensorSpec(INPUT, "FP32", (-1, *info.input_shape)),),
            outputs=(TensorSpec(OUTPUT, "FP32", (-1, len(info.labels))),),
        )

    async def model_ready(self, model: str, version: str) -> bool:
        return await self.health()

    async def health(self) -> bool:
        return bool(await self.inner.health())

    async def aclose(self) -> None:
        await self.inner.aclose()
