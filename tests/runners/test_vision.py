"""The Classifier behind the vision runner, on tiny random ResNets in both stored formats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contract.vision import top_k
from runners.classifier import Classifier

LABELS = ["a", "b", "c", "d", "e"]
PREPROCESSING = {"resize": 40, "crop_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}


def tiny_resnet() -> Any:
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        id2label=dict(enumerate(LABELS)),
        label2id={v: i for i, v in enumerate(LABELS)},
    )
    return ResNetForImageClassification(config).eval()


@pytest.fixture(scope="module", params=["transformers", "torch-export"])
def classifier(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Classifier:
    from models.export import LogitsOnly, export_program
    from models.store import EXPORT_FILE

    path: Path = tmp_path_factory.mktemp(request.param)
    model = tiny_resnet()
    if request.param == "transformers":
        model.save_pretrained(path)
    else:
        torch.export.save(export_program(LogitsOnly(model), 32), path / EXPORT_FILE)
    metadata = {"format": request.param, "labels": LABELS, "preprocessing": PREPROCESSING}
    return Classifier.load(path, metadata, device=torch.device("cpu"))


def pixels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32), dtype=np.float32)


def test_probabilities_sum_to_one_per_image(classifier: Classifier) -> None:
    probs = classifier.probabilities(pixels(3))
    assert probs.shape == (3, len(LABELS)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_a_batch_gives_what_each_image_gives_alone(classifier: Classifier) -> None:
    batch = pixels(4, seed=1)
    together = classifier.probabilities(batch)
    alone = np.concatenate([classifier.probabilities(batch[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_labels_and_preprocessing_come_from_the_metadata(classifier: Classifier) -> None:
    assert classifier.labels == LABELS
    assert classifier.preprocessing.input_shape == (3, 32, 32)


def test_top_k_is_sorted_by_score_with_label_and_index(classifier: Classifier) -> None:
    probs = classifier.probabilities(pixels(1, seed=2))[0]
    top = classifier.top_k(probs, 3)
    assert [p.score for p in top] == sorted((float(p) for p in probs), reverse=True)[:3]
    assert all(p.label == LABELS[p.index] for p in top)


def test_top_k_breaks_ties_by_lower_index() -> None:
    top = top_k(np.array([0.1, 0.4, 0.1, 0.4]), ["a", "b", "c", "d"], 3)
    assert [(p.label, p.index) for p in top] == [("b", 1), ("d", 3), ("a", 0)]


def test_unknown_format_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model format"):
        Classifier.load(tmp_path, {"format": "onnx"}, device=torch.device("cpu"))
