"""The TF Serving adapter: V2 tensors to the `:predict` formats and back (pure functions), then
the adapter against an HTTP server in the test's event loop answering in TF Serving's own shapes
(its status, its signature metadata, its errors), which KServe's server, used by the integration
tests, does not serve."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import numpy as np
import pytest
from aiohttp import web

from gateway.adapters.base import InferRequest
from gateway.adapters.openai import make_client
from gateway.adapters.tfserving import (
    TFServingAdapter,
    metadata_from_signature,
    model_path,
    outputs_from_answer,
    predict_body,
    ready_from_status,
    select_outputs,
)
from gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
)
from gateway.routing.build import build_router
from gateway.tensors import Tensor, TensorRequest, TensorSpec
from settings import RoutingSettings, TFServingBackend


def fp32(name: str, data: Any) -> Tensor:
    return Tensor(name, "FP32", np.asarray(data, dtype=np.float32))


def text(name: str, *items: bytes) -> Tensor:
    data = np.empty(len(items), dtype=object)
    data[:] = list(items)
    return Tensor(name, "BYTES", data)


# -- V2 -> predict body ------------------------------------------------------------------------


def test_one_input_goes_bare_in_both_formats() -> None:
    x = fp32("x", [[1, 2], [3, 4]])
    assert predict_body([x], "row") == {"instances": [[1.0, 2.0], [3.0, 4.0]]}
    assert predict_body([x], "columnar") == {"inputs": [[1.0, 2.0], [3.0, 4.0]]}


def test_several_inputs_go_by_name_one_object_per_row() -> None:
    x, tag = fp32("x", [[1, 2], [3, 4]]), text("tag", b"a", b"b")
    assert predict_body([x, tag], "row") == {
        "instances": [{"x": [1.0, 2.0], "tag": "a"}, {"x": [3.0, 4.0], "tag": "b"}]
    }
    assert predict_body([x, tag], "columnar") == {
        "inputs": {"x": [[1.0, 2.0], [3.0, 4.0]], "tag": ["a", "b"]}
    }


def test_bytes_that_are_not_text_go_as_b64() -> None:
    assert predict_body([text("img", b"\xff\x00")], "row") == {"instances": [{"b64": "/wA="}]}


@pytest.mark.parametrize(
    "inputs",
    [
        [fp32("x", [[1, 2], [3, 4]]), text("tag", b"a")],  # 2 rows and 1
        [fp32("x", 1.0)],  # a scalar has no rows
    ],
)
def test_the_row_format_needs_one_batch_dimension(inputs: list[Tensor]) -> None:
    with pytest.raises(InvalidRequest, match="share its first"):
        predict_body(inputs, "row")
    predict_body(inputs, "columnar")  # the columnar format takes them


# -- predict answer -> V2 ----------------------------------------------------------------------


def test_an_unnamed_answer_is_named_after_its_field_and_typed_by_its_values() -> None:
    (row,) = outputs_from_answer({"predictions": [[1.5, -2.0], [2.5, 0.0]]}, "row")
    assert (row.name, row.datatype, row.shape) == ("predictions", "FP64", (2, 2))
    np.testing.assert_array_equal(row.data, [[1.5, -2.0], [2.5, 0.0]])
    (col,) = outputs_from_answer({"outputs": [1, 2, 3]}, "columnar")
    assert (col.name, col.datatype) == ("outputs", "INT64")
    (flag,) = outputs_from_answer({"predictions": [True, False]}, "row")
    assert flag.datatype == "BOOL"


def test_the_declared_output_names_and_types_a_single_answer() -> None:
    specs = [TensorSpec("y", "FP32", (-1, 2))]
    (y,) = outputs_from_answer({"predictions": [[1, 2]]}, "row", specs)
    assert (y.name, y.datatype, y.data.dtype) == ("y", "FP32", np.float32)


def test_named_outputs_from_rows_and_columns() -> None:
    rows = {"predictions": [{"y": [1.5, 2.0], "tag": "A"}, {"y": [0.5, 1.0], "tag": "B"}]}
    columns = {"outputs": {"y": [[1.5, 2.0], [0.5, 1.0]], "tag": ["A", "B"]}}
    for answer, fmt in ((rows, "row"), (columns, "columnar")):
        y, tag = outputs_from_answer(answer, fmt)  # type: ignore[arg-type]
        assert (y.name, y.datatype, y.shape) == ("y", "FP64", (2, 2))
        assert (tag.name, tag.datatype) == ("tag", "BYTES")
        assert tag.data.tolist() == [b"A", b"B"]


def test_b64_strings_come_back_as_bytes() -> None:
    (out,) = outputs_from_answer({"predictions": [{"b64": "/wA="}]}, "row")
    assert out.datatype == "BYTES" and out.data.tolist() == [b"\xff\x00"]


@pytest.mark.parametrize(
    ("answer", "fmt"),
    [
        ({"outputs": [1]}, "row"),  # the other format's field
        ([1, 2], "row"),
        ({"predictions": [[1, 2], [3]]}, "row"),  # ragged
        ({"predictions": [None]}, "row"),  # neither numbers nor strings
        ({"predictions": [{"a": 1}, {"b": 2}]}, "row"),  # rows of different outputs
    ],
)
def test_answers_that_are_not_tensors_are_value_errors(answer: Any, fmt: Any) -> None:
    with pytest.raises(ValueError):
        outputs_from_answer(answer, fmt)


def test_requested_outputs_are_picked_in_their_order_and_unknown_ones_refused() -> None:
    outputs = (fp32("a", [1]), fp32("b", [2]))
    assert [t.name for t in select_outputs(outputs, ["b", "a"])] == ["b", "a"]
    assert select_outputs(outputs, []) == outputs
    with pytest.raises(InvalidRequest, match="Unknown output 'c'"):
        select_outputs(outputs, ["c"])


# -- TF Serving's status and metadata ----------------------------------------------------------

SIGNATURE = {
    "model_spec": {"name": "half", "signature_name": "", "version": "3"},
    "metadata": {
        "signature_def": {
            "signature_def": {
                "__saved_model_init_op": {"inputs": {}, "outputs": {}},
                "serving_default": {
                    "inputs": {
                        "x": {
                            "dtype": "DT_FLOAT",
                            "tensor_shape": {
                                "dim": [{"size": "-1", "name": ""}, {"size": "2", "name": ""}],
                                "unknown_rank": False,
                            },
                            "name": "serving_default_x:0",
                        }
                    },
                    "outputs": {
                        "y": {
                            "dtype": "DT_INT64",
                            "tensor_shape": {"dim": [{"size": "-1"}], "unknown_rank": False},
                            "name": "StatefulPartitionedCall:0",
                        }
                    },
                    "method_name": "tensorflow/serving/predict",
                },
            }
        }
    },
}


def test_metadata_from_the_serving_default_signature() -> None:
    meta = metadata_from_signature("half", SIGNATURE)
    assert meta.versions == ("3",) and meta.platform == "tensorflow_serving"
    assert meta.inputs == (TensorSpec("x", "FP32", (-1, 2)),)
    assert meta.outputs == (TensorSpec("y", "INT64", (-1,)),)


def test_an_input_of_unknown_rank_leaves_the_inputs_unchecked() -> None:
    body = json.loads(json.dumps(SIGNATURE))
    inputs = body["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]
    inputs["x"]["tensor_shape"] = {"unknown_rank": True}
    assert metadata_from_signature("half", body).inputs == ()


def test_status_of_tf_serving_and_of_kserve() -> None:
    available = {"model_version_status": [{"version": "3", "state": "AVAILABLE"}]}
    loading = {"model_version_status": [{"version": "3", "state": "LOADING"}]}
    assert ready_from_status(available) and not ready_from_status(loading)
    assert ready_from_status({"name": "m", "ready": True})
    assert not ready_from_status({"name": "m", "ready": False}) and not ready_from_status([])


def test_paths_name_the_version_and_quote_names() -> None:
    assert model_path("half", "") == "/v1/models/half"
    assert model_path("half", "3") == "/v1/models/half/versions/3"
    assert model_path("a/b", "") == "/v1/models/a%2Fb"


# -- the adapter over HTTP ---------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TFServing:
    """TF Serving's REST routes for the model `half` (y = x * 0.5 + 2, row format), recording
    each request; `predict_status` makes :predict fail."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        self.predict_status = 200
        self.ready = True

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.requests.append((request.method, request.path, body))
        path = request.path
        if not path.startswith("/v1/models/half"):
            return web.json_response({"error": "Servable not found for request"}, status=404)
        if path.endswith(":predict"):
            if self.predict_status != 200:
                return web.json_response({"error": "it broke"}, status=self.predict_status)
            x = np.asarray(body["instances"], dtype=np.float64)
            return web.json_response({"predictions": (x * 0.5 + 2).tolist()})
        if path.endswith("/metadata"):
            return web.json_response(
                {**SIGNATURE, "model_spec": {**SIGNATURE["model_spec"], "name": "half"}}
            )
        state = "AVAILABLE" if self.ready else "LOADING"
        return web.json_response({"model_version_status": [{"version": "3", "state": state}]})

    def paths(self) -> list[str]:
        return [f"{m} {p}" for m, p, _ in self.requests]


@asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[tuple[TFServingAdapter, TFServing]]:
    server = TFServing()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server)
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = cast(Any, site)._server.sockets[0].getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}", timeout_s=5)
    adapter = TFServingAdapter("tfs", client, **options)
    try:
        yield adapter, server
    finally:
        await adapter.aclose()
        await runner.cleanup()


def infer(*inputs: Tensor, version: str = "", model: str = "half") -> InferRequest:
    return InferRequest("infer", model, TensorRequest(inputs, version=version), request_id="r-1")


async def test_predict_checks_the_signature_then_converts_both_ways() -> None:
    async with serving() as (adapter, server):
        result = await adapter.predict(infer(fp32("x", [[2, 4]]), version="3"))
        (y,) = result.body
        assert (y.name, y.datatype) == ("y", "INT64")  # named and typed by the signature
        np.testing.assert_array_equal(y.data, [[3, 4]])
        with pytest.raises(InvalidRequest, match="must have shape"):
            await adapter.predict(infer(fp32("x", [[1, 2, 3]])))
        assert server.paths() == [
            "GET /v1/models/half/versions/3/metadata",
            "POST /v1/models/half/versions/3:predict",
            "GET /v1/models/half/metadata",  # the refused request never reached :predict
        ]
        assert server.requests[1][2] == {"instances": [[2.0, 4.0]]}


