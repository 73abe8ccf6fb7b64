"""The gateway routing to real Triton servers, and tritonclient against the gateway's /v2.

Same numbers as Triton over gRPC and HTTP; Triton's dynamic batcher still batches what the gateway
forwards; the bundled image runner behind /v2; then faults with the real processes: a model that
fails, one slower than its backend's timeout, and a server stopped and started again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from contract import imaging
from tests.integration.conftest import SLEEPY_SECONDS, RoutingStack
from tests.integration.prometheus import metric_value
from tests.media import image_bytes, noise_image
from tests.servers.triton import settled_stats
from tests.servers.triton_models import (
    CLASSIFY_SHAPE,
    FAIL_MESSAGE,
    reference_classify,
    reference_scale,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def stack(routing_stack: RoutingStack) -> RoutingStack:
    return routing_stack


@pytest.fixture
def direct(stack: RoutingStack) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(stack.triton.http_url, network_timeout=60)
    yield client
    client.close()


def tensor(name: str, array: np.ndarray, *, binary: bool = True) -> httpclient.InferInput:
    wire = httpclient.InferInput(name, list(array.shape), "FP32")
    wire.set_data_from_numpy(array, binary_data=binary)
    return wire


def infer_json(url: str, model: str, x: np.ndarray, **extra: Any) -> httpx.Response:
    body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": list(x.shape),
                        "data": x.reshape(-1).tolist()}], **extra}  # fmt: skip
    return httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=60)


def test_server_health_and_metadata_through_tritonclient(
    gateway: httpclient.InferenceServerClient,
) -> None:
    assert gateway.is_server_live() and gateway.is_server_ready()
    assert "binary_tensor_data" in gateway.get_server_metadata()["extensions"]
    for model in ("scale", "scale-http", "classify", "classify-http", "demo-resnet"):
        assert gateway.is_model_ready(model), model
    meta = gateway.get_model_metadata("classify-http")
    assert meta["name"] == "classify-http"
    assert meta["inputs"] == [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 8, 8]}]
    assert [o["name"] for o in meta["outputs"]] == ["probs", "label"]
    assert gateway.get_model_metadata("scale", "1")["versions"] == ["1"]
    assert gateway.get_model_metadata("classify-grpc")["name"] == "classify"  # an alias


@pytest.mark.parametrize("model", ["scale", "scale-http"])  # gRPC and HTTP backends
@pytest.mark.parametrize("binary", [True, False])
def test_scale_gives_the_numbers_triton_computes(
    gateway: httpclient.InferenceServerClient,
    direct: httpclient.InferenceServerClient,
    model: str,
    binary: bool,
) -> None:
    x = np.array([[0.0, 1.5, -2.0, 1e6], [3.25, 4.0, 5.0, -6.0]], dtype=np.float32)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)]
    via = gateway.infer(model, [tensor("INPUT0", x, binary=binary)], outputs=outputs)
    straight = direct.infer("scale", [tensor("INPUT0", x)])
    np.testing.assert_array_equal(via.as_numpy("OUTPUT0"), straight.as_numpy("OUTPUT0"))
    want = [[1.0, 4.0, -3.0, 2000001.0], [7.5, 9.0, 11.0, -11.0]]  # x * 2 + 1, by hand
    np.testing.assert_array_equal(via.as_numpy("OUTPUT0"), want)
    assert via.get_response()["model_name"] == model


@pytest.mark.parametrize("model", ["classify", "classify-http"])
def test_classify_probabilities_and_labels_match_triton(
    gateway: httpclient.InferenceServerClient,
    direct: httpclient.InferenceServerClient,
    model: str,
) -> None:
    pixels = np.random.default_rng(11).random((5, *CLASSIFY_SHAPE), dtype=np.float32)
    via = gateway.infer(model, [tensor("pixel_values", pixels)])
    straight = direct.infer("classify", [tensor("pixel_values", pixels)])
    np.testing.assert_array_equal(via.as_numpy("probs"), straight.as_numpy("probs"))
    want_probs, want_labels = reference_classify(pixels)
    np.testing.assert_allclose(via.as_numpy("probs"), want_probs, rtol=1e-5, atol=1e-6)
    assert [b.decode() for b in via.as_numpy("label").reshape(-1)] == want_labels


def test_json_request_and_response(stack: RoutingStack) -> None:
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    r = infer_json(stack.url, "scale", x, id="req-7")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "req-7" and body["model_name"] == "scale"
    assert body["outputs"] == [
        {"name": "OUTPUT0", "datatype": "FP32", "shape": [1, 3], "data": [3.0, 5.0, 7.0]}
    ]


def test_triton_still_batches_what_the_gateway_forwards(
    stack: RoutingStack, direct: httpclient.InferenceServerClient
) -> None:
    def stats() -> tuple[int, int]:
        s = direct.get_inference_statistics("scale")["model_stats"][0]
        return int(s["inference_count"]), int(s["execution_count"])

    xs = [np.full((1, 8), i, dtype=np.float32) for i in range(24)]
    before = stats()
    with ThreadPoolExecutor(len(xs)) as pool:
        responses = list(pool.map(lambda x: infer_json(stack.url, "scale", x), xs))
    after = settled_stats(stats, before[0] + len(xs))
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [2.0 * i + 1] * 8  # xs[i] * 2 + 1
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == len(xs)
    assert executions < inferences, f"no batch > 1: {executions} executions for {inferences}"


def test_bundled_image_runner_behind_v2_agrees_with_the_classification_route(
    stack: RoutingStack, gateway: httpclient.InferenceServerClient
) -> None:
    from models import store

    data = image_bytes(noise_image(5, (200, 160)))
    pp = imaging.Preprocessing.from_metadata(store.resolve("demo-resnet").metadata["preprocessing"])
    pixels = imaging.preprocess(imaging.decode(data, max_pixels=10**7), pp)[None]
    meta = gateway.get_model_metadata("demo-resnet")
    assert meta["inputs"][0]["shape"] == [-1, *pixels.shape[1:]]
    probabilities = gateway.infer("demo-resnet", [tensor("pixel_values", pixels)]).as_numpy(
        "probabilities"
    )
    classes = meta["outputs"][0]["shape"][1]
    r = httpx.post(
        f"{stack.url}/v1/images/classifications",
        files={"file": ("x.png", data, "image/png")},
        data={"model": "demo-resnet", "top_k": str(classes)},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert sorted(p["index"] for p in predictions) == list(range(classes))  # every class, once
    for p in predictions:
        assert probabilities[0, p["index"]] == pytest.approx(p["score"], rel=1e-4, abs=1e-6)


def test_errors_reach_tritonclient_in_kserve_shape(
    gateway: httpclient.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException, match="does not exist") as unknown:
        gateway.infer("nope", [tensor("INPUT0", np.ones((1, 1), np.float32))])
    assert unknown.value.status() == "404"
    with pytest.raises(InferenceServerException, match="Unknown input 'WRONG'") as bad:
        gateway.infer("scale", [tensor("WRONG", np.ones((1, 1), np.float32))])
    assert bad.value.status() == "400"
    with pytest.raises(InferenceServerException, match="no version '7'"):
        gateway.get_model_metadata("scale", "7")


# -- faults ------------------------------------------------------------------------------------


def status_of(stack: RoutingStack, backend: str) -> dict[str, Any]:
    body = httpx.get(f"{stack.url}/status", timeout=30).json()
    return next(b for b in body["backends"] if b["name"] == backend)


def timed(call: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_a_backend_returning_errors_opens_its_breaker(stack: RoutingStack) -> None:
    x = np.ones((1, 3), dtype=np.float32)
    for _ in range(3):  # triton-fail's failure_threshold
        r = infer_json(stack.url, "fail", x)
        assert r.status_code == 502
        assert "Backend 'triton-fail' failed" in r.json()["error"]
        assert FAIL_MESSAGE in r.json()["error"]
    r, seconds = timed(lambda: infer_json(stack.url, "fail", x))
    assert r.status_code == 503 and set(r.json()) == {"error"}
    assert "triton-fail" in r.json()["error"] and "circuit breaker is open" in r.json()["error"]
    assert 1 <= int(r.headers["retry-after"]) <= 3
    print(f"\nfail: breaker open after 3 errors; refusal answered in {seconds * 1000:.1f} ms")
    status = status_of(stack, "triton-fail")
    assert status["healthy"] and not status["ready"] and status["breaker"]["state"] == "open"
    assert metric_value(stack.url, "gateway_breaker_state", backend="triton-fail") == 2


def test_a_backend_slower_than_its_timeout(
    stack: RoutingStack, direct: httpclient.InferenceServerClient
) -> None:
    x = np.ones((1, 3), dtype=np.float32)
    waits = []
    for _ in range(2):  # triton-slow: timeout 1 s, failure_threshold 2
        r, seconds = timed(lambda: infer_json(stack.url, "slow", x))
        assert r.status_code == 504, r.text
        assert "Backend 'triton-slow' did not answer within 1 s" in r.json()["error"]
        assert 1.0 <= seconds < SLEEPY_SECONDS - 0.5, seconds  # not Triton's 3 s
        waits.append(seconds)
    r, seconds = timed(lambda: infer_json(stack.url, "slow", x))
    assert r.status_code == 503 and seconds < 1.0, seconds  # open: no waiting at all
    print(
        f"\nslow: 504 after {waits[0]:.2f} s and {waits[1]:.2f} s (Triton takes "
        f"{SLEEPY_SECONDS:g} s), then 503 breaker open in {seconds * 1000:.1f} ms"
    )

    # Triton is still sleeping through the timed-out requests; once it is free and the
    # recovery time is up, a fast request is the half-open probe that closes the breaker.
    direct.infer("sleepy", [tensor("INPUT0", x)], parameters={"sleep_s": 0})
    time.sleep(float(status_of(stack, "triton-slow")["breaker"]["retry_after_s"]))
    r = infer_json(stack.url, "slow", x, parameters={"sleep_s": 0.1})
    assert r.status_code == 200, r.text
    assert status_of(stack, "triton-slow")["breaker"]["state"] == "closed"


def test_stopped_backend_opens_breaker_falls_back_and_recovers_after_restart(
    stack: RoutingStack,
) -> None:
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    want = reference_scale(x).reshape(-1).tolist()
    for model in ("flaky-scale", "flaky-scale-http", "flaky-scale-fb"):
        assert infer_json(stack.url, model, x).status_code == 200

    stack.flaky.stop()
    stopped = time.monotonic()
    answers = [timed(lambda: infer_json(stack.url, "flaky-scale", x)) for _ in range(4)]
    assert [r.status_code for r, _ in answers] == [503] * 4
    assert all(s < 2.0 for _, s in answers), answers  # never waits for the 5 s timeout
    refused = ["circuit breaker is open" in r.json()["error"] for r, _ in answers]
    assert refused == [False, True, True, True]  # 2 attempts + 1: the threshold of 3
    assert int(answers[-1][0].headers["retry-after"]) in (1, 2, 3)
    assert status_of(stack, "flaky")["breaker"]["state"] == "open"
    print(
        "\nstop: flaky-scale (gRPC, 1 retry, threshold 3): "
        + ", ".join(f"{s * 1000:.1f} ms" for _, s in answers)
        + " (the first unreachable, then breaker open)"
    )

    for _ in range(3):  # the HTTP backend to the same server, no retries
        assert infer_json(stack.url, "flaky-scale-http", x).status_code == 503
    assert status_of(stack, "flaky-http")["breaker"]["state"] == "open"

    r, seconds = timed(lambda: infer_json(stack.url, "flaky-scale-fb", x))
    assert r.status_code == 200, r.text  # served by the stable Triton instead
    assert r.json()["outputs"][0]["data"] == want
    print(f"stop: flaky-scale-fb fell back to scale-http in {seconds * 1000:.1f} ms")
    status = status_of(stack, "flaky")
    assert not status["healthy"] and not status["ready"]
    assert metric_value(stack.url, "gateway_breaker_state", backend="flaky") == 2
    assert metric_value(stack.url, "gateway_fallbacks_total", model="flaky-scale-fb") >= 1

    stack.flaky.start()
    restarted = time.monotonic()
    closed_at = wait_until_closed(stack, "flaky-scale", x, deadline_s=60)
    print(
        f"restart: Triton back {restarted - stopped:.1f} s after the stop; breaker closed "
        f"{closed_at - restarted:.1f} s after the restart (recovery_s 3)"
    )
    assert status_of(stack, "flaky")["breaker"]["state"] == "closed"
    assert wait_until_closed(stack, "flaky-scale-http", x, deadline_s=60)
    assert metric_value(stack.url, "gateway_breaker_state", backend="flaky") == 0
    assert (
        metric_value(
            stack.url, "gateway_breaker_transitions_total",
            backend="flaky", from_state="half_open", to_state="closed",
        ) >= 1
    )  # fmt: skip


def wait_until_closed(
    stack: RoutingStack, model: str, x: np.ndarray, *, deadline_s: float
) -> float:
    """Send requests as a client would, waiting Retry-After between refusals, until one passes."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        r = infer_json(stack.url, model, x)
        if r.status_code == 200:
            return time.monotonic()
        assert r.status_code == 503, r.text
        time.sleep(float(r.headers.get("retry-after", "0.5")))
    raise AssertionError(f"{model} did not recover within {deadline_s} s")
