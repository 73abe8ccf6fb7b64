"""The request context: what the pipeline knows about one request, for routes, router and log.

The pipeline (gateway/scope/pipeline.py) makes one per /v1 and /v2 request and puts it on the ASGI
scope; routes read it with `context_of(request)` and hand it to the router, which records the model
and backend that served the request and passes the request id to the backend. The access log is
written from it when the response has been sent.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request

    from gateway.scope.keys import ApiKey

_CLIENT_ID = re.compile(r"^[\x21-\x7e]{1,128}$")  # printable ASCII, no spaces


def request_id(client_value: str | None) -> str:
    """The client's own X-Request-Id when it is a sane token, else a fresh unique id."""
    if client_value and _CLIENT_ID.match(client_value):
        return client_value
    return uuid.uuid4().hex


@dataclass
class RequestContext:
    request_id: str
    method: str
    path: str
    key: ApiKey | None = None  # the caller's API key (None: auth is off)
    caller: str | None = None  # the routing caller header, for sticky A/B splits
    started: float = field(default_factory=time.perf_counter)
    model: str | None = None  # the public model name asked for
    backend: str | None = None  # the backend that answered (after fallbacks)
    endpoint: str | None = None  # the endpoint (replica) of its pool that answered
    status: int = 0
    first_byte: float | None = None  # perf_counter when the first body bytes went out
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache: str | None = None  # "hit" or "miss" when the model is cached

    @property
    def key_name(self) -> str | None:
        return self.key.name if self.key else None

    def count_usage(self, usage: Any) -> None:
        """Take token counts from an OpenAI `usage` object (a dict), if it is one."""
        if isinstance(usage, dict):  # Chat/Completions names, or the Responses API's
            prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
            completion = usage.get("completion_tokens", usage.get("output_tokens"))
            self.prompt_tokens = prompt if isinstance(prompt, int) else self.prompt_tokens
            self.completion_tokens = (
                completion if isinstance(completion, int) else self.completion_tokens
            )

    @property
    def tokens(self) -> int:
        return (self.prompt_tokens or 0) + (self.completion_tokens or 0)


def context_of(request: Request) -> RequestContext:
    """The pipeline's context of this request; a bare one when the app runs without it."""
    ctx = request.scope.get("state", {}).get("ctx")
    if ctx is None:
        ctx = RequestContext(request_id(None), request.method, request.url.path)
        request.scope.setdefault("state", {})["ctx"] = ctx
    assert isinstance(ctx, RequestContext)
    return ctx
