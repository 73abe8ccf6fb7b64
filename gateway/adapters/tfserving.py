"""Adapter for TensorFlow Serving's REST API, whose models the gateway answers on /v2.

KServe V2 tensors in, TF Serving's predict format to the backend, its answer back as V2 tensors::

    POST /v1/models/{m}[/versions/{v}]:predict   {"instances": [...]} -> {"predictions": [...]}
                                                 {"inputs": ...}      -> {"outputs": ...}
    GET  /v1/models/{m}[/versions/{v}]           status: ready when a version is AVAILABLE
    GET  /v1/models/{m}[/versions/{v}]/metadata  the signature: inputs, outputs, dtypes, shapes

The row format (`instances`, what TF Serving's documentation and most of its users send) lists one
entry per batch row, so every input must share its first dimension; the columnar format (`inputs`)
sends each tensor whole. A single input goes bare, several as an object keyed by name, and the
answer comes back the same way. A model whose metadata the server does not serve (404: KServe's
own V1 server, which speaks the same `:predict` format) declares nothing: its inputs are not
checked, an unnamed output is named after the field it came in (`predictions`, `outputs`) and its
datatype follows the JSON values (bool BOOL, integers INT64, floats FP64, strings BYTES). BYTES
travel as UTF-8 strings, or as TF Serving's `{"b64": ...}` when they are not text.

    adapter = TFServingAdapter("tfs", make_client("http://10.0.0.7:8501", timeout_s=30))
    result = await adapter.predict(InferRequest("infer", "half_plus_two", TensorRequest(...)))
    result.body  # tuple[Tensor, ...]
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import aiohttp
import numpy as np

from gateway.adapters.base import InferRequest, InferResponse
from gateway.adapters.openai import UpstreamClient
from gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
)
from gateway.kserve.codec import check_declared, check_outputs
from gateway.tensors import ModelMetadata, Tensor, TensorRequest, TensorSpec, dtype_of
from settings import PredictFormat

PLATFORM = "tensorflow_serving"
SIGNATURE = "serving_default"
# TF Serving's dtypes (tensorflow/core/framework/types.proto) as KServe V2 datatypes.
TF_DATATYPES = {
    "DT_FLOAT": "FP32", "DT_DOUBLE": "FP64", "DT_HALF": "FP16", "DT_INT8": "INT8",
    "DT_INT16": "INT16", "DT_INT32": "INT32", "DT_INT64": "INT64", "DT_UINT8": "UINT8",
    "DT_UINT16": "UINT16", "DT_UINT32": "UINT32", "DT_UINT64": "UINT64", "DT_BOOL": "BOOL",
    "DT_STRING": "BYTES",
}  # fmt: skip
STATUS_TIMEOUT = aiohttp.ClientTimeout(total=2.0)


class TFServingAdapter:
    def __init__(
        self,
        name: str,
        client: UpstreamClient,
        *,
        format: PredictFormat = "row",
        formats: Mapping[str, PredictFormat] | None = None,
        models: Sequence[str] = (),
    ) -> None:
        self.name = name
        self._client = client
        self._format = format
        self._formats = dict(formats or {})
        self._models = tuple(models)  # its models at the backend: what health() asks about
        self._metadata: dict[tuple[str, str], ModelMetadata] = {}

    async def predict(self, request: InferRequest) -> InferResponse:
        if request.task != "infer" or not isinstance(request.payload, TensorRequest):
            raise InvalidRequest(f"The '{self.name}' backend only serves KServe V2 tensors.")
        tensors: TensorRequest = request.payload
        meta = await self.metadata(request.model, tensors.version)
        check_declared(tensors, meta)
        fmt = self._formats.get(request.model, self._format)
        body = predict_body(tensors.inputs, fmt)
        if signature := tensors.parameters.get("signature_name"):
            body["signature_name"] = str(signature)
        headers = {"X-Request-Id": request.request_id} if request.request_id else {}
        path = model_path(request.model, tensors.version) + ":predict"
        answer = await self._call("POST", path, json=body, headers=headers)
        try:
            outputs = outputs_from_answer(answer, fmt, meta.outputs)
        except (ValueError, TypeError) as exc:
            raise BackendError(self.name, f"its answer is not a predict response: {exc}") from None
        return InferResponse(select_outputs(outputs, tensors.outputs))

    def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        raise InvalidRequest(f"Streaming is not supported for '{request.task}'.")

    async def metadata(self, model: str, version: str) -> ModelMetadata:
        """The model's signature, asked once; none from a server without /metadata (a ready
        model whose metadata is a 404; one still loading is asked again next time)."""
        key = (model, version)
        if key in self._metadata:
            return self._metadata[key]
        try:
            body = await self._call("GET", model_path(model, version) + "/metadata")
            meta = metadata_from_signature(model, body)
        except _NotFound:
            meta = ModelMetadata(model, PLATFORM, (), (), ())
            if not await self.model_ready(model, version):
                return meta
        except ValueError as exc:
            raise BackendError(self.name, f"its metadata of '{model}': {exc}") from None
        self._metadata[key] = meta
        return meta

    async def model_ready(self, model: str, version: str) -> bool:
        try:
            body = await self._call("GET", model_path(model, version), timeout=STATUS_TIMEOUT)
        except Exception:
            return False
        return ready_from_status(body)

    async def health(self) -> bool:
        """Its models are all ready (TF Serving has no server-wide health route); with none
        routed to it, the server answers at all."""
        if self._models:
            return all([await self.model_ready(m, "") for m in self._models])
        try:
            async with self._client.session.get(self._client.url("/"), timeout=STATUS_TIMEOUT) as r:
                return r.status < 500
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def aclose(self) -> None:
        self._metadata.clear()
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        client = self._client
        try:
            async with client.session.request(method, client.url(path), **kwargs) as r:
                status, content = r.status, await r.read()
        except TimeoutError:
            raise BackendTimeout(self.name, client.timeout_s) from None
        except aiohttp.ClientError as exc:
            raise BackendUnavailable(self.name, f"{type(exc).__name__}: {exc}") from None
        if status != 200:
            raise self._error(status, content)
        try:
            return json.loads(content)
        except ValueError:
            raise BackendError(self.name, "its answer is not JSON") from None

    def _error(self, status: int, content: bytes) -> GatewayError:
        message = error_message(content)
        if status == 404:
            return _NotFound(self.name, f"HTTP 404: {message}")
        if status == 429:
            return BackendOverloaded(self.name, message)
        if 400 <= status < 500:
            return InvalidRequest(message)
        if status == 503:
            return BackendUnavailable(self.name, message)
        return BackendError(self.name, f"HTTP {status}: {message}")


class _NotFound(BackendError):
    """The server has no such model (or version, or route): a 502, since the gateway's route
    names it; `metadata` takes it as a server without /metadata."""


def model_path(model: str, version: str) -> str:
    path = f"/v1/models/{urllib.parse.quote(model, safe='')}"
    return f"{path}/versions/{urllib.parse.quote(version, safe='')}" if version else path


# -- V2 tensors <-> the predict format ---------------------------------------------------------


def predict_body(inputs: Sequence[Tensor], fmt: PredictFormat) -> dict[str, Any]:
    """The `:predict` body of V2 input tensors, in the row or the columnar format."""
    if fmt == "columnar":
        if len(inputs) == 1:
            return {"inputs": _values(inputs[0])}
        return {"inputs": {t.name: _values(t) for t in inputs}}
    rows = {t.shape[0] if t.shape else -1 for t in inputs}
    if -1 in rows or len(rows) != 1:
        shapes = ", ".join(f"'{t.name}' {list(t.shape)}" for t in inputs)
        raise InvalidRequest(
            f"The row format ('instances') needs every input to share its first (batch) "
            f"dimension; got {shapes}."
        )
    if len(inputs) == 1:
        return {"instances": _values(inputs[0])}
    columns = {t.name: _values(t) for t in inputs}
    return {"instances": [{n: v[i] for n, v in columns.items()} for i in range(rows.pop())]}


def outputs_from_answer(
    answer: Any, fmt: PredictFormat, specs: Sequence[TensorSpec] = ()
) -> tuple[Tensor, ...]:
    """V2 tensors of a `:predict` answer; `specs` (the model's declared outputs) name a single
    unnamed output and give the datatypes, else they follow the values. ValueError for an
    answer that is not one."""
    field = "outputs" if fmt == "columnar" else "predictions"
    if not isinstance(answer, dict) or field not in answer:
        raise ValueError(f"no '{field}' in it")
    values = answer[field]
    if fmt == "columnar":
        named = values if _is_object(values) else None
    elif isinstance(values, list) and values and all(_is_object(v) for v in values):
        if any(set(row) != set(values[0]) for row in values):
            raise ValueError("its rows name different outputs")
        named = {n: [row[n] for row in values] for n in values[0]}
    else:
        named = None
    if named is None:
        named = {specs[0].name if len(specs) == 1 else field: values}
    types = {s.name: s.datatype for s in specs}
    return tuple(_tensor(n, v, types.get(n)) for n, v in named.items())


def select_outputs(outputs: tuple[Tensor, ...], wanted: Sequence[str]) -> tuple[Tensor, ...]:
    """The outputs the request named (TF Serving's REST API sends them all), in its order."""
    if not wanted:
        return outputs
    by_name = {t.name: t for t in outputs}
    check_outputs(wanted, [TensorSpec(t.name, t.datatype, t.shape) for t in outputs])
    return tuple(by_name[n] for n in wanted)


def metadata_from_signature(model: str, body: Any) -> ModelMetadata:
    """The V2 metadata of TF Serving's `/metadata` answer (its `serving_default` signature, or
    its only one). An input of unknown rank leaves all inputs unchecked."""
    try:
        signatures = body["metadata"]["signature_def"]["signature_def"]
        signature = signatures.get(SIGNATURE) or next(iter(signatures.values()))
        inputs = _specs(signature.get("inputs", {}))
        outputs = _specs(signature.get("outputs", {}))
        version = body.get("model_spec", {}).get("version")
    except (KeyError, TypeError, AttributeError, StopIteration):
        raise ValueError("no signature_def in it") from None
    return ModelMetadata(
        model,
        PLATFORM,
        (str(version),) if version else (),
        inputs if all(s is not None for s in inputs) else (),  # type: ignore[arg-type]
        tuple(s for s in outputs if s is not None),
    )


def ready_from_status(body: Any) -> bool:
    """TF Serving's status (a version AVAILABLE), or KServe V1's (`ready: true`)."""
    if not isinstance(body, dict):
        return False
    if "model_version_status" in body:
        return any(v.get("state") == "AVAILABLE" for v in body["model_version_status"] or ())
    return body.get("ready") is True


def error_message(content: bytes) -> str:
    """The `error` of TF Serving's (and KServe's) error body, or the body's text."""
    try:
        data = json.loads(content)
    except ValueError:
        return content.decode(errors="replace").strip()[:500] or "no details"
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return json.dumps(data)[:500]


def _specs(tensors: Mapping[str, Any]) -> tuple[TensorSpec | None, ...]:
    specs: list[TensorSpec | None] = []
    for name, info in tensors.items():
        shape = info.get("tensor_shape", {})
        datatype = TF_DATATYPES.get(info.get("dtype", ""), "")
        if shape.get("unknown_rank") or not datatype:
            specs.append(None)
            continue
        dims = tuple(int(d.get("size", -1)) for d in shape.get("dim", ()))
        specs.append(TensorSpec(name, datatype, dims))
    return tuple(specs)


def _values(tensor: Tensor) -> Any:
    """The tensor as nested JSON lists; BYTES as text, or `{"b64": ...}` when not UTF-8."""
    if tensor.datatype != "BYTES":
        return tensor.data.tolist()
    flat = np.empty(tensor.data.size, dtype=object)
    flat[:] = [_bytes_value(x) for x in tensor.data.reshape(-1)]
    return flat.reshape(tensor.data.shape).tolist()


def _bytes_value(value: Any) -> Any:
    data = value if isinstance(value, bytes) else str(value).encode()
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode()}


def _tensor(name: str, values: Any, datatype: str | None) -> Tensor:
    if datatype == "BYTES" or (datatype is None and _leaf_is_text(values)):
        return Tensor(name, "BYTES", np.asarray(_map_leaves(values, _from_text), dtype=object))
    if datatype is not None:
        return Tensor(name, datatype, np.asarray(values, dtype=dtype_of(datatype)))
    array = np.asarray(values)
    kinds = {"b": "BOOL", "i": "INT64", "u": "UINT64", "f": "FP64"}
    if array.dtype.kind not in kinds:
        raise ValueError(f"output '{name}' is not a tensor of numbers, booleans or strings")
    datatype = kinds[array.dtype.kind]
    return Tensor(name, datatype, array.astype(dtype_of(datatype), copy=False))


def _is_object(value: Any) -> bool:
    """An object of named values, not TF Serving's `{"b64": ...}` form of one binary value."""
    return isinstance(value, dict) and set(value) != {"b64"}


def _leaf_is_text(values: Any) -> bool:
    while isinstance(values, list) and values:
        values = values[0]
    return isinstance(values, str | dict)


def _map_leaves(values: Any, fn: Any) -> Any:
    if isinstance(values, list):
        return [_map_leaves(v, fn) for v in values]
    return fn(values)


def _from_text(value: Any) -> bytes:
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    if isinstance(value, str):
        return value.encode()
    raise ValueError(f"{value!r} is not a string")
