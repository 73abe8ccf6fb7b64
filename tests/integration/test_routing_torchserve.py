"""The gateway routing to a real TorchServe (tests/servers/torchserve.py), through the clients its
users have: httpx on /v1/images/classifications, BentoML's client on the bundle's `classify`,
tritonclient on /v2.

The image model is the demo ResNet exported to TorchScript and archived at test time, with a
handler that applies the bundle's own preprocessing, so an image gets the same answer through
TorchServe as through the bundled runner; the tensor model upper-cases its bytes. Then the request
id in TorchServe's own log, and the server stopped and started again.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import bentoml
import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from contract import imaging
from tests.integration.conftest import RoutingStack
from tests.media import image_bytes, noise_image, solid

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

IMAGES = {
    "noise-0": image_bytes(noise_image(0)),
    "noise-1": image_bytes(noise_image(1, (320, 240)), "JPEG"),
    "red": image_bytes(solid((200, 30, 40), (300, 200)), "JPEG"),
    "teal": image_bytes(solid((20, 160, 150))),
}


@pytest.fixture(scope="module")
def stack(routing_stack: RoutingStack) -> RoutingStack:
    print(
        f"\nTorchServe: models packed in {routing_stack.torchserve.archive_s:.1f} s, "
        f"ready {routing_stack.torchserve.last_ready_s:.1f} s after its launch "
        "(in parallel with the routing stack's other servers)"
    )
    return routing_stack


def classify(
    url: str, model: str, image: bytes, *, request_id: str | None = None, **fields: Any
) -> httpx.Response:
    data = {"model": model, **{k: str(v) for k, v in fields.items()}}
    files = {"file": ("image", image, "image/png")}
    headers = {"X-Request-Id": request_id} if request_id else {}
    return httpx.post(
        f"{url}/v1/images/classifications", data=data, files=files, headers=headers, timeout=60
    )


def labels_and_scores(predictions: list[dict[str, Any]]) -> tuple[list[Any], list[float]]:
    return [(p["label"], p["index"]) for p in predictions], [p["score"] for p in predictions]


@pytest.mark.parametrize("name", list(IMAGES))
def test_an_image_gets_the_bundled_runners_answer_through_torchserve(
    stack: RoutingStack, name: str
) -> None:
    image = IMAGES[name]
    through_ts = classify(stack.url, "ts-resnet", image, top_k=3)
    bundled = classify(stack.url, "demo-resnet", image, top_k=3)
    assert through_ts.status_code == 200, through_ts.text
    assert bundled.status_code == 200, bundled.text
    assert through_ts.json()["model"] == "ts-resnet"
    ts_labels, ts_scores = labels_and_scores(through_ts.json()["predictions"])
    labels, scores = labels_and_scores(bundled.json()["predictions"])
    assert ts_labels[0] == labels[0]  # the same top label and class index
    np.testing.assert_allclose(ts_scores, scores, atol=1e-4)  # same pixels, same network
    assert ts_labels == labels


def test_the_gateways_predictions_are_torchserves_own_scores(stack: RoutingStack) -> None:
    image = IMAGES["noise-0"]
    direct = httpx.post(
        f"{stack.torchserve.inference_url}/predictions/resnet",
        content=image,
        headers={"Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert direct.status_code == 200, direct.text
    scores = direct.json()  # {label: score}, every class in class order
    through = classify(stack.url, "ts-resnet", image, top_k=len(scores)).json()["predictions"]
    assert {p["label"]: p["score"] for p in through} == scores
    assert [p["index"] for p in through] == [list(scores).index(p["label"]) for p in through]
    assert [p["score"] for p in through] == sorted(scores.values(), reverse=True)


def test_bentomls_client_classifies_through_torchserve_too(
    stack: RoutingStack, tmp_path: Path
) -> None:
    path = tmp_path / "red.jpg"
    path.write_bytes(IMAGES["red"])
    with bentoml.SyncHTTPClient(stack.url, timeout=60) as client:
        typed = client.classify(image=path, model="ts-resnet", top_k=2)
    http = classify(stack.url, "ts-resnet", IMAGES["red"], top_k=2).json()["predictions"]
    assert [dict(p) for p in typed] == http


def test_what_the_handler_cannot_read_is_a_400_with_its_reason(stack: RoutingStack) -> None:
    bad = b"GIF89a but not really"
    with pytest.raises(imaging.ImageError) as reason:  # what the handler's decoding says
        imaging.decode(bad, max_pixels=1_000_000)
    r = classify(stack.url, "ts-resnet", bad)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"] == str(reason.value)
    r = classify(stack.url, "ts-resnet", IMAGES["teal"], top_k=11)
    assert r.status_code == 400, r.text
    assert "top_k must be between 1 and 10" in r.json()["error"]["message"]


def test_the_tensor_model_through_tritonclient(
    gateway: httpclient.InferenceServerClient,
) -> None:
    meta = gateway.get_model_metadata("ts-upper")
    assert meta["platform"] == "torchserve"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("data", "BYTES", [1])
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("output", "BYTES", [1])
    ]
    assert gateway.is_model_ready("ts-upper")
    for version in ("", "1.0"):
        wire = httpclient.InferInput("data", [1], "BYTES")
        wire.set_data_from_numpy(np.array([b"hello, torchserve \x00\xff"], dtype=object))
        result = gateway.infer("ts-upper", [wire], model_version=version)
        assert result.as_numpy("output").tolist() == [b"HELLO, TORCHSERVE \x00\xff"]


def test_tensors_the_model_cannot_take_get_a_kserve_400(
    gateway: httpclient.InferenceServerClient,
) -> None:
    wire = httpclient.InferInput("data", [2], "BYTES")
    wire.set_data_from_numpy(np.array([b"a", b"b"], dtype=object))
    with pytest.raises(InferenceServerException, match=r"must have shape \[1\]") as caught:
        gateway.infer("ts-upper", [wire])
    assert caught.value.status() == "400"


def test_the_request_id_reaches_torchserve(stack: RoutingStack) -> None:
    request_id = f"ts-{uuid.uuid4().hex[:12]}"
    r = classify(stack.url, "ts-resnet", IMAGES["teal"], request_id=request_id)
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == request_id
    deadline = time.monotonic() + 10  # the worker's log passes through the frontend's
    while f"X-Request-Id {request_id}" not in stack.torchserve.log_text():
        assert time.monotonic() < deadline, "the handler never logged the gateway's request id"
        time.sleep(0.2)


def test_a_stopped_torchserve_is_a_503_naming_it_or_the_fallback_answers(
    stack: RoutingStack,
) -> None:
    image = IMAGES["noise-1"]
    bundled = classify(stack.url, "demo-resnet", image, top_k=3).json()["predictions"]
    assert classify(stack.url, "ts-resnet", image).status_code == 200

    stack.torchserve.stop()
    stopped = time.monotonic()
    try:
        started = time.monotonic()
        r = classify(stack.url, "ts-resnet", image)
        assert time.monotonic() - started < 5.0  # refused at once: never a hang
        assert r.status_code == 503, r.text
        assert "Backend 'torchserve' is unavailable" in r.json()["error"]["message"]
        v2 = httpx.post(
            f"{stack.url}/v2/models/ts-upper/infer",
            json={"inputs": [{"name": "data", "datatype": "BYTES", "shape": [1],
                              "data": ["x"]}]},
            timeout=30,
        )  # fmt: skip
        assert v2.status_code == 503, v2.text
        assert "Backend 'torchserve'" in v2.json()["error"]  # KServe's shape
        fallback = classify(stack.url, "ts-resnet-fb", image, top_k=3)
        assert fallback.status_code == 200, fallback.text  # the bundled runner answered
        assert fallback.json()["predictions"] == bundled
    finally:
        stack.torchserve.start()
    restarted = time.monotonic()
    deadline = restarted + 60
    while (r := classify(stack.url, "ts-resnet", image)).status_code != 200:
        assert r.status_code == 503 and time.monotonic() < deadline, r.text
        time.sleep(float(r.headers.get("retry-after", "0.5")))
    print(
        f"\nTorchServe stopped for {restarted - stopped:.1f} s; ready again "
        f"{stack.torchserve.last_ready_s:.1f} s after its relaunch, the route answering "
        f"{time.monotonic() - restarted:.1f} s after it"
    )
