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

from gateway.errors import InvalidRequest

if TYPE_CHECKING:
    from starlette.requests import Request

    from gateway.scope.keys import ApiKey

# A request's class from OpenAI's `service_tier` or an `X-Priority` header.
CLASS_OF = {
    "priority": "high", "default": "normal", "auto": "normal", "scale": "normal", "flex": "low",
    "high": "high", "normal": "normal", "low": "low",
}  # fmt: skip
RANK = {"high": 0, "normal": 1, "low": 2}

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
    body_read: float | None = None  # perf_counter when the request's body was all received
    first_byte: float | None = None  # perf_counter when the first body bytes went out
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cache: str | None = None  # "hit" or "miss" when the model is cached
    steps: list[dict[str, Any]] | None = None  # a chain's steps (gateway/routing/chains.py)
    priority: str = "normal"  # its class: high, normal or low (gateway/scope/admission.py)

    @property
    def key_name(self) -> str | None:
        return self.key.name if self.key else None

    def ask_priority(self, asked: object, *, param: str = "service_tier") -> None:
        """Take the class a request asks for (`service_tier` or `X-Priority`), capped by its
        key's `max_priority` (with auth off, as asked); an unknown value is a 400."""
        if asked is None:
            return
        wanted = CLASS_OF.get(asked) if isinstance(asked, str) else None
        if wanted is None:
            raise InvalidRequest(
                f"Unknown priority {asked!r}: service_tier is one of auto, default, flex, scale, "
                "priority; X-Priority one of high, normal, low.",
                param=param,
            )
        ceiling = self.key.max_priority if self.key else "high"
        self.priority = wanted if RANK[wanted] >= RANK[ceiling] else ceiling

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
