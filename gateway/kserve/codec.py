"""KServe V2 (the Open Inference Protocol) without a transport: what /v2 serves (`KINDS`, `SERVER`,
`resolve`), tensors checked against a model's declared inputs and outputs, and tensors on the HTTP
wire, shared by the HTTP routes (http.py), the gRPC service (grpc.py) and the tensor adapters.

On HTTP: JSON tensors and the binary tensor extension.

A request body is JSON, or JSON followed by raw tensor bytes when the
`Inference-Header-Content-Length` header gives the JSON's length (binary extension); an input with
`parameters.binary_data_size` takes its bytes from there, in input order. Outputs are sent the
same way when the request asks (`parameters.binary_data_output`, or per output
`parameters.binary_data`). BYTES elements in binary are each a 4-byte little-endian length and the
bytes; in JSON, strings. A BYTES input holds at most `limits.max_bytes_elements` elements, checked
on its shape before any element is converted (`check_elements`): each may cost a call of its own.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.errors import InvalidRequest, VersionNotFound
from gateway.routing.registry import Kind, Route
from gateway.tensors import ModelMetadata, Tensor, TensorRequest, TensorSpec, dtype_of
from settings import LimitSettings

if TYPE_CHECKING:  # resolve() takes them; the adapters below the router import this module
    from gateway.routing.router import Router
    from gateway.scope.context import RequestContext

HEADER_LENGTH = "Inference-Header-Content-Length"
SERVER = {"name": "serving-bundle", "version": "1", "extensions": ["binary_tensor_data"]}
KINDS: tuple[Kind, ...] = ("tensor", "image", "speech")  # the kinds of model /v2 serves
MAX_BYTES_ELEMENTS = LimitSettings().max_bytes_elements  # for callers that pass no limit


def resolve(router: Router, name: str, version: str, ctx: RequestContext) -> tuple[Route, str]:
    """The route of a /v2 model name and version ("" for the latest), over HTTP or gRPC."""
    route = router.resolve(name, KINDS, ctx)
    if version and version not in route.versions:
        raise VersionNotFound(name, version, list(route.versions))
    return route, version


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InputTensor(_Wire):
    name: str
    shape: list[int] = Field(min_length=0)
    datatype: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    data: Any = None


class OutputRequest(_Wire):
    name: str
    parameters: dict[str, Any] = Field(default_factory=dict)


class InferBody(_Wire):
    id: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputTensor] = Field(min_length=1)
    outputs: list[OutputRequest] = Field(default_factory=list)


class DecodedRequest:
    """The tensors of a request and how the client wants each output sent."""

    def __init__(self, body: InferBody, tensors: TensorRequest) -> None:
        self.tensors = tensors
        self._default = bool(body.parameters.get("binary_data_output", False))
        self._binary = {
            o.name: bool(o.parameters["binary_data"])
            for o in body.outputs
            if "binary_data" in o.parameters
        }

    def binary(self, output: str) -> bool:
        return self._binary.get(output, self._default)


def decode_request(
    raw: bytes,
    *,
    version: str,
    header_length: str | None,
    max_bytes_elements: int = MAX_BYTES_ELEMENTS,
) -> DecodedRequest:
    """The tensors of an (already inflated) infer request body."""
    split = _header_length(header_length, len(raw))
    head, binary = raw[:split], memoryview(raw)[split:]
    try:
        body = InferBody.model_validate_json(head)
    except ValidationError as exc:
        raise InvalidRequest(f"Not a KServe V2 inference request: {_problems(exc)}") from None
    inputs, offset = [], 0
    for wire in body.inputs:
        tensor, offset = _input(wire, binary, offset, max_bytes_elements)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidRequest(f"{len(binary) - offset} bytes of binary data belong to no input.")
    tensors = TensorRequest(
        inputs=tuple(inputs),
        outputs=tuple(o.name for o in body.outputs),
        version=version,
        id=body.id,
        parameters=body.parameters,
    )
    return DecodedRequest(body, tensors)


def encode_response(
    model: str, version: str, request: DecodedRequest, outputs: Sequence[Tensor]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers (binary outputs follow the JSON, in output order)."""
    wire, blobs = [], []
    for tensor in outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if request.binary(tensor.name):
            blob = to_bytes(tensor)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = to_json_data(tensor)
        wire.append(entry)
    body: dict[str, Any] = {"model_name": model, "outputs": wire}
    if version:
        body["model_version"] = version
    if request.tensors.id:
        body["id"] = request.tensors.id
    head = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return head, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
    return b"".join([head, *blobs]), headers


def decode_tensor(
    name: str,
    datatype: str,
    shape: Sequence[int],
    *,
    raw: bytes | None = None,
    data: Any = None,
    max_bytes_elements: int = MAX_BYTES_ELEMENTS,
) -> Tensor:
    """One input from `raw` bytes (little-endian; BYTES elements length-prefixed, as the binary
    extension and gRPC's `raw_input_contents` carry them) or from `data`, a flat sequence of
    values (gRPC's typed contents); checked like an input of an HTTP request."""
    parameters = {} if raw is None else {"binary_data_size": len(raw)}
    wire = InputTensor(
        name=name, shape=list(shape), datatype=datatype, parameters=parameters, data=data
    )
    tensor, _ = _input(wire, memoryview(raw or b""), 0, max_bytes_elements)
    return tensor


