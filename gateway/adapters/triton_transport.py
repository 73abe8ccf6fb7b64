"""The two ways to reach a Triton server: KServe V2 over gRPC or HTTP, with tritonclient's aio
clients. Both look the same to `TritonAdapter` and raise gateway errors naming the backend.

Any KServe V2 server works; what differs from Triton is handled here (MLServer, tested for real):
over HTTP tensors go in binary only to a server that lists the `binary_tensor_data` extension
(MLServer lists none and answers a binary body with a 422), else as JSON with its content type
(without one MLServer answers a 422 too); an error body that is not KServe's JSON (MLServer's 500
is a plain-text traceback) is cut to its last line.

    transport = make_transport("triton", "127.0.0.1:8001", protocol="grpc", timeout_s=30)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import aiohttp
import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http as httpclient
import tritonclient.http.aio as http_aio
from tritonclient.utils import InferenceServerException

from gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
)
from gateway.tensors import ModelMetadata, Tensor, TensorSpec

Protocol_ = Literal["http", "grpc"]

# tritonclient's own channel defaults, plus a short reconnect backoff: gRPC's default grows to
# 120 s, which would keep a restarted Triton unreachable long after it is back.
GRPC_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
BINARY_EXTENSION = "binary_tensor_data"
JSON_HEADERS = {"Content-Type": "application/json"}  # tritonclient's aio client sends none


class TritonTransport(Protocol):
    async def metadata(self, model: str, version: str) -> ModelMetadata: ...

    async def infer(
        self,
        model: str,
        version: str,
        inputs: Sequence[Tensor],
        outputs: Sequence[str],
        parameters: Mapping[str, Any],
        request_id: str = "",
    ) -> tuple[Tensor, ...]: ...

    async def server_ready(self) -> bool: ...

    async def model_ready(self, model: str, version: str) -> bool: ...

    async def aclose(self) -> None: ...


def make_transport(
    name: str, url: str, *, protocol: Protocol_, timeout_s: float
) -> TritonTransport:
    """One client for the upstream at `url` (host:port); call inside the serving event loop."""
    address = url.split("://", 1)[-1].rstrip("/")
    if protocol == "grpc":
        client = grpc_aio.InferenceServerClient(address, channel_args=GRPC_CHANNEL_ARGS)
        return GrpcTransport(name, client, timeout_s=timeout_s)
    client = http_aio.InferenceServerClient(address, conn_timeout=timeout_s)
    return HttpTransport(name, client, timeout_s=timeout_s)


class GrpcTransport:
    def __init__(self, name: str, client: Any, *, timeout_s: float) -> None:
        self.name = name
        self._client = client
        self._timeout_s = timeout_s

    async def metadata(self, model: str, version: str) -> ModelMetadata:
        try:
            meta = await self._client.get_model_metadata(
                model, version, client_timeout=self._timeout_s
            )
        except InferenceServerException as exc:
            raise self._error(exc) from None
        return ModelMetadata(
            name=meta.name,
            platform=meta.platform,
            versions=tuple(meta.versions),
            inputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in meta.inputs),
            outputs=tuple(TensorSpec(t.name, t.datatype, tuple(t.shape)) for t in meta.outputs),
        )

    async def infer(
        self,
        model: str,
        version: str,
        inputs: Sequence[Tensor],
        outputs: Sequence[str],
        parameters: Mapping[str, Any],
        request_id: str = "",
    ) -> tuple[Tensor, ...]:
        wire_inputs = []
        for tensor in inputs:
            wire = grpcclient.InferInput(tensor.name, list(tensor.shape), tensor.datatype)
            wire.set_data_from_numpy(tensor.data)
            wire_inputs.append(wire)
        wanted = [grpcclient.InferRequestedOutput(n) for n in outputs] or None
        try:
            result = await self._client.infer(
                model,
                wire_inputs,
                model_version=version,
                outputs=wanted,
                request_id=request_id,
                client_timeout=self._timeout_s,
                parameters=dict(parameters) or None,
            )
        except InferenceServerException as exc:
            raise self._error(exc) from None
        return tuple(
            Tensor(out.name, out.datatype, result.as_numpy(out.name))
            for out in result.get_response().outputs
        )

    async def server_ready(self) -> bool:
        return bool(await self._client.is_server_ready(client_timeout=2.0))

    async def model_ready(self, model: str, version: str) -> bool:
        return bool(await self._client.is_model_ready(model, version, client_timeout=2.0))

    async def aclose(self) -> None:
        await self._client.close()

    def _error(self, exc: InferenceServerException) -> GatewayError:
        status, message = str(exc.status() or ""), exc.message() or str(exc)
        if status == "StatusCode.RESOURCE_EXHAUSTED" or (
            status == "StatusCode.UNAVAILABLE" and _queue_full(message)
        ):
            return BackendOverloaded(self.name, message)
        if status == "StatusCode.UNAVAILABLE":
            return BackendUnavailable(self.name, message)
        if status == "StatusCode.DEADLINE_EXCEEDED":
            return BackendTimeout(self.name, self._timeout_s)
        if status == "StatusCode.INVALID_ARGUMENT":
            return InvalidRequest(message)
        return BackendError(self.name, f"{status.removeprefix('StatusCode.')}: {message}")


class HttpTransport:
    def __init__(self, name: str, client: Any, *, timeout_s: float) -> None:
        self.name = name
        self._client = client
        self._timeout_s = timeout_s
        self._binary: bool | None = None  # the server takes binary tensors; asked once

    async def metadata(self, model: str, version: str) -> ModelMetadata:
        meta = await self._call(self._client.get_model_metadata(model, version))
        return ModelMetadata(
            name=meta["name"],
            platform=meta.get("platform", ""),
            versions=tuple(meta.get("versions", ())),
            inputs=tuple(_spec(t) for t in meta.get("inputs", ())),
            outputs=tuple(_spec(t) for t in meta.get("outputs", ())),
        )

    async def infer(
        self,
        model: str,
        version: str,
        inputs: Sequence[Tensor],
        outputs: Sequence[str],
        parameters: Mapping[str, Any],
        request_id: str = "",
    ) -> tuple[Tensor, ...]:
        binary = await self._binary_tensors()
        wire_inputs = []
        for tensor in inputs:
            wire = httpclient.InferInput(tensor.name, list(tensor.shape), tensor.datatype)
            wire.set_data_from_numpy(tensor.data, binary_data=binary)
            wire_inputs.append(wire)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in outputs] or None
        result = await self._call(
            self._client.infer(
                model,
                wire_inputs,
                model_version=version,
                outputs=wanted,
                request_id=request_id,
                parameters=dict(parameters) or None,
                headers=None if binary else dict(JSON_HEADERS),  # MLServer reads JSON by it
            )
        )
        return tuple(
            Tensor(out["name"], out["datatype"], _as_array(result, out))
            for out in result.get_response()["outputs"]
        )

    async def server_ready(self) -> bool:
        return bool(await self._call(self._client.is_server_ready()))

    async def _binary_tensors(self) -> bool:
        if self._binary is None:
            meta = await self._call(self._client.get_server_metadata())
            self._binary = BINARY_EXTENSION in (meta.get("extensions") or ())
        return self._binary

    async def model_ready(self, model: str, version: str) -> bool:
        return bool(await self._call(self._client.is_model_ready(model, version)))

    async def aclose(self) -> None:
        await self._client.close()

    async def _call(self, call: Any) -> Any:
        try:
            return await call
        except InferenceServerException as exc:
            raise self._error(exc) from None
        except (TimeoutError, aiohttp.ServerTimeoutError):
            raise BackendTimeout(self.name, self._timeout_s) from None
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise BackendUnavailable(self.name, f"{type(exc).__name__}: {exc}") from None
        except aiohttp.ClientError as exc:
            raise BackendError(self.name, f"{type(exc).__name__}: {exc}") from None

    def _error(self, exc: InferenceServerException) -> GatewayError:
        status, message = str(exc.status() or ""), _message(exc)
        if status == "400":
            return InvalidRequest(message)
        if status == "429" or (status == "503" and _queue_full(message)):
            return BackendOverloaded(self.name, message)
        if status == "503":
            return BackendUnavailable(self.name, message)
        return BackendError(self.name, f"HTTP {status or '?'}: {message}")


def _message(exc: InferenceServerException) -> str:
    """The server's message; of a body that is not KServe's JSON error (tritonclient then keeps
    the body as `debug_details`), its last line: a Python traceback ends with the error."""
    body = exc.debug_details()
    if not isinstance(body, str) or not body.strip():
        return exc.message() or str(exc)
    return body.strip().splitlines()[-1][:500]


def _queue_full(message: str) -> bool:
    """Triton's words when its scheduler queue is full ("Exceeds maximum queue size")."""
    return "queue" in message.lower()


def _spec(tensor: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(tensor["name"], tensor["datatype"], tuple(int(d) for d in tensor["shape"]))


def _as_array(result: Any, output: Mapping[str, Any]) -> np.ndarray:
    array = result.as_numpy(output["name"])
    if array is None:  # an output with no data at all
        return np.empty([int(d) for d in output.get("shape", [0])], dtype=np.float32)
    return np.asarray(array)
