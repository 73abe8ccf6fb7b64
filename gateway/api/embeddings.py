"""Text embeddings, OpenAI-compatible: POST /v1/embeddings.

    curl -s localhost:3000/v1/embeddings -H 'content-type: application/json' \\
         -d '{"model": "demo-embed", "input": ["a cat", "a dog"]}'

    client = openai.OpenAI(base_url="http://localhost:3000/v1", api_key="unused")
    client.embeddings.create(model="demo-embed", input=["a cat", "a dog"]).data[0].embedding

    {"object": "list", "model": "demo-embed",
     "data": [{"object": "embedding", "index": 0, "embedding": [0.021, -0.113, ...]}, ...],
     "usage": {"prompt_tokens": 8, "total_tokens": 8}}

`input` is a string, a list of strings, a list of token ids or a list of such lists (at most 2048
inputs, none empty). Token ids are the model's own, exactly as it reads them (for a BERT model
with its [CLS] and [SEP]). An input over the model's token limit is refused with a 400
(`context_length_exceeded`), as OpenAI does; nothing is truncated. `encoding_format: "base64"`
answers each vector as base64 of its little-endian float32 bytes (what the openai client asks for
by default); `dimensions` keeps the first N values of each vector and scales it back to unit
length. Token counts are the model's, special tokens included.
"""

from __future__ import annotations

import base64
from typing import Any, Literal

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.adapters.base import Embeddings
from gateway.api.common import context, read_json_object, router_of
from gateway.errors import InvalidRequest
from gateway.routing.router import Router
from gateway.scope.context import RequestContext

MAX_INPUTS = 2048  # OpenAI's limit on the inputs of one request

Inputs = list[str] | list[list[int]]

SCHEMA = {  # the request body, for /openapi.json
    "type": "object",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string"},
        "input": {
            "anyOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}},
                {"type": "array", "items": {"type": "integer"}},
                {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
            ]
        },
        "encoding_format": {"enum": ["float", "base64"], "default": "float"},
        "dimensions": {"type": "integer", "minimum": 1},
        "user": {"type": "string"},
    },
}


async def create_embeddings(request: Request) -> Response:
    """POST /v1/embeddings: a vector per input, in OpenAI's shape (float or base64)."""
    body = await read_json_object(
        request, limit=request.app.state.settings.limits.max_request_bytes
    )
    return JSONResponse(await embed(router_of(request), context(request), body))


async def embed(router: Router, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI response to an OpenAI embeddings body; its tokens are counted on `ctx`."""
    route = router.resolve(body.get("model"), ("embedding",), ctx)
    inputs = parse_input(body.get("input"))
    encoding = _encoding_format(body.get("encoding_format"))
    dimensions = _dimensions(body.get("dimensions"))
    options = {} if dimensions is None else {"dimensions": dimensions}
    result = await router.predict(route, "embed", inputs, ctx, **options)
    embedded: Embeddings = result.body
    usage = {"prompt_tokens": embedded.tokens, "total_tokens": embedded.tokens}
    ctx.count_usage(usage)
    encode = to_base64 if encoding == "base64" else _floats
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(vector)}
            for i, vector in enumerate(embedded.vectors)
        ],
        "model": route.name,
        "usage": usage,
    }


def parse_input(value: object) -> Inputs:
    """OpenAI's four shapes of `input` as a list of texts or a list of token-id lists."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise _bad_input(
            "'input' must be a non-empty string, a list of strings, a list of token ids or a "
            "list of lists of token ids."
        )
    if all(_is_id(v) for v in value):
        value = [value]  # one input as token ids
    if len(value) > MAX_INPUTS:
        raise _bad_input(f"'input' has {len(value)} items; at most {MAX_INPUTS} are allowed.")
    if all(isinstance(v, str) for v in value):
        if any(not v for v in value):
            raise _bad_input("'input' cannot contain an empty string.")
        return list(value)
    if all(isinstance(v, list) and all(_is_id(t) for t in v) for v in value):
        if any(not v for v in value):
            raise _bad_input("'input' cannot contain an empty list of token ids.")
        return [list(v) for v in value]
    raise _bad_input(
        "'input' must be a string, a list of strings, a list of token ids (integers) or a list "
        "of lists of token ids; do not mix them."
    )


def to_base64(vector: np.ndarray) -> str:
    """Little-endian float32 bytes, base64: OpenAI's `encoding_format: "base64"`, straight from
    the array (no float list in between)."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def _floats(vector: np.ndarray) -> list[float]:
    values: list[float] = vector.tolist()
    return values


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encoding_format(value: object) -> Literal["float", "base64"]:
    if value is None or value == "float":
        return "float"
    if value == "base64":
        return "base64"
    raise InvalidRequest(
        f"'encoding_format' must be 'float' or 'base64', got {value!r}.", param="encoding_format"
    )


def _dimensions(value: object) -> int | None:
    if value is None:
        return None
    if not _is_id(value) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(
            f"'dimensions' must be a positive integer, got {value!r}.", param="dimensions"
        )
    return value


def _bad_input(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="input", code="invalid_input")


routes = [Route("/v1/embeddings", create_embeddings, methods=["POST"])]
