"""Image classification: POST /v1/images/classifications.

    curl -s localhost:3000/v1/images/classifications \\
         -F model=demo-resnet -F top_k=3 -F file=@cat.jpg
    curl -s 'localhost:3000/v1/images/classifications?model=demo-resnet&top_k=3' \\
         -H 'Content-Type: image/jpeg' --data-binary @cat.jpg

    {"model": "demo-resnet",
     "predictions": [{"label": "tabby cat", "index": 0, "score": 0.61}, ...]}   # scores descending
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.api import calls
from gateway.api.common import context, router_of
from gateway.api.media_protocol import (
    ClassificationParams,
    ClassificationResponse,
    parse_params,
)
from gateway.api.uploads import read_upload


async def create_classification(request: Request) -> Response:
    settings = request.app.state.settings
    upload = await read_upload(
        request, media="image", limit=settings.limits.max_request_bytes, allow_raw=True
    )
    params = parse_params(ClassificationParams, upload.fields)
    model, predictions = await calls.classify(
        router_of(request),
        context(request),
        upload.data,
        model=params.model,
        top_k=params.top_k,
    )
    body = ClassificationResponse(model=model, predictions=predictions)
    return JSONResponse(body.model_dump())


routes = [Route("/v1/images/classifications", create_classification, methods=["POST"])]
