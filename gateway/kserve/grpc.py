"""KServe V2 over gRPC (Triton's `inference.GRPCInferenceService`), so `tritonclient.grpc` works
against the gateway unchanged::

    client = tritonclient.grpc.InferenceServerClient("localhost:8001")
    x = tritonclient.grpc.InferInput("pixel_values", [1, 3, 224, 224], "FP32")
    x.set_data_from_numpy(pixels)
    client.infer("demo-resnet", [x]).as_numpy("probabilities")

It serves the models /v2 serves over HTTP (gateway/kserve/http.py), through the same router, with
the same request scope (gateway/scope/pipeline.py): a request id (metadata `x-request-id`, else the
infer request's `id`), the API key (metadata `authorization: Bearer <key>` or `api-key`) when keys
are configured, the key's rate limits, the response cache, the access log. Answers carry `x-request-
id` (and `x-ratelimit-*`, `x-cache`) as trailing metadata; errors are gRPC statuses (`STATUS_CODES`)
with the message the HTTP route would give. The access log and the request metrics count each call
like an HTTP request: method `GRPC`, path `/inference.GRPCInferenceService/<RPC>`, and the HTTP
status of its answer (200, or the error's).

ServerLive, ServerReady, ServerMetadata, ModelReady, ModelMetadata and ModelInfer are served; the
other RPCs (streaming, model config and statistics, repository, shared memory, trace and log
settings) answer UNIMPLEMENTED. Tensors come as typed contents or `raw_input_contents` (what
tritonclient sends); outputs go back as `raw_output_contents`, as Triton sends them.

The server runs in the gateway worker's event loop, on `gateway.grpc_port`. Every worker binds the
same port with SO_REUSEPORT (gRPC's default on Linux, set here explicitly) and the kernel spreads
connections over them. Messages over `limits.max_request_bytes` are refused by gRPC itself with
RESOURCE_EXHAUSTED. While the worker drains (lifecycle.py) new calls get UNAVAILABLE and calls in
flight count towards the drain, like HTTP requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.errors import RETRY_AFTER_S, GatewayError, InvalidRequest
from gateway.kserve.codec import SERVER, check_elements, decode_tensor, resolve, to_bytes
from gateway.routing.router import Router
from gateway.scope.context import RequestContext
from gateway.scope.pipeline import PipelineParts
from gateway.tensors import Tensor, TensorRequest
from lifecycle import DRAIN
from settings import Settings

log = logging.getLogger("gateway.grpc")

SERVICE = "inference.GRPCInferenceService"
M = TypeVar("M")

# GatewayError statuses as gRPC codes; any other status is INTERNAL.
STATUS_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.INVALID_ARGUMENT,  # a body, file or audio too large: the message says
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}

# Typed contents (InferTensorContents) by datatype; FP16 travels only as raw bytes.
CONTENTS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

UNIMPLEMENTED_RPCS = (
    "ModelStreamInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "SystemSharedMemoryStatus",
    "SystemSharedMemoryRegister",
    "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus",
    "CudaSharedMemoryRegister",
    "CudaSharedMemoryUnregister",
    "TraceSetting",
    "LogSettings",
)


def grpc_code(status: int) -> grpc.StatusCode:
    """The gRPC status code for a GatewayError's HTTP status."""
    return STATUS_CODES.get(int(status), grpc.StatusCode.INTERNAL)


