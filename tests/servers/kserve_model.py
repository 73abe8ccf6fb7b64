"""A real KServe model server (`kserve.ModelServer`, KServe's V1 protocol) for the TF Serving
adapter's integration tests: V1's `POST /v1/models/{m}:predict` takes TF Serving's predict format.

Runs in .venv-kserve (scripts/kserve-env), not in .venv::

    .venv-kserve/bin/python tests/servers/kserve_model.py --http_port 8080 --grpc_port 8081

Models (each answers the row format, {"instances"} -> {"predictions"}, and the columnar one,
{"inputs"} -> {"outputs"}, as TF Serving does; ``reference_*`` compute the numbers with numpy):

``linear``  one input, rows of 3 numbers -> one output, rows of 2: x @ WEIGHT + BIAS.
``tagged``  two named inputs, ``x`` (rows of 3 numbers) and ``tag`` (a string per row) -> two
            named outputs, ``y`` (linear of x) and ``tag`` (the tag upper-cased).

A row of the wrong length is KServe's InvalidInput: a 400 with an ``error`` body, as TF Serving's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WEIGHT = np.array([[1.0, -1.0], [2.0, 0.5], [0.0, 3.0]])
BIAS = np.array([0.5, -1.0])
FEATURES = WEIGHT.shape[0]


def reference_linear(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) @ WEIGHT + BIAS


def _linear(rows: Any) -> list[Any]:
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != FEATURES:
        raise ValueError(f"expected rows of {FEATURES} numbers, got shape {list(x.shape)}")
    return list(reference_linear(x).tolist())


def _tagged(x: Any, tags: Any) -> dict[str, list[Any]]:
    return {"y": _linear(x), "tag": [str(t).upper() for t in tags]}


def predict(model: str, body: dict[str, Any]) -> dict[str, Any]:
    """TF Serving's answer to a predict body (ValueError for one it would refuse)."""
    if "instances" in body:
        rows = body["instances"]
        if model == "linear":
            return {"predictions": _linear(rows)}
        columns = _tagged([r["x"] for r in rows], [r["tag"] for r in rows])
        return {
            "predictions": [
                dict(zip(columns, v, strict=True)) for v in zip(*columns.values(), strict=True)
            ]
        }
    if "inputs" in body:
        inputs = body["inputs"]
        if model == "linear":
            return {"outputs": _linear(inputs)}
        return {"outputs": _tagged(inputs["x"], inputs["tag"])}
    raise ValueError("a predict body has 'instances' or 'inputs'")


def main() -> None:
    import kserve
    from kserve.errors import InvalidInput

    class TFServingStyle(kserve.Model):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            self.ready = True

        async def predict(
            self, payload: Any, headers: Any = None, response_headers: Any = None
        ) -> Any:
            try:
                return predict(self.name, payload)
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidInput(f"{self.name}: {exc}") from None

    # kserve.model_server reads --http_port and the rest from the command line when imported
    kserve.ModelServer(enable_grpc=False, workers=1).start(
        [TFServingStyle("linear"), TFServingStyle("tagged")]
    )


if __name__ == "__main__":
    main()
