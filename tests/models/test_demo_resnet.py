"""demo-resnet: logits shape, human labels, preprocessing consistent with its processor config."""

from __future__ import annotations

import pytest
import torch

from models import preprocessing, store
from models.demo_resnet import LABELS
from tests.models.conftest import DemoStore


@pytest.mark.parametrize("batch", [1, 4])
def test_forward_gives_logits_per_label(demo_store: DemoStore, batch: int) -> None:
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(store.resolve("demo-resnet").path)
    with torch.inference_mode():
        logits = model.eval()(pixel_values=torch.randn(batch, 3, 224, 224)).logits
    assert logits.shape == (batch, len(LABELS))
    assert torch.isfinite(logits).all()


def test_labels_are_human_names(demo_store: DemoStore) -> None:
    from transformers import AutoConfig

    model = store.resolve("demo-resnet")
    config = AutoConfig.from_pretrained(model.path)
    assert [config.id2label[i] for i in range(len(LABELS))] == model.metadata["labels"] == LABELS
    assert "golden retriever" in LABELS and "tabby cat" in LABELS
    assert all(not label.startswith("LABEL_") for label in LABELS)


def test_processor_config_matches_metadata(demo_store: DemoStore) -> None:
    import json

    model = store.resolve("demo-resnet")
    saved = json.loads((model.path / "preprocessor_config.json").read_text())
    assert preprocessing.from_image_processor(saved) == model.metadata["preprocessing"]
