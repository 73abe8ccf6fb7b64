"""A real Triton Inference Server with small deterministic models, for integration tests.

Runs in .venv-triton (made by scripts/triton-env; PyTriton needs numpy<2), not in .venv::

    .venv-triton/bin/python tests/servers/triton_models.py --http-port 8000 --grpc-port 8001

PyTriton starts its bundled ``tritonserver`` binary; each model below is a Python function that
Triton's Python backend calls through PyTriton's proxy. The server listens on 127.0.0.1, speaks
KServe V2 over HTTP and gRPC, and blocks until SIGTERM or SIGINT, then stops cleanly.

Models (the numbers are what tests check; ``reference_*`` below compute them with numpy):

``scale``     FP32 INPUT0 [-1] -> FP32 OUTPUT0 [-1] = INPUT0 * 2 + 1. max_batch_size 16 with a
              dynamic batcher, so concurrent requests are executed together: Triton's statistics
              (``GET /v2/models/scale/stats``) show ``execution_count`` < ``inference_count``.
``classify``  FP32 pixel_values [3, 8, 8] -> FP32 probs [4] (softmax of a fixed seeded linear
              layer over the flattened pixels) and BYTES label [1] (the argmax class name).
              max_batch_size 8, no dynamic batcher.
``sleepy``    FP32 INPUT0 [-1] -> FP32 OUTPUT0 = INPUT0 after sleeping: the request parameter
              ``sleep_s`` if given, else ``--sleepy-seconds``. For timeout tests.
``fail``      FP32 INPUT0 [-1] -> always raises; the client gets a KServe error.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from typing import Any

import numpy as np

CLASSIFY_SHAPE = (3, 8, 8)
CLASSIFY_LABELS = ("cat", "dog", "bird", "fish")
CLASSIFY_SEED = 1234
FAIL_MESSAGE = "fail model: this model always fails"


def classify_weights() -> tuple[np.ndarray, np.ndarray]:
    """The fixed linear layer of ``classify``: W [192, 4] and b [4], float32."""
    rng = np.random.default_rng(CLASSIFY_SEED)
    features = int(np.prod(CLASSIFY_SHAPE))
    weight = rng.standard_normal((features, len(CLASSIFY_LABELS))).astype(np.float32) * 0.1
    bias = rng.standard_normal(len(CLASSIFY_LABELS)).astype(np.float32) * 0.1
    return weight, bias


def reference_scale(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) * np.float32(2) + np.float32(1)).astype(np.float32)


def reference_classify(pixel_values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Probabilities [B, 4] and labels for pixel_values [B, 3, 8, 8]."""
    weight, bias = classify_weights()
    logits = pixel_values.reshape(pixel_values.shape[0], -1).astype(np.float32) @ weight + bias
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    probs = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return probs, [CLASSIFY_LABELS[i] for i in probs.argmax(axis=1)]


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, default=None, help="default: Triton's 8002")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument(
        "--workspace",
        default=None,
        help="PyTriton workspace dir (must not exist, removed at exit); default ~/.cache/pytriton",
    )
    parser.add_argument(
        "--sleepy-seconds",
        type=float,
        default=2.0,
        help="how long `sleepy` sleeps when a request has no `sleep_s` parameter",
    )
    parser.add_argument(
        "--scale-queue-delay-us",
        type=int,
        default=2000,
        help="dynamic batcher max_queue_delay_microseconds of `scale`",
    )
    parser.add_argument(
        "--exit-timeout-secs",
        type=int,
        default=3,
        help="how long Triton waits at stop for open HTTP connections, in-flight requests and "
        "model unloading before it exits anyway",
    )
    parser.add_argument("--verbose", action="store_true", help="PyTriton INFO logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stdout,
    )

    # Imported here so `--help` and the reference functions work without PyTriton.
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    weight, bias = classify_weights()
    labels = np.array([s.encode() for s in CLASSIFY_LABELS], dtype=object)

    @batch
    def scale(INPUT0: np.ndarray) -> dict[str, np.ndarray]:  # the Triton tensor's name
        return {"OUTPUT0": reference_scale(INPUT0)}

    @batch
    def classify(pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        logits = pixel_values.reshape(pixel_values.shape[0], -1) @ weight + bias
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        probs = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return {"probs": probs, "label": labels[probs.argmax(axis=1)].reshape(-1, 1)}

    def sleepy(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        # Without @batch: one response per request, and each request's parameters are visible.
        delay = max(float(r.parameters.get("sleep_s", args.sleepy_seconds)) for r in requests)
        time.sleep(delay)
        return [{"OUTPUT0": np.asarray(r["INPUT0"], dtype=np.float32)} for r in requests]

    def fail(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        raise RuntimeError(FAIL_MESSAGE)

    vector_in = [Tensor(name="INPUT0", dtype=np.float32, shape=(-1,))]
    vector_out = [Tensor(name="OUTPUT0", dtype=np.float32, shape=(-1,))]

    config = TritonConfig(
        http_address=args.address,
        http_port=args.http_port,
        grpc_address=args.address,
        grpc_port=args.grpc_port,
        metrics_address=args.address,
        metrics_port=args.metrics_port,
        allow_gpu_metrics=False,
        log_verbose=0,
        # Triton's graceful stop first waits for clients' open keep-alive HTTP connections to
        # close, then unloads the models (2-5 s): bounded here so stop() stays quick.
        exit_timeout_secs=args.exit_timeout_secs,
    )
    # Test-only server on 127.0.0.1: no access token, so /v2/models/<m>/stats is open to tests.
    security = TritonSecurityConfig(restricted_endpoints=[])
    triton = Triton(config=config, workspace=args.workspace, security_config=security)

    def _on_signal(signum: int, _frame: Any) -> None:
        # Triton.serve() stops the server and returns on KeyboardInterrupt.
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    try:
        triton.bind(
            model_name="scale",
            infer_func=scale,
            inputs=vector_in,
            outputs=vector_out,
            config=ModelConfig(
                max_batch_size=16,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.scale_queue_delay_us),
            ),
            strict=True,
        )
        triton.bind(
            model_name="classify",
            infer_func=classify,
            inputs=[Tensor(name="pixel_values", dtype=np.float32, shape=CLASSIFY_SHAPE)],
            outputs=[
                Tensor(name="probs", dtype=np.float32, shape=(len(CLASSIFY_LABELS),)),
                Tensor(name="label", dtype=bytes, shape=(1,)),
            ],
            config=ModelConfig(max_batch_size=8, batcher=None),  # type: ignore[arg-type]
            strict=True,
        )
        triton.bind(
            model_name="sleepy",
            infer_func=sleepy,
            inputs=vector_in,
            outputs=vector_out,
            # Requests that queue behind a sleeping one run together in the next batch.
            config=ModelConfig(max_batch_size=16, batcher=DynamicBatcher()),
        )
        triton.bind(
            model_name="fail",
            infer_func=fail,
            inputs=vector_in,
            outputs=vector_out,
            config=ModelConfig(max_batch_size=16, batcher=None),  # type: ignore[arg-type]
        )
        triton.serve()
    except KeyboardInterrupt:
        pass
    finally:
        triton.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
