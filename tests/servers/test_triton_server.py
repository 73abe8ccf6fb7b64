"""The real Triton server of tests/servers/triton_models.py, driven by the real tritonclient.

Needs .venv-triton (scripts/triton-env). One server for the module; the restart test runs last.
"""

from __future__ import annotations

import functools
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from .triton import MODELS, TritonProcess, settled_stats, start_triton
from .triton_models import (
    CLASSIFY_LABELS,
    CLASSIFY_SHAPE,
    FAIL_MESSAGE,
    reference_classify,
    reference_scale,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SLEEPY_SECONDS = 1.0


@pytest.fixture(scope="module")
def triton() -> Iterator[TritonProcess]:
    with start_triton(sleepy_seconds=SLEEPY_SECONDS) as server:
        yield server


@pytest.fixture
def http(triton: TritonProcess) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(triton.http_url)
    yield client
    client.close()


@pytest.fixture
def grpc(triton: TritonProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    yield client
    client.close()


def _http_input(name: str, array: np.ndarray) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array, binary_data=True)
    return tensor


def _grpc_input(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def _scale_stats(client: httpclient.InferenceServerClient) -> tuple[int, int]:
    stats = client.get_inference_statistics("scale")["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_health_and_readiness(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    assert http.is_server_live() and http.is_server_ready()
    assert grpc.is_server_live() and grpc.is_server_ready()
    for model in MODELS:
        assert http.is_model_ready(model), model
        assert grpc.is_model_ready(model), model
    assert not http.is_model_ready("no-such-model")


def test_metadata(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    meta = http.get_model_metadata("classify")
    assert meta["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]
    assert meta["outputs"] == [
        {"name": "probs", "datatype": "FP32", "shape": [-1, 4]},
        {"name": "label", "datatype": "BYTES", "shape": [-1, 1]},
    ]
    gmeta = grpc.get_model_metadata("scale")
    assert [(t.name, t.datatype, list(t.shape)) for t in gmeta.inputs] == [
        ("INPUT0", "FP32", [-1, -1])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in gmeta.outputs] == [
        ("OUTPUT0", "FP32", [-1, -1])
    ]
    config = http.get_model_config("scale")
    assert config["max_batch_size"] == 16
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
    classify_config = grpc.get_model_config("classify", as_json=True)["config"]
    assert classify_config["max_batch_size"] == 8
    assert "dynamic_batching" not in classify_config


def test_scale_http_and_grpc(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    x = np.array([[0.0, 1.5, -2.0, 10.0], [3.0, 4.0, 5.0, 6.0]], dtype=np.float32)
    want = np.array([[1.0, 4.0, -3.0, 21.0], [7.0, 9.0, 11.0, 13.0]])  # x * 2 + 1, by hand
    np.testing.assert_array_equal(reference_scale(x), want)  # the model function itself
    out = http.infer("scale", [_http_input("INPUT0", x)]).as_numpy("OUTPUT0")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, want)
    gout = grpc.infer("scale", [_grpc_input("INPUT0", x)]).as_numpy("OUTPUT0")
    assert gout.dtype == np.float32
    np.testing.assert_array_equal(gout, want)


def test_classify_matches_numpy_reference(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    rng = np.random.default_rng(7)
    pixels = rng.random((5, *CLASSIFY_SHAPE), dtype=np.float32)
    # The model as triton_models.py defines it, computed afresh in float64 rather than by its
    # code: a linear layer from default_rng(1234) (W [192, 4] then b [4], standard normal
    # float32 times 0.1), softmax(flatten(pixels) @ W + b), the label of the largest logit.
    seeded = np.random.default_rng(1234)
    weight = seeded.standard_normal((192, 4)).astype(np.float32).astype(np.float64) * 0.1
    bias = seeded.standard_normal(4).astype(np.float32).astype(np.float64) * 0.1
    logits = pixels.reshape(5, -1).astype(np.float64) @ weight + bias
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    want_probs = exp / exp.sum(axis=1, keepdims=True)
    want_labels = [CLASSIFY_LABELS[i] for i in logits.argmax(axis=1)]
    ref_probs, ref_labels = reference_classify(pixels)  # what other tests compare against
    np.testing.assert_allclose(ref_probs, want_probs, rtol=1e-5, atol=1e-6)
    assert ref_labels == want_labels
    outputs = [httpclient.InferRequestedOutput("probs"), httpclient.InferRequestedOutput("label")]
    result = http.infer("classify", [_http_input("pixel_values", pixels)], outputs=outputs)
    probs = result.as_numpy("probs")
    labels = [b.decode() for b in result.as_numpy("label").reshape(-1)]
    assert probs.shape == (5, len(CLASSIFY_LABELS)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs, want_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert labels == want_labels
    gresult = grpc.infer("classify", [_grpc_input("pixel_values", pixels)])
    np.testing.assert_allclose(gresult.as_numpy("probs"), want_probs, rtol=1e-5, atol=1e-6)
    assert [b.decode() for b in gresult.as_numpy("label").reshape(-1)] == want_labels


def test_classify_rejects_batch_over_max(http: httpclient.InferenceServerClient) -> None:
    pixels = np.zeros((9, *CLASSIFY_SHAPE), dtype=np.float32)
    with pytest.raises(InferenceServerException, match="batch"):
        http.infer("classify", [_http_input("pixel_values", pixels)])


def test_dynamic_batching_forms_batches_grpc_async(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    xs = [np.full((1, 8), i, dtype=np.float32) for i in range(16)]
    results: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    before = _scale_stats(http)
    for i, x in enumerate(xs):
        grpc.async_infer(
            "scale",
            [_grpc_input("INPUT0", x)],
            callback=functools.partial(lambda i, result, error: results.put((i, result, error)), i),
        )
    for _ in xs:
        i, result, error = results.get(timeout=30)
        assert error is None, error
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), np.full((1, 8), 2 * i + 1))
    after = settled_stats(lambda: _scale_stats(http), before[0] + len(xs))
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 16
    assert executions < inferences, f"no batch > 1: {executions} executions for 16 requests"
    stats = http.get_inference_statistics("scale")["model_stats"][0]
    assert any(int(b["batch_size"]) > 1 for b in stats["batch_stats"]), stats["batch_stats"]


def test_dynamic_batching_forms_batches_http_threads(
    triton: TritonProcess, http: httpclient.InferenceServerClient
) -> None:
    # One client per thread, connected first, then released together by a barrier.
    # (tritonclient.http's gevent-based async_infer sends one request at a time: it rarely
    # batches, so it is not used here.)
    xs = [np.full((1, 8), i, dtype=np.float32) for i in range(16)]
    barrier = threading.Barrier(len(xs))

    def one(x: np.ndarray) -> np.ndarray:
        client = httpclient.InferenceServerClient(triton.http_url)
        try:
            assert client.is_server_live()
            barrier.wait(timeout=30)
            return client.infer("scale", [_http_input("INPUT0", x)]).as_numpy("OUTPUT0")
        finally:
            client.close()

    before = _scale_stats(http)
    with ThreadPoolExecutor(max_workers=len(xs)) as pool:
        outs = list(pool.map(one, xs))
    after = settled_stats(lambda: _scale_stats(http), before[0] + len(xs))
    for i, out in enumerate(outs):
        np.testing.assert_array_equal(out, np.full((1, 8), 2 * i + 1))  # xs[i] * 2 + 1
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 16
    assert executions < inferences, f"no batch > 1: {executions} executions for 16 requests"


def test_fail_returns_kserve_error(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    x = np.ones((1, 3), dtype=np.float32)
    with pytest.raises(InferenceServerException, match=FAIL_MESSAGE):
        http.infer("fail", [_http_input("INPUT0", x)])
    with pytest.raises(InferenceServerException, match=FAIL_MESSAGE) as excinfo:
        grpc.infer("fail", [_grpc_input("INPUT0", x)])
    assert excinfo.value.status() == "StatusCode.INTERNAL"
    assert http.is_model_ready("fail")  # the error does not take the model down


def test_sleepy_takes_configured_time(
    http: httpclient.InferenceServerClient, grpc: grpcclient.InferenceServerClient
) -> None:
    x = np.arange(3, dtype=np.float32).reshape(1, 3)
    started = time.monotonic()
    out = http.infer("sleepy", [_http_input("INPUT0", x)]).as_numpy("OUTPUT0")
    elapsed = time.monotonic() - started
    np.testing.assert_array_equal(out, x)
    assert SLEEPY_SECONDS <= elapsed < SLEEPY_SECONDS + 1.0, elapsed

    started = time.monotonic()
    http.infer("sleepy", [_http_input("INPUT0", x)], parameters={"sleep_s": 0.2})
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < SLEEPY_SECONDS, elapsed

    started = time.monotonic()
    with pytest.raises(InferenceServerException, match="Deadline"):
        grpc.infer("sleepy", [_grpc_input("INPUT0", x)], client_timeout=0.3)
    assert time.monotonic() - started < SLEEPY_SECONDS


def test_stop_then_start_on_same_ports(triton: TritonProcess) -> None:
    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        assert client.is_server_ready()
        # The client's keep-alive connection stays open, as a gateway's pool would: Triton waits
        # for it up to its exit timeout (3 s) before it exits anyway.
        started = time.monotonic()
        assert triton.stop() == 0
        assert time.monotonic() - started < 20
        assert not triton.is_running()
        with pytest.raises(Exception):  # noqa: B017 (connection refused, type is the client's)
            client.is_server_live()
    finally:
        client.close()

    triton.start()
    assert triton.is_running()
    client = httpclient.InferenceServerClient(triton.http_url)
    try:
        x = np.array([[1.0, 2.0]], dtype=np.float32)
        out = client.infer("scale", [_http_input("INPUT0", x)]).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, [[3.0, 5.0]])
    finally:
        client.close()
