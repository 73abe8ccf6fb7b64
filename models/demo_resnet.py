"""``demo-resnet``: a small random transformers ResNet with ten human-readable labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import preprocessing, store
from models.spec import DemoModel

if TYPE_CHECKING:
    from transformers import ResNetForImageClassification

LABELS = [
    "tabby cat",
    "golden retriever",
    "red fox",
    "great white shark",
    "espresso",
    "pizza",
    "cheeseburger",
    "daisy",
    "sports car",
    "lighthouse",
]
PREPROCESSING = preprocessing.imagenet(resize=256, crop_size=224, resample="bilinear")

SPEC: dict[str, Any] = {
    "seed": 0,
    "labels": LABELS,
    "preprocessing": PREPROCESSING,
    "embedding_size": 32,
    "hidden_sizes": [32, 64, 128, 256],
    "depths": [1, 1, 1, 1],
    "layer_type": "basic",
}


def build_model() -> ResNetForImageClassification:
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        num_channels=3,
        embedding_size=SPEC["embedding_size"],
        hidden_sizes=SPEC["hidden_sizes"],
        depths=SPEC["depths"],
        layer_type=SPEC["layer_type"],
        id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)},
    )
    torch.manual_seed(SPEC["seed"])
    return ResNetForImageClassification(config).eval()


def write(path: Path) -> None:
    build_model().save_pretrained(path)
    processor_config = preprocessing.to_image_processor_config(PREPROCESSING)
    (path / "preprocessor_config.json").write_text(json.dumps(processor_config, indent=2) + "\n")


DEMO = DemoModel(
    name="demo-resnet",
    spec=SPEC,
    metadata=store.make_metadata(
        "image-classification",
        "demo",
        "transformers",
        labels=LABELS,
        preprocessing=PREPROCESSING,
        seed=SPEC["seed"],
    ),
    write=write,
)
