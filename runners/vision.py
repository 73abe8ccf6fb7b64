"""The image classification runner: preprocessed pixel batches in, class probabilities out.

`predict` is the batchable API: BentoML's dispatcher merges concurrent calls along axis 0 and
the whole batch runs in one forward pass. It takes tensors, not files, so that decoding happens
in the caller (the gateway) where a corrupt file fails only its own request, and so the KServe V2
tensor route can call the same API. `info` tells callers how to preprocess; `classify` takes an
image file for direct BentoML clients::

    client = bentoml.SyncHTTPClient("http://localhost:3000")
    client.classify(image=Path("cat.jpg"), top_k=3)
    # [{"label": "tabby cat", "index": 3, "score": 0.41}, ...]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
import torch
from bentoml.exceptions import InvalidArgument
from bentoml.validators import ContentType, DType

from contract import imaging
from contract.names import VISION as VISION_NAME
from contract.vision import Prediction, VisionInfo, top_k
from models.store import EXPORT_FILE
from runners.device import select_device
from runners.metrics import BATCH_SIZE, RUNNER_CONNECTION
from settings import get_settings

SETTINGS = get_settings()
VISION = SETTINGS.vision

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


@bentoml.service(
    name=VISION_NAME, workers=1, traffic={"timeout": 600}, runner_connection=RUNNER_CONNECTION
)
class ImageClassifier:
    model = bentoml.models.BentoModel(VISION.model)

    def __init__(self) -> None:
        stored = self.model
        self.tag = str(stored.tag)
        self.classifier = Classifier.load(
            stored.path, stored.info.metadata, device=select_device(SETTINGS.device)
        )

    @bentoml.api(
        batchable=VISION.batching,
        max_batch_size=VISION.max_batch_size,
        max_latency_ms=VISION.max_latency_ms,
    )
    def predict(self, pixel_values: Annotated[np.ndarray, DType("float32")]) -> np.ndarray:
        """Class probabilities (N, classes) for preprocessed pixels (N, 3, H, W), see `info`."""
        BATCH_SIZE.labels(runner=VISION_NAME).observe(len(pixel_values))
        return self.classifier.probabilities(pixel_values)

    @bentoml.api
    def info(self) -> VisionInfo:
        pp = self.classifier.preprocessing
        return VisionInfo(
            model=self.tag,
            labels=self.classifier.labels,
            preprocessing=pp.metadata(),
            input_shape=pp.input_shape,
        )

    @bentoml.api
    def classify(
        self, image: Annotated[Path, ContentType("image/*")], top_k: int = VISION.top_k
    ) -> list[Prediction]:
        """Top-k labels for one image file (not batched; the gateway batches through predict)."""
        if not 1 <= top_k <= len(self.classifier.labels):
            raise InvalidArgument(f"top_k must be between 1 and {len(self.classifier.labels)}")
        try:
            pixels = imaging.prepare(
                image.read_bytes(),
                self.classifier.preprocessing,
                max_pixels=SETTINGS.limits.max_image_pixels,
            )[None]
        except imaging.ImageError as exc:
            raise InvalidArgument(str(exc)) from None
        BATCH_SIZE.labels(runner=VISION_NAME).observe(1)
        return self.classifier.top_k(self.classifier.probabilities(pixels)[0], top_k)
