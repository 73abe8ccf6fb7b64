"""A real Triton Inference Server serving the benchmark's ResNet-50, for bench/vision.py.

Runs in .venv-triton-bench (scripts/triton-env --bench: PyTriton and torch+cpu, numpy<2; with
BUILD=gpu, CUDA torch), not in .venv::

    .venv-triton-bench/bin/python bench/triton_resnet.py --model resnet50.pt \\
        --http-port 8000 --grpc-port 8001 --max-batch-size 8 --device cuda

`--model` is a TorchScript file bench/vision.py traces from the same stored model the bundle's
vision runner loads (transformers' ResNetForImageClassification with the same weights), so both
servers run the same network. Triton's dynamic batcher merges concurrent requests up to
`--max-batch-size` (the raw sweep's best batch, as the runner gets) and PyTriton's Python
function runs the batch under torch.inference_mode, then a softmax, as runners/classifier.py
does. Model `resnet-50`: FP32 pixel_values [3, 224, 224] -> FP32 probabilities [1000].
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="TorchScript file (pixel_values -> logits)")
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--queue-delay-us", type=int, default=5000, help="dynamic batcher delay")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--optimize", action="store_true",
        help="freeze the module and torch.jit.optimize_for_inference it at load, as the bundle's "
             "vision runner does (vision.graph: optimized; such a graph does not serialize)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    import torch
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error(
            "--device cuda: torch sees no CUDA device (BUILD=gpu scripts/triton-env --bench)"
        )
    net = torch.jit.load(args.model, map_location=args.device).eval()
    if args.optimize:
        with torch.no_grad():
            net = torch.jit.optimize_for_inference(torch.jit.freeze(net))

    @batch
    def infer(pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            logits = net(torch.from_numpy(pixel_values).to(args.device))
            probabilities = torch.softmax(logits.float(), dim=-1)
        return {"probabilities": probabilities.cpu().numpy()}

    config = TritonConfig(
        http_address="127.0.0.1", http_port=args.http_port,
        grpc_address="127.0.0.1", grpc_port=args.grpc_port,
        metrics_address="127.0.0.1", metrics_port=args.metrics_port,
        allow_gpu_metrics=False, log_verbose=0, exit_timeout_secs=3,
    )  # fmt: skip
    # loopback only; no access token, so the statistics extension the benchmark reads is open
    triton = Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[]))

    def _on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        triton.bind(
            model_name="resnet-50",
            infer_func=infer,
            inputs=[Tensor(name="pixel_values", dtype=np.float32, shape=(3, 224, 224))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(-1,))],
            config=ModelConfig(
                max_batch_size=args.max_batch_size,
                batcher=DynamicBatcher(max_queue_delay_microseconds=args.queue_delay_us),
            ),
            strict=True,
        )
        triton.serve()
    except KeyboardInterrupt:
        pass
    finally:
        triton.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