def check_elements(name: str, datatype: str, shape: Sequence[int], *, limit: int) -> int:
    """The element count of input `name`, from its shape alone: a 400 for a negative dimension
    or a BYTES input of more than `limit` elements. gRPC calls it before it lists the typed
    contents."""
    if any(d < 0 for d in shape):
        raise InvalidRequest(f"Input '{name}' has a negative dimension: {list(shape)}.")
    count = math.prod(shape)
    if datatype == "BYTES" and count > limit:
        raise InvalidRequest(
            f"Input '{name}' has {count} BYTES elements; the limit is {limit} per input."
        )
    return count


def metadata_body(meta: ModelMetadata) -> dict[str, Any]:
    def specs(tensors: Sequence[Any]) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in tensors]

    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": specs(meta.inputs),
        "outputs": specs(meta.outputs),
    }


def to_bytes(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        items = [_as_bytes(x) for x in tensor.data.reshape(-1)]
        return b"".join(struct.pack("<I", len(x)) + x for x in items)
    data = np.ascontiguousarray(tensor.data, dtype=dtype_of(tensor.datatype).newbyteorder("<"))
    return data.tobytes()


def to_json_data(tensor: Tensor) -> list[Any]:
    flat = tensor.data.reshape(-1)
    if tensor.datatype == "BYTES":
        return [_as_bytes(x).decode(errors="replace") for x in flat]
    return list(flat.tolist())


def _input(
    wire: InputTensor, binary: memoryview, offset: int, max_bytes_elements: int
) -> tuple[Tensor, int]:
    try:
        dtype = dtype_of(wire.datatype)
    except ValueError as exc:
        raise InvalidRequest(f"Input '{wire.name}': {exc}") from None
    count = check_elements(wire.name, wire.datatype, wire.shape, limit=max_bytes_elements)
    size = wire.parameters.get("binary_data_size")
    try:
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ValueError(f"binary_data_size {size} exceeds the binary data sent")
            data = _from_bytes(binary[offset : offset + size], wire.datatype, dtype, count)
            offset += size
        elif wire.data is None:
            raise ValueError("no 'data' and no 'binary_data_size'")
        else:
            data = _from_json(wire.data, wire.datatype, dtype, count)
        if data.size != count:
            raise ValueError(f"{data.size} values do not fill shape {wire.shape}")
        return Tensor(wire.name, wire.datatype, data.reshape(wire.shape)), offset
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidRequest(f"Input '{wire.name}': {exc}") from None


def _from_json(data: Any, datatype: str, dtype: np.dtype[Any], count: int) -> np.ndarray:
    if datatype != "BYTES":
        return np.asarray(data, dtype=dtype).reshape(-1)
    flat = np.asarray(data, dtype=object).reshape(-1)
    if flat.size != count:  # refused by the caller before any value is converted
        return flat
    return np.array([x.encode() if isinstance(x, str) else bytes(x) for x in flat], dtype=object)


def _from_bytes(buf: memoryview, datatype: str, dtype: np.dtype[Any], count: int) -> np.ndarray:
    if datatype != "BYTES":
        if len(buf) != count * dtype.itemsize:
            raise ValueError(f"{len(buf)} bytes do not hold {count} {datatype} values")
        return np.frombuffer(buf, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    items: list[bytes] = []
    pos = 0
    while pos < len(buf):
        if len(items) == count:
            raise ValueError(f"the binary data holds more than the shape's {count} elements")
        if pos + 4 > len(buf):
            raise ValueError("truncated BYTES element")
        (n,) = struct.unpack_from("<I", buf, pos)
        items.append(bytes(buf[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    if pos != len(buf):
        raise ValueError("truncated BYTES element")
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def _header_length(value: str | None, total: int) -> int:
    if value is None:
        return total
    if not value.isdigit() or int(value) > total:
        raise InvalidRequest(f"Bad {HEADER_LENGTH}: {value!r} for a body of {total} bytes.")
    return int(value)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    )


# -- checks of tensors against a model's declared inputs and outputs --------------------------


def check_inputs(inputs: Sequence[Tensor], specs: Sequence[TensorSpec]) -> None:
    """Each input must be one the model declares, with its datatype and a shape it accepts."""
    by_name = {s.name: s for s in specs}
    for tensor in inputs:
        spec = by_name.get(tensor.name)
        if spec is None:
            expected = ", ".join(f"'{n}'" for n in by_name) or "none"
            raise InvalidRequest(f"Unknown input '{tensor.name}'; the model takes {expected}.")
        if tensor.datatype != spec.datatype:
            raise InvalidRequest(
                f"Input '{tensor.name}' must be {spec.datatype}, got {tensor.datatype}."
            )
        if not spec.accepts(tensor.shape):
            raise InvalidRequest(
                f"Input '{tensor.name}' must have shape {list(spec.shape)} (-1: any size), "
                f"got {list(tensor.shape)}."
            )


def check_outputs(names: Sequence[str], specs: Sequence[TensorSpec]) -> None:
    known = {s.name for s in specs}
    for name in names:
        if name not in known:
            expected = ", ".join(f"'{n}'" for n in sorted(known)) or "none"
            raise InvalidRequest(f"Unknown output '{name}'; the model has {expected}.")


def check_declared(tensors: TensorRequest, meta: ModelMetadata) -> None:
    """Check a request against what its model declares; a server may declare nothing (MLServer
    for a model whose settings list none, KServe's V1 server): then the server decides."""
    if meta.inputs:
        check_inputs(tensors.inputs, meta.inputs)
    if meta.outputs:
        check_outputs(tensors.outputs, meta.outputs)
