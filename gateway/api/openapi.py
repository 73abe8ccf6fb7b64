"""GET /openapi.json: an OpenAPI 3.1 document of the gateway's HTTP routes (/v1, /v2, /status).

BentoML's own `/docs` and `/docs.json` describe the Gateway's typed APIs; this describes the
routes the OpenAI and KServe clients use. Paths and methods come from the app's routes, so the
document cannot drift from them; the request bodies from the routes' own pydantic schemas.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from gateway.api import embeddings
from gateway.api.media_protocol import (
    ClassificationParams,
    ClassificationResponse,
    TranscriptionParams,
    TranscriptionVerbose,
    TranslationParams,
)
from gateway.kserve.codec import InferBody

OPENAI_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": "string"},
            },
        }
    },
}
KSERVE_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}}
OPENAI_BODY = {  # the engine's own schema (vLLM's) applies; every field passes through
    "type": "object",
    "required": ["model"],
    "properties": {"model": {"type": "string"}, "stream": {"type": "boolean"}},
    "additionalProperties": True,
}


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template="#/components/schemas/{model}")


def _upload(params: type[BaseModel], media: str) -> dict[str, Any]:
    schema = _schema(params)
    schema["properties"]["file"] = {"type": "string", "contentMediaType": f"{media}/*"}
    schema.setdefault("required", []).append("file")
    return {"content": {"multipart/form-data": {"schema": schema}}}


BODIES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"content": {"application/json": {"schema": OPENAI_BODY}}},
    "/v1/completions": {"content": {"application/json": {"schema": OPENAI_BODY}}},
    "/v1/responses": {"content": {"application/json": {"schema": OPENAI_BODY}}},
    "/v1/images/classifications": _upload(ClassificationParams, "image"),
    "/v1/audio/transcriptions": _upload(TranscriptionParams, "audio"),
    "/v1/audio/translations": _upload(TranslationParams, "audio"),
    "/v1/embeddings": {"content": {"application/json": {"schema": embeddings.SCHEMA}}},
    "/v2/models/{model}/infer": {"content": {"application/json": {"schema": _schema(InferBody)}}},
    "/v2/models/{model}/versions/{version}/infer": {
        "content": {"application/json": {"schema": _schema(InferBody)}}
    },
}
ANSWERS: dict[str, dict[str, Any]] = {
    "/v1/images/classifications": _schema(ClassificationResponse),
    "/v1/audio/transcriptions": _schema(TranscriptionVerbose),
}


def document(routes: list[Any]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not isinstance(route, Route) or route.path in ("/openapi.json", "/docs"):
            continue
        path = route.path.replace("{model:path}", "{model}")
        error = KSERVE_ERROR if path.startswith("/v2") else OPENAI_ERROR
        for method in sorted((route.methods or set()) - {"HEAD"}):
            doc = (route.endpoint.__doc__ or route.endpoint.__name__).strip().splitlines()[0]
            ok: dict[str, Any] = {"description": "OK"}
            if path in ANSWERS:
                ok["content"] = {"application/json": {"schema": ANSWERS[path]}}
            operation: dict[str, Any] = {
                "summary": doc,
                "operationId": f"{route.endpoint.__name__}_{method.lower()}",
                "responses": {
                    "200": ok,
                    "4XX": {"description": "The request's fault",
                            "content": {"application/json": {"schema": error}}},
                    "5XX": {"description": "A backend's fault (names it; 503s carry Retry-After)",
                            "content": {"application/json": {"schema": error}}},
                },
            }  # fmt: skip
            params = [p.strip("{}").split(":")[0] for p in path.split("/") if p.startswith("{")]
            if params:
                operation["parameters"] = [
                    {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                    for p in params
                ]
            if method == "POST" and path in BODIES:
                operation["requestBody"] = BODIES[path]
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "serving-bundle gateway",
            "version": "1",
            "description": "OpenAI-compatible routes on /v1, KServe V2 on /v2. With API keys "
            "configured, send `Authorization: Bearer <key>`.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }


async def openapi(request: Request) -> Response:
    """This document."""
    return JSONResponse(document(request.app.routes))


async def docs(request: Request) -> Response:
    """BentoML's API page (Swagger UI of the typed APIs) is the service's root, `/`."""
    return RedirectResponse("/", status_code=307)


routes = [
    Route("/openapi.json", openapi, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
]
