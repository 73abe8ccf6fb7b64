"""Every error the gateway answers with, and the one place they become responses.

Routes, adapters and the request pipeline raise these; `render` turns one into a response in the
protocol's own shape: OpenAI's on /v1 (and the operational routes), KServe's on /v2. Every 503
carries Retry-After. Every error has a string `code` (OpenAI's `code` is a string or null): its
own, or its class's.

    GatewayError                 500
    ├── InvalidRequest           400  (PayloadTooLarge 413, UnsupportedMediaType 415)
    │   └── WrongEndpoint        400  the model exists, at another endpoint
    ├── Unauthorized             401  missing or unknown API key
    ├── PermissionDenied         403  the key may not use this model
    ├── RateLimited              429  with Retry-After and x-ratelimit-* headers
    ├── ModelNotFound            404
    ├── VersionNotFound          404
    ├── BackendOverloaded        503  with Retry-After; backend or admission queue full
    ├── Draining                 503  with Retry-After; this worker is shutting down
    └── BackendError             502  names the backend
        ├── BackendUnavailable   503
        │   └── BreakerOpen      503  with Retry-After
        └── BackendTimeout       504
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from starlette.responses import JSONResponse


class GatewayError(Exception):
    status: int = HTTPStatus.INTERNAL_SERVER_ERROR.value
    type: str = "internal_error"
    default_code: str = "internal_error"  # `code` when the raiser gives none

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.message = message
        self.param = param
        self.code = code or self.default_code
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    status = HTTPStatus.BAD_REQUEST.value
    type = "invalid_request_error"
    default_code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE.value
    default_code = "payload_too_large"


class UnsupportedMediaType(InvalidRequest):
    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE.value
    default_code = "unsupported_media_type"


class WrongEndpoint(InvalidRequest):
    """The model exists but serves another kind of request: a 400, not a 404, because the
    request is what is wrong (a client that reads 404 as "that model is gone" would be misled)."""

    def __init__(self, model: str, kind: str, served_at: str, path: str) -> None:
        super().__init__(
            f"The model '{model}' is of kind '{kind}', served on {served_at}; "
            f"{path} does not serve it.",
            param="model",
            code="wrong_endpoint",
        )


class Unauthorized(GatewayError):
    status = HTTPStatus.UNAUTHORIZED.value
    type = "invalid_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


class PermissionDenied(GatewayError):
    status = HTTPStatus.FORBIDDEN.value
    type = "permission_error"

    def __init__(self, message: str, *, param: str | None = "model") -> None:
        super().__init__(message, param=param, code="model_not_allowed")


class RateLimited(GatewayError):
    """A key is over one of its limits; `headers` carry Retry-After and x-ratelimit-*."""

    status = HTTPStatus.TOO_MANY_REQUESTS.value
    type = "rate_limit_exceeded"

    def __init__(self, message: str, *, headers: dict[str, str]) -> None:
        super().__init__(message, code="rate_limit_exceeded", headers=headers)


class ModelNotFound(GatewayError):
    status = HTTPStatus.NOT_FOUND.value
    type = "not_found_error"

    def __init__(self, model: str, available: list[str]) -> None:
        names = ", ".join(sorted(available)) or "none"
        super().__init__(
            f"The model '{model}' does not exist. Available models: {names}.",
            param="model",
            code="model_not_found",
        )


class VersionNotFound(GatewayError):
    status = HTTPStatus.NOT_FOUND.value
    type = "not_found_error"

    def __init__(self, model: str, version: str, versions: list[str]) -> None:
        known = ", ".join(versions) or "none"
        super().__init__(
            f"The model '{model}' has no version '{version}' (versions: {known}).",
            code="version_not_found",
        )


class BackendOverloaded(GatewayError):
    """The backend is up but has more work than it takes: the gateway's own admission queue for
    it is full, or the backend shed the request (BentoML past max_latency_ms, an upstream 429,
    Triton's queue full, gRPC RESOURCE_EXHAUSTED). Every overload takes this one path.

    Not a failure of the backend, so it gives no verdict to its circuit breaker and is not
    retried by the gateway: the client is told when to come back.
    """

    status = HTTPStatus.SERVICE_UNAVAILABLE.value
    type = "overloaded_error"

    def __init__(self, backend: str, detail: str, *, retry_after: str = "1") -> None:
        super().__init__(
            f"Backend '{backend}' is overloaded, retry after {retry_after} s: {detail}",
            code="backend_overloaded",
            headers={"Retry-After": retry_after},
        )
        self.backend = backend


class Draining(GatewayError):
    """This worker is shutting down (lifecycle.py) and takes no new request; another replica
    will answer. `Connection: close` moves the client's connection off this worker."""

    status = HTTPStatus.SERVICE_UNAVAILABLE.value
    type = "service_unavailable"

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            "The server is shutting down; retry shortly (another replica will answer).",
            code="draining",
            headers={"Retry-After": str(retry_after_s), "Connection": "close"},
        )


class BackendError(GatewayError):
    """The backend answered, but with a failure of its own."""

    status = HTTPStatus.BAD_GATEWAY.value
    type = "backend_error"
    default_code = "backend_error"

    def __init__(self, backend: str, detail: str, **kwargs: Any) -> None:
        super().__init__(f"Backend '{backend}' failed: {detail}", **kwargs)
        self.backend = backend


class BackendUnavailable(BackendError):
    """The backend cannot be reached, is not ready, or its circuit breaker is open."""

    status = HTTPStatus.SERVICE_UNAVAILABLE.value
    type = "service_unavailable"
    default_code = "backend_unavailable"

    def __init__(self, backend: str, detail: str, **kwargs: Any) -> None:
        GatewayError.__init__(self, f"Backend '{backend}' is unavailable: {detail}", **kwargs)
        self.backend = backend


class BreakerOpen(BackendUnavailable):
    """The backend's circuit breaker refuses calls for now (see gateway/routing/breaker.py)."""

    def __init__(self, backend: str, retry_after: str) -> None:
        super().__init__(
            backend,
            f"its circuit breaker is open after repeated failures; retry after {retry_after} s",
            code="circuit_open",
            headers={"Retry-After": retry_after},
        )


class BackendTimeout(BackendError):
    status = HTTPStatus.GATEWAY_TIMEOUT.value
    type = "timeout"
    default_code = "backend_timeout"

    def __init__(self, backend: str, timeout_s: float, **kwargs: Any) -> None:
        GatewayError.__init__(
            self, f"Backend '{backend}' did not answer within {timeout_s:g} s", **kwargs
        )
        self.backend = backend


def openai_error_body(err: GatewayError) -> dict[str, Any]:
    return {
        "error": {
            "message": err.message,
            "type": err.type,
            "param": err.param,
            "code": err.code,
        }
    }


RETRY_AFTER_S = "1"  # a 503 that names no better time


def render(path: str, err: GatewayError) -> JSONResponse:
    """The error in the shape of the protocol `path` belongs to: KServe's on /v2, else OpenAI's."""
    headers = dict(err.headers)
    if err.status == HTTPStatus.SERVICE_UNAVAILABLE and "Retry-After" not in headers:
        headers["Retry-After"] = RETRY_AFTER_S
    body = {"error": err.message} if is_kserve(path) else openai_error_body(err)
    return JSONResponse(body, status_code=err.status, headers=headers)


def is_kserve(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")
