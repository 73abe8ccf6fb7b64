"""A loaded image classifier (transformers or torch-export), usable without a server."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract import imaging
from contract.vision import Prediction, top_k
from models.store import EXPORT_FILE

Forward = Callable[[torch.Tensor], torch.Tensor]


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
        cls, path: str | Path, metadata: Mapping[str, Any], *, device: torch.device
    ) -> Classifier:
        """From a model directory and its store metadata (format transformers or torch-export)."""
        forward, labels = _load_forward(Path(path), str(metadata.get("format")), device)
        return cls(
            forward,
            labels=list(metadata.get("labels") or labels),
            preprocessing=imaging.Preprocessing.from_metadata(metadata.get("preprocessing")),
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


def _load_forward(path: Path, fmt: str, device: torch.device) -> tuple[Forward, list[str]]:
    if fmt == "torch-export":
        module = torch.export.load(str(path / EXPORT_FILE)).module().to(device)
        return module, []
    if fmt == "transformers":
        from transformers import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(path).to(device).eval()
        id2label = model.config.id2label
        return (lambda x: model(pixel_values=x).logits), [id2label[i] for i in sorted(id2label)]
    raise ValueError(f"unknown model format {fmt!r}: expected 'transformers' or 'torch-export'")
