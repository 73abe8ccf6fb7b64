"""Adapter for a TorchServe: its inference API for predictions and health, its management API for
a model's metadata and readiness, over HTTP.

What a TorchServe model takes and answers is its handler's business, so each model routed to it
says its kind in the configuration, and the gateway's task tells the adapter which mapping to use:

- `kind: image` (task `classify`, /v1/images/classifications): the image file is the request
  body; the handler answers `{label: score}` (TorchServe's image classifiers' shape), which
  becomes the bundle's `Prediction`s, the top `top_k` by score. A handler that answers every
  class in class order (as tests/servers/torchserve_handler.py) gives each its class index; one
  that answers its top few (TorchServe's stock image_classifier, `topk` 5) gives their position
  in its answer, and `top_k` can be no more than it answers.
- `kind: tensor` (task `infer`, KServe V2 on /v2): one BYTES input `data` of one element, the
  raw request body, and one BYTES output `output`, the raw answer body.

::

    adapter = TorchServeAdapter(
        "torchserve",
        httpx.AsyncClient(base_url="http://10.0.0.8:8080", timeout=60),
        management=httpx.AsyncClient(base_url="http://10.0.0.8:8081", timeout=60),
    )
    result = await adapter.predict(InferRequest("classify", "resnet", jpeg, {"top_k": 3}))
    result.body  # list[Prediction], scores descending

The gateway's request id goes to TorchServe as `X-Request-Id`, where the handler reads it
(`context.get_request_header`). TorchServe's 503 (no worker free, its job queue full, or the
handler failed) is a `BackendUnavailable` with Retry-After, so fallbacks and the breaker apply.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np

from contract.vision import Prediction, top_k
from gateway.adapters.base import InferRequest, InferResponse
from gateway.errors import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
)
from gateway.kserve.codec import check_inputs, check_outputs
from gateway.tensors import ModelMetadata, Tensor, TensorRequest, TensorSpec

INPUT = TensorSpec("data", "BYTES", (1,))
OUTPUT = TensorSpec("output", "BYTES", (1,))
DEFAULT_TOP_K = 5  # as the bundle's vision.top_k
RETRY_AFTER = "1"  # TorchServe's 503s pass as its queue drains or a worker comes back


class TorchServeAdapter:
    def __init__(
        self,
        name: str,
        client: httpx.AsyncClient,
        *,
        management: httpx.AsyncClient,
        default_top_k: int = DEFAULT_TOP_K,
    ) -> None:
        self.name = name
        self._client = client  # the inference API (TorchServe's port 8080)
        self._management = management  # the management API (8081)
        self.default_top_k = default_top_k

    async def predict(self, request: InferRequest) -> InferResponse:
        if request.task == "classify" and isinstance(request.payload, bytes | bytearray):
            return InferResponse(await self._classify(request, **request.options))
        if request.task == "infer" and isinstance(request.payload, TensorRequest):
            return InferResponse(await self._infer(request, request.payload))
        raise InvalidRequest(f"The '{self.name}' backend does not do '{request.task}'.")

    def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        raise InvalidRequest(f"Streaming is not supported for '{request.task}'.")

    async def _classify(
        self, request: InferRequest, *, top_k: int | None = None
    ) -> list[Prediction]:
        if top_k is not None and top_k < 1:
            raise InvalidRequest(f"top_k must be at least 1, got {top_k}.", param="top_k")
        answer = await self._post(request.model, "", bytes(request.payload), request.request_id)
        return predictions(self.name, answer, top_k or self.default_top_k, named=top_k is not None)

    async def _infer(self, request: InferRequest, tensors: TensorRequest) -> tuple[Tensor, ...]:
        check_inputs(tensors.inputs, (INPUT,))
        check_outputs(tensors.outputs, (OUTPUT,))
        if len(tensors.inputs) != 1:
            raise InvalidRequest(f"Expected exactly one input, '{INPUT.name}'.")
        body = tensors.inputs[0].data.reshape(-1)[0]  # its shape [1] checked above
        if not isinstance(body, bytes):
            raise InvalidRequest(f"Input '{INPUT.name}' must hold bytes.")
        request_id = tensors.id or request.request_id
        answer = await self._post(request.model, tensors.version, body, request_id)
        output = np.empty(1, dtype=object)
        output[0] = answer
        return (Tensor(OUTPUT.name, OUTPUT.datatype, output),)

    async def _post(self, model: str, version: str, body: bytes, request_id: str | None) -> bytes:
        headers = {"Content-Type": "application/octet-stream"}  # else TorchServe parses a form
        if request_id:
            headers["X-Request-Id"] = request_id
        response = await self._send(
            self._client, "POST", model_path("/predictions", model, version), body, headers
        )
        if response.status_code != 200:
            raise self._upstream_error(response)
        return response.content

    async def metadata(self, model: str, version: str) -> ModelMetadata:
        """A tensor model's inputs and outputs (always `data` and `output`), once the management
        API confirms TorchServe serves it."""
        described = await self._describe(model, version)
        versions = tuple(str(d.get("modelVersion", "")) for d in described)
        return ModelMetadata(model, "torchserve", versions, (INPUT,), (OUTPUT,))

    async def model_ready(self, model: str, version: str) -> bool:
        try:
            described = await self._describe(model, version)
        except GatewayError:
            return False
        return any(w.get("status") == "READY" for d in described for w in d.get("workers", ()))

    async def health(self) -> bool:
        try:
            response = await self._client.get("/ping", timeout=2.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._management.aclose()

    async def _describe(self, model: str, version: str) -> list[dict[str, Any]]:
        """The management API's description of the model (one entry per version asked)."""
        path = model_path("/models", model, version)
        response = await self._send(self._management, "GET", path, None, {})
        if response.status_code != 200:
            raise self._upstream_error(response)
        try:
            described = response.json()
        except ValueError:
            raise BackendError(self.name, f"GET {path}: the answer is not JSON") from None
        if not isinstance(described, list) or not all(isinstance(d, dict) for d in described):
            raise BackendError(self.name, f"GET {path}: expected a list of model descriptions")
        return described

    async def _send(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> httpx.Response:
        try:
            return await client.request(method, path, content=body, headers=headers)
        except httpx.TimeoutException:
            raise BackendTimeout(self.name, _timeout_of(client)) from None
        except httpx.HTTPError as exc:
            raise BackendUnavailable(self.name, _describe(exc)) from None

    def _upstream_error(self, response: httpx.Response) -> GatewayError:
        """The handler's own 4xx (a file it cannot read) is the client's error; a model or
        version TorchServe does not have is the configuration's (502 naming the backend)."""
        status, message = response.status_code, error_message(response)
        if status == 413:
            return PayloadTooLarge(
                f"Backend '{self.name}' refused the body as too large: {message}"
            )
        if status == 404:
            return BackendError(self.name, f"HTTP 404: {message}")
        if 400 <= status < 500:
            return InvalidRequest(message, status=status)
        if status == 503:
            return BackendUnavailable(
                self.name, f"HTTP 503: {message}", headers={"Retry-After": RETRY_AFTER}
            )
        return BackendError(self.name, f"HTTP {status}: {message}")


def model_path(prefix: str, model: str, version: str) -> str:
    """`/predictions/{model}[/{version}]` or `/models/{model}[/{version}]`, names quoted."""
    path = f"{prefix}/{urllib.parse.quote(model, safe='')}"
    return f"{path}/{urllib.parse.quote(version, safe='')}" if version else path


def predictions(backend: str, answer: bytes, k: int, *, named: bool) -> list[Prediction]:
    """A handler's `{label: score}` as the `k` best `Prediction`s, each with its position in the
    answer as its index; more than it answers is a 400 when the client named `k`, else all."""
    try:
        scores = json.loads(answer)
    except ValueError:
        raise BackendError(backend, "the classification answer is not JSON") from None
    if isinstance(scores, list) and len(scores) == 1:  # a handler answering a batch of one
        scores = scores[0]
    if not isinstance(scores, dict) or not scores or not all(_is_score(v) for v in scores.values()):
        raise BackendError(backend, "expected the classification as a {label: score} object")
    if named and k > len(scores):
        raise InvalidRequest(
            f"top_k must be between 1 and {len(scores)} (the classes the model answers), got {k}.",
            param="top_k",
        )
    labels = [str(label) for label in scores]
    return top_k(np.asarray(list(scores.values()), dtype=np.float64), labels, min(k, len(labels)))


def error_message(response: httpx.Response) -> str:
    """TorchServe's `{"code", "type", "message"}` (or a handler's `{"message"}`), else the text
    or the status line's reason, which a handler's `set_response_status` sets."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    text = response.text.strip()[:500]
    return text or response.reason_phrase or "no details"


def _is_score(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _timeout_of(client: httpx.AsyncClient) -> float:
    return client.timeout.read or client.timeout.connect or 0.0


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def make_adapter(
    name: str, url: str, *, management_port: int, timeout_s: float
) -> TorchServeAdapter:
    """The adapter of the TorchServe at `url` (its inference API), with its management API on
    the same host at `management_port`; each with one pooled client."""
    inference = httpx.URL(url)
    management = inference.copy_with(port=management_port)
    timeout = httpx.Timeout(timeout_s, connect=5.0)
    return TorchServeAdapter(
        name,
        httpx.AsyncClient(base_url=inference, timeout=timeout),
        management=httpx.AsyncClient(base_url=management, timeout=timeout),
    )
