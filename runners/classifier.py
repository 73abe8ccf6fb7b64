"""A loaded image classifier (transformers or torch-export), usable without a server.

With ``graph="optimized"`` (the runner's default, ``vision.graph``) the network runs as
TorchScript made for inference: traced, frozen, then ``torch.jit.optimize_for_inference``
(batch norms folded into the convolutions, oneDNN kernels on CPU). On this project's 2-core CPU
that runs a ResNet-50 batch of 8 at ~1.4x eager PyTorch's images/s. The optimized graph is checked
against eager on batch sizes it was not traced with before it is used; when the trace fails or
disagrees, the classifier logs why and runs eager.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract import imaging
from contract.names import EXPORT_FILE
from contract.vision import Prediction, top_k
from settings import VisionGraph

Forward = Callable[[torch.Tensor], torch.Tensor]

log = logging.getLogger(__name__)


class Classifier:
    """A loaded image classifier; plain class so tests and the benchmark use it without a server."""

    def __init__(
        self,
        forward: Forward,
        *,
        labels: list[str],
        preprocessing: imaging.Preprocessing,
        device: torch.device,
    ) -> None:
        self._forward = forward
        self.labels = labels
        self.preprocessing = preprocessing
        self.device = device

    @classmethod
    def load(
        cls,
        path: str | Path,
        metadata: Mapping[str, Any],
        *,
        device: torch.device,
        graph: VisionGraph = "eager",
    ) -> Classifier:
        """From a model directory and its store metadata (format transformers or torch-export)."""
        module, labels = _load_module(Path(path), str(metadata.get("format")), device)
        preprocessing = imaging.Preprocessing.from_metadata(metadata.get("preprocessing"))
        forward: Forward = module
        if graph == "optimized":
            forward = optimized(module, preprocessing.input_shape, device) or module
        return cls(
            forward,
            labels=list(metadata.get("labels") or labels),
            preprocessing=preprocessing,
            device=device,
        )

    def probabilities(self, pixel_values: np.ndarray) -> np.ndarray:
        """Softmax over classes for a (N, 3, H, W) float32 batch, in one forward pass."""
        pixels = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if not pixels.flags.writeable:  # a pickle buffer straight off the wire
            pixels = pixels.copy()
        batch = torch.from_numpy(pixels)
        with torch.inference_mode():
            logits = self._forward(batch.to(self.device))
            return torch.softmax(logits.float(), dim=-1).cpu().numpy()

    def top_k(self, probabilities: np.ndarray, k: int) -> list[Prediction]:
        return top_k(probabilities, self.labels, k)


def optimized(
    module: torch.nn.Module, input_shape: tuple[int, ...], device: torch.device
) -> torch.jit.ScriptModule | None:
    """``module`` (pixels -> logits) as TorchScript for inference, or None (logged) when it does
    not trace or its logits differ from eager's on batches of 1 and 3 (it is traced with 2, so a
    batch size baked into the graph shows)."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Tracing warns of every Python branch on a tensor's shape (transformers' ResNet
            # checks the channel count): those are fixed by input_shape; the check below is what
            # tells whether the graph holds.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, torch.randn(2, *input_shape, device=device))
            graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        with torch.inference_mode():
            for n in (1, 3):
                x = torch.randn(n, *input_shape, device=device)
                want, got = module(x), graph(x)
                if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
                    worst = (got - want).abs().max().item() if got.shape == want.shape else None
                    raise ValueError(f"its logits differ from eager's (batch {n}, max {worst})")
    except Exception as exc:  # any failure means: serve eager
        log.warning("vision graph: serving eager PyTorch, the optimized graph failed: %s", exc)
        return None
    return graph


class LogitsOnly(torch.nn.Module):
    """Wrap a transformers image classifier so that ``forward(pixel_values)`` returns logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.model(pixel_values=pixel_values).logits
        return logits


def _load_module(path: Path, fmt: str, device: torch.device) -> tuple[torch.nn.Module, list[str]]:
    """The stored network as a module ``(N, 3, H, W) pixels -> logits``, and its labels."""
    if fmt == "torch-export":
        module = torch.export.load(str(path / EXPORT_FILE)).module().to(device)
        return module, []
    if fmt == "transformers":
        from transformers import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(path).to(device).eval()
        id2label = model.config.id2label
        return LogitsOnly(model).eval(), [id2label[i] for i in sorted(id2label)]
    raise ValueError(f"unknown model format {fmt!r}: expected 'transformers' or 'torch-export'")
