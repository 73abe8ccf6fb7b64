"""KServe V2 routes (Triton's HTTP protocol): tensor models on Triton backends and the bundled
image and speech runners (gateway/adapters/pixels.py, transcript_tensors.py). Errors come back in
KServe's shape, `{"error": "..."}`. The same models are served over gRPC (gateway/kserve/grpc.py).
Health answers in the Open Inference Protocol's shape, `{"live": true}` and `{"ready": ...}` (503
when not ready), which KServe's own `InferenceRESTClient` parses.

    client = tritonclient.http.InferenceServerClient("localhost:3000")
    client.get_model_metadata("demo-resnet")
    x = tritonclient.http.InferInput("pixel_values", [1, 3, 224, 224], "FP32")
    x.set_data_from_numpy(pixels)
    client.infer("demo-resnet", [x]).as_numpy("probabilities")
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api.common import context, read_body, router_of
from gateway.kserve.codec import (
    HEADER_LENGTH,
    SERVER,
    decode_request,
    encode_response,
    metadata_body,
    resolve,
)
from gateway.routing.registry import Route as ModelRoute


async def server_metadata(request: Request) -> Response:
    return JSONResponse(SERVER)


async def server_live(request: Request) -> Response:
    return JSONResponse({"live": True})


async def server_ready(request: Request) -> Response:
    ready = await router_of(request).ready()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


async def model_metadata(request: Request) -> Response:
    route, version = _resolve(request)
    meta = await router_of(request).metadata(route, version)
    return JSONResponse(metadata_body(meta))


async def model_ready(request: Request) -> Response:
    route, version = _resolve(request)
    ready = await router_of(request).model_ready(route, version)
    return JSONResponse({"name": route.name, "ready": ready}, status_code=200 if ready else 503)


async def infer(request: Request) -> Response:
    route, version = _resolve(request)
    limits = request.app.state.settings.limits
    decoded = decode_request(
        await read_body(request, limit=limits.max_request_bytes),
        version=version,
        header_length=request.headers.get(HEADER_LENGTH),
        max_bytes_elements=limits.max_bytes_elements,
    )
    result = await router_of(request).predict(route, "infer", decoded.tensors, context(request))
    body, headers = encode_response(route.name, version, decoded, result.body)
    return Response(body, status_code=result.status, headers=headers)


def _resolve(request: Request) -> tuple[ModelRoute, str]:
    name, version = request.path_params["model"], request.path_params.get("version", "")
    return resolve(router_of(request), name, version, context(request))


routes = [
    Route("/v2", server_metadata, methods=["GET"]),
    Route("/v2/health/live", server_live, methods=["GET"]),
    Route("/v2/health/ready", server_ready, methods=["GET"]),
    Route("/v2/models/{model}", model_metadata, methods=["GET"]),
    Route("/v2/models/{model}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{model}/infer", infer, methods=["POST"]),
    Route("/v2/models/{model}/versions/{version}", model_metadata, methods=["GET"]),
    Route("/v2/models/{model}/versions/{version}/ready", model_ready, methods=["GET"]),
    Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
]