async def test_status_and_health_ask_each_model_routed_to_it() -> None:
    async with serving(models=["half"]) as (adapter, server):
        assert await adapter.model_ready("half", "3") and await adapter.health()
        server.ready = False
        assert not await adapter.model_ready("half", "") and not await adapter.health()
        assert not await adapter.model_ready("nope", "")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, InvalidRequest),
        (404, BackendError),
        (429, BackendOverloaded),
        (500, BackendError),
        (503, BackendUnavailable),
    ],
)
async def test_backend_errors_map_to_gateway_errors(
    status: int, expected: type[GatewayError]
) -> None:
    async with serving() as (adapter, server):
        server.predict_status = status
        with pytest.raises(expected) as err:
            await adapter.predict(infer(fp32("x", [[2, 4]])))
        assert "it broke" in err.value.message
        if status >= 404:
            assert "tfs" in err.value.message  # names the backend


async def test_a_model_without_metadata_leaves_tensors_to_the_server() -> None:
    async with serving() as (adapter, server):
        meta = await adapter.metadata("other", "")  # a 404, and not ready: asked again
        assert (meta.inputs, meta.outputs) == ((), ())
        await adapter.metadata("other", "")
        assert server.paths().count("GET /v1/models/other/metadata") == 2


async def test_nothing_listening_is_a_503_naming_the_backend() -> None:
    from tests.servers.process import free_port

    client = make_client(f"http://127.0.0.1:{free_port()}", timeout_s=5)
    adapter = TFServingAdapter("tfs", client)
    with pytest.raises(BackendUnavailable, match="'tfs'"):
        await adapter.predict(infer(fp32("x", [[1, 2]])))
    assert not await adapter.health()
    await adapter.aclose()


async def test_the_format_is_per_backend_or_per_model() -> None:
    async with serving(format="columnar", formats={"half": "row"}) as (adapter, server):
        await adapter.predict(infer(fp32("x", [[2, 4]])))
        assert "instances" in server.requests[-1][2]
    settings = RoutingSettings.model_validate(
        {
            "backends": {"tfs": {"kind": "tfserving", "url": "http://h:8501"}},
            "models": {"half": {"backend": "tfs"}},
        }
    )
    backend = settings.backends["tfs"]
    assert isinstance(backend, TFServingBackend) and backend.format == "row"
    router = build_router(settings, bundled={}, bundled_routes=[])
    assert router.registry.get("half").kind == "tensor"  # answered on /v2
    await router.aclose()


def test_a_tfserving_backend_takes_a_url() -> None:
    with pytest.raises(ValueError, match="not an address of this backend"):
        RoutingSettings.model_validate({"backends": {"t": {"kind": "tfserving", "url": "h:1"}}})