class GrpcServer:
    """The gRPC server of one gateway worker; make it where the serving event loop runs.

    server = GrpcServer(lambda: app.state.router, settings, lambda: app.state.pipeline)
    await server.start()        # or server.start_soon() from synchronous code in the loop
    ...
    await server.stop()         # grace: drain.final_grace_s
    """

    def __init__(
        self,
        router: Callable[[], Router],
        settings: Settings,
        pipeline: Callable[[], PipelineParts],
        *,
        host: str = "0.0.0.0",
        port: int | None = None,
    ) -> None:
        port = settings.gateway.grpc_port if port is None else port
        if port is None:
            raise ValueError("gateway.grpc_port is not set")
        self.settings = settings
        self.host = host
        self.port = port  # the bound port once started (a requested 0 picks a free one)
        self._servicer = KServeServicer(router, settings, pipeline)
        self._server: grpc.aio.Server | None = None
        self._starting: asyncio.Task[int] | None = None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def bind(self) -> int:
        """Make the server and bind its port (RuntimeError if it cannot); the port bound."""
        if self._server is not None:
            return self.port
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.settings.limits.max_request_bytes),
                ("grpc.so_reuseport", 1),  # every gateway worker binds the same port
            ]
        )
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self._servicer, server)
        try:
            self.port = server.add_insecure_port(self.address)
        except RuntimeError:
            raise RuntimeError(
                f"gateway.grpc_port: cannot bind {self.address} for KServe V2 over gRPC; is "
                "another program (one without SO_REUSEPORT, such as Triton) listening on it?"
            ) from None
        self._server = server
        return self.port

    async def start(self) -> int:
        """Bind and start serving; the port bound."""
        port = self.bind()
        assert self._server is not None
        await self._server.start()
        log.info("KServe V2 over gRPC on %s", self.address)
        return port

    def start_soon(self) -> int:
        """Bind now (failing at once if the port cannot be bound) and start serving on the
        running event loop: for a BentoML service's synchronous `__init__`."""
        port = self.bind()
        self._starting = asyncio.get_running_loop().create_task(self.start())
        self._starting.add_done_callback(_log_failure)
        return port

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls; calls in flight get `grace` seconds (drain.final_grace_s)."""
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
            self._starting = None
        if self._server is not None:
            await self._server.stop(self.settings.drain.final_grace_s if grace is None else grace)
            self._server = None


def _log_failure(task: asyncio.Task[int]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("KServe V2 over gRPC did not start", exc_info=task.exception())


def serve_grpc(app: Any, settings: Settings) -> GrpcServer | None:
    """Start KServe V2 over gRPC beside `app` (after `install`) when `gateway.grpc_port` is set;
    None when it is not. Call it in the serving event loop (a BentoML service's `__init__`)."""
    if settings.gateway.grpc_port is None:
        return None
    server = GrpcServer(lambda: app.state.router, settings, lambda: app.state.pipeline)
    server.start_soon()
    return server


class KServeServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        router: Callable[[], Router],
        settings: Settings,
        pipeline: Callable[[], PipelineParts],
    ) -> None:
        self._router = router
        self._settings = settings
        self._pipeline = pipeline

    async def ServerLive(self, request: Any, context: Any) -> Any:
        async def handle(ctx: RequestContext) -> Any:
            return service_pb2.ServerLiveResponse(live=True)

        return await self._serve("ServerLive", context, handle)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        async def handle(ctx: RequestContext) -> Any:
            ready = not DRAIN.draining and await self._router().ready()
            return service_pb2.ServerReadyResponse(ready=ready)

        return await self._serve("ServerReady", context, handle)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        async def handle(ctx: RequestContext) -> Any:
            return service_pb2.ServerMetadataResponse(
                name=SERVER["name"], version=SERVER["version"], extensions=SERVER["extensions"]
            )

        return await self._serve("ServerMetadata", context, handle)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def handle(ctx: RequestContext) -> Any:
            router = self._router()
            route, version = resolve(router, request.name, request.version, ctx)
            ready = await router.model_ready(route, version)
            return service_pb2.ModelReadyResponse(ready=ready)

        return await self._serve("ModelReady", context, handle)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def handle(ctx: RequestContext) -> Any:
            router = self._router()
            route, version = resolve(router, request.name, request.version, ctx)
            meta = await router.metadata(route, version)
            spec = service_pb2.ModelMetadataResponse.TensorMetadata
            return service_pb2.ModelMetadataResponse(
                name=meta.name,
                versions=list(meta.versions),
                platform=meta.platform,
                inputs=[spec(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.inputs],
                outputs=[
                    spec(name=t.name, datatype=t.datatype, shape=t.shape) for t in meta.outputs
                ],
            )

        return await self._serve("ModelMetadata", context, handle)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        async def handle(ctx: RequestContext) -> Any:
            router = self._router()
            route, version = resolve(router, request.model_name, request.model_version, ctx)
            limit = self._settings.limits.max_bytes_elements
            tensors = decode_infer(request, version, max_bytes_elements=limit)
            result = await router.predict(route, "infer", tensors, ctx)
            return encode_infer(route.name, version, request.id, result.body)

        return await self._serve("ModelInfer", context, handle, client_id=request.id)

    async def _serve(
        self,
        method: str,
        context: Any,
        handle: Callable[[RequestContext], Awaitable[M]],
        *,
        client_id: str = "",
    ) -> M:
        """One call in the request scope (gateway/scope/pipeline.py), as HTTP requests are: a
        GatewayError becomes the call's status; the trailing metadata goes out either way."""
        call = self._pipeline().request(
            _metadata(context), "GRPC", f"/{SERVICE}/{method}", client_id=client_id
        )
        try:
            async with call:
                response = await handle(call.ctx)
                call.ctx.status, call.ctx.first_byte = 200, time.perf_counter()
        except GatewayError as err:
            trailing = _trailing(call.response_headers(), err)
            await context.abort(grpc_code(err.status), err.message, trailing_metadata=trailing)
        context.set_trailing_metadata(_trailing(call.response_headers(), None))
        return response


def _unimplemented(name: str) -> Callable[..., Awaitable[Any]]:
    async def rpc(self: KServeServicer, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not served by this gateway.")

    rpc.__name__ = name
    return rpc


for _name in UNIMPLEMENTED_RPCS:
    setattr(KServeServicer, _name, _unimplemented(_name))


def decode_infer(request: Any, version: str, *, max_bytes_elements: int) -> TensorRequest:
    """The tensors of a ModelInferRequest: raw_input_contents (one per input, in input order)
    or each input's typed contents; a BYTES input over `max_bytes_elements` is refused on its
    shape, before its contents are listed."""
    if not request.inputs:
        raise InvalidRequest("Not a KServe V2 inference request: inputs: none given.")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "send one per input, in input order."
        )
    inputs = []
    for index, wire in enumerate(request.inputs):
        if any(k.startswith("shared_memory") for k in wire.parameters):
            raise InvalidRequest(f"Input '{wire.name}': shared memory is not supported.")
        if raw:
            inputs.append(
                decode_tensor(
                    wire.name,
                    wire.datatype,
                    wire.shape,
                    raw=raw[index],
                    max_bytes_elements=max_bytes_elements,
                )
            )
            continue
        field = CONTENTS.get(wire.datatype)
        if field is None:  # an unknown datatype gets its error from decode_tensor
            if wire.datatype == "FP16":
                raise InvalidRequest(f"Input '{wire.name}': FP16 needs raw_input_contents.")
            inputs.append(decode_tensor(wire.name, wire.datatype, wire.shape, data=[]))
            continue
        count = check_elements(wire.name, wire.datatype, wire.shape, limit=max_bytes_elements)
        contents = getattr(wire.contents, field)
        if len(contents) != count:
            raise InvalidRequest(
                f"Input '{wire.name}': {len(contents)} values do not fill shape {list(wire.shape)}"
            )
        inputs.append(
            decode_tensor(
                wire.name,
                wire.datatype,
                wire.shape,
                data=list(contents),
                max_bytes_elements=max_bytes_elements,
            )
        )
    return TensorRequest(
        inputs=tuple(inputs),
        outputs=tuple(o.name for o in request.outputs),
        version=version,
        id=request.id,
        parameters=parameters_of(request.parameters),
    )


def encode_infer(model: str, version: str, id_: str, outputs: Sequence[Tensor]) -> Any:
    """A ModelInferResponse with every output in raw_output_contents, in output order."""
    response = service_pb2.ModelInferResponse(model_name=model, model_version=version, id=id_)
    for tensor in outputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        response.raw_output_contents.append(to_bytes(tensor))
    return response


def parameters_of(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """InferParameters as plain values (bool, int, str, float)."""
    values = {}
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        if choice is not None:
            values[key] = getattr(parameter, choice)
    return values


def _metadata(context: Any) -> dict[str, str]:
    """The call's text metadata by lowercase key (binary `-bin` entries left out)."""
    headers: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            headers[key.lower()] = value
    return headers


def _trailing(headers: dict[str, str], error: GatewayError | None) -> tuple[tuple[str, str], ...]:
    entries = {k.lower(): v for k, v in headers.items()}
    if error is not None:
        entries.update({k.lower(): v for k, v in error.headers.items()})
        if error.status == 503:
            entries.setdefault("retry-after", RETRY_AFTER_S)
    return tuple((k, v) for k, v in entries.items() if v.isascii() and v.isprintable())
