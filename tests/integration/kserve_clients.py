"""KServe's own Python clients against a KServe V2 server, run in .venv-kserve (scripts/kserve-env):
kserve's pins cannot share the main venv. It reads the calls to make from stdin and prints what
each client saw as JSON, for tests/integration/test_kserve_clients.py to check::

    echo '{"models": [{"name": "scale", "input": "INPUT0", "output": "OUTPUT0",
                       "data": [[1.0, 2.0]]}]}' |
        .venv-kserve/bin/python tests/integration/kserve_clients.py \\
            http://127.0.0.1:3000 127.0.0.1:8001

Every input is FP32, sent as binary data (the binary tensor extension over REST,
raw_input_contents over gRPC), as the clients send numpy arrays by default.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def request(model: dict[str, Any]) -> InferRequest:
    array = np.asarray(model["data"], dtype=np.float32)
    tensor = InferInput(model["input"], list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return InferRequest(model["name"], [tensor])


def output(response: Any, name: str) -> list[Any]:
    (tensor,) = [o for o in response.outputs if o.name == name]
    return np.asarray(tensor.as_numpy(), dtype=np.float64).tolist()


async def over_rest(url: str, models: list[dict[str, Any]]) -> dict[str, Any]:
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=240, retries=0)) as client:
        seen: dict[str, Any] = {
            "live": await client.is_server_live(url),
            "ready": await client.is_server_ready(url),
        }
        for model in models:
            response = await client.infer(url, request(model), model_name=model["name"])
            seen[model["name"]] = {
                "ready": await client.is_model_ready(url, model["name"]),
                "output": output(response, model["output"]),
            }
        return seen


async def over_grpc(url: str, models: list[dict[str, Any]]) -> dict[str, Any]:
    async with InferenceGRPCClient(url, timeout=240, retries=0) as client:
        seen: dict[str, Any] = {
            "live": await client.is_server_live(),
            "ready": await client.is_server_ready(),
        }
        for model in models:
            response = await client.infer(request(model))
            seen[model["name"]] = {
                "ready": await client.is_model_ready(model["name"]),
                "output": output(response, model["output"]),
            }
        return seen


async def main(rest_url: str, grpc_url: str) -> None:
    models = json.load(sys.stdin)["models"]
    seen = {"rest": await over_rest(rest_url, models), "grpc": await over_grpc(grpc_url, models)}
    json.dump(seen, sys.stdout)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:3]))
