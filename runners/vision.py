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

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument
from bentoml.validators import ContentType, DType

from contract import imaging
from contract.names import VISION as VISION_NAME
from contract.vision import Prediction, VisionInfo
from runners.metrics import BATCH_SIZE
from runners.shell import batched_runner, starting
from settings import get_settings

if TYPE_CHECKING:
    from runners.classifier import Classifier

SETTINGS = get_settings()
VISION = SETTINGS.vision


@batched_runner(VISION_NAME)
class ImageClassifier:
    model = bentoml.models.BentoModel(VISION.model)

    def __init__(self) -> None:
        with starting(VISION.max_hold_ms) as device:
            from runners.classifier import Classifier  # torch loads in this service's process only

            stored = self.model
            self.tag = str(stored.tag)
            self.classifier: Classifier = Classifier.load(
                stored.path,
                stored.info.metadata,
                device=device,
                graph=VISION.graph,
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
