"""KServe's own Python clients against the real bundle, as a KServe user calls a model server:
kserve 0.21's `InferenceRESTClient` (protocol v2) on /v2 and `InferenceGRPCClient` on the gRPC port
(`gateway.grpc_port`): server live and ready, model ready, and infer, for a bundled runner
(demo-resnet) and a model on a real Triton server (scale). kserve's pins cannot share the main
venv, so the clients run in .venv-kserve (scripts/kserve-env) through kserve_clients.py; the
answers are checked here against tritonclient's and the reference function's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from tests.integration.conftest import RoutingStack
from tests.servers.bundle import ROOT
from tests.servers.triton_models import reference_scale

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KSERVE_PYTHON = ROOT / ".venv-kserve" / "bin" / "python"
SCRIPT = Path(__file__).with_name("kserve_clients.py")


def resnet_via_tritonclient(url: str, pixels: np.ndarray) -> np.ndarray:
    client = httpclient.InferenceServerClient(url.removeprefix("http://"), network_timeout=240)
    try:
        wire = httpclient.InferInput("pixel_values", list(pixels.shape), "FP32")
        wire.set_data_from_numpy(pixels)
        return np.asarray(client.infer("demo-resnet", [wire]).as_numpy("probabilities"))
    finally:
        client.close()


def test_kserve_rest_and_grpc_clients_check_health_and_infer(routing_stack: RoutingStack) -> None:
    assert KSERVE_PYTHON.exists(), f"{KSERVE_PYTHON} is missing: run scripts/kserve-env first"
    url = routing_stack.url
    (spec,) = httpx.get(f"{url}/v2/models/demo-resnet", timeout=30).json()["inputs"]
    pixels = np.random.default_rng(11).random((1, *spec["shape"][1:]), dtype=np.float32)
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    models = [
        {"name": "scale", "input": "INPUT0", "output": "OUTPUT0", "data": x.tolist()},
        {"name": "demo-resnet", "input": "pixel_values", "output": "probabilities",
         "data": pixels.tolist()},
    ]  # fmt: skip
    grpc_url = f"127.0.0.1:{routing_stack.config['gateway']['grpc_port']}"
    run = subprocess.run(
        [str(KSERVE_PYTHON), str(SCRIPT), url, grpc_url],
        input=json.dumps({"models": models}),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    seen = json.loads(run.stdout)
    probabilities = resnet_via_tritonclient(url, pixels)
    for transport in ("rest", "grpc"):
        got = seen[transport]
        assert (got["live"], got["ready"]) == (True, True), transport
        assert got["scale"]["ready"] and got["demo-resnet"]["ready"], transport
        np.testing.assert_array_equal(
            np.asarray(got["scale"]["output"], dtype=np.float32), reference_scale(x)
        )
        np.testing.assert_allclose(
            got["demo-resnet"]["output"], probabilities, rtol=1e-4, atol=1e-6
        )
