"""Adapter for a Triton Inference Server (or any KServe V2 server) over gRPC or HTTP.

A model's inputs, outputs and datatypes are discovered from its metadata on first use and kept,
so a request that names an unknown input, a wrong datatype or an impossible shape is refused with
a 400 before it reaches the server::

    adapter = TritonAdapter("triton", make_transport("triton", "127.0.0.1:8001", protocol="grpc",
                                                     timeout_s=30))
    meta = await adapter.metadata("classify", "")
    result = await adapter.predict(InferRequest("infer", "classify", TensorRequest(inputs=...)))
    result.body  # tuple[Tensor, ...]
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from gateway.adapters.base import InferRequest, InferResponse
from gateway.adapters.triton_transport import TritonTransport
from gateway.errors import InvalidRequest
from gateway.kserve.codec import check_declared
from gateway.tensors import ModelMetadata, TensorRequest

# Request parameters that are KServe or Triton controls, not the model's own options.
RESERVED_PARAMETERS = frozenset(
    {"sequence_id", "sequence_start", "sequence_end", "priority", "timeout", "headers",
     "binary_data_output"}
)  # fmt: skip


class TritonAdapter:
    def __init__(self, name: str, transport: TritonTransport) -> None:
        self.name = name
        self._transport = transport
        self._metadata: dict[tuple[str, str], ModelMetadata] = {}

    async def predict(self, request: InferRequest) -> InferResponse:
        if request.task != "infer" or not isinstance(request.payload, TensorRequest):
            raise InvalidRequest(f"The '{self.name}' backend only serves KServe V2 tensors.")
        tensors: TensorRequest = request.payload
        meta = await self.metadata(request.model, tensors.version)
        check_declared(tensors, meta)
        parameters = {
            k: v
            for k, v in tensors.parameters.items()
            if k not in RESERVED_PARAMETERS and not k.startswith("triton_")
        }
        outputs = await self._transport.infer(
            request.model,
            tensors.version,
            tensors.inputs,
            tensors.outputs,
            parameters,
            request_id=tensors.id or request.request_id or "",  # Triton logs it
        )
        return InferResponse(outputs)

    def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        raise InvalidRequest(f"Streaming is not supported for '{request.task}'.")

    async def metadata(self, model: str, version: str) -> ModelMetadata:
        key = (model, version)
        if key not in self._metadata:
            self._metadata[key] = await self._transport.metadata(model, version)
        return self._metadata[key]

    async def model_ready(self, model: str, version: str) -> bool:
        try:
            return await self._transport.model_ready(model, version)
        except Exception:
            return False

    async def health(self) -> bool:
        try:
            return await self._transport.server_ready()
        except Exception:
            return False

    async def aclose(self) -> None:
        self._metadata.clear()
        await self._transport.aclose()
