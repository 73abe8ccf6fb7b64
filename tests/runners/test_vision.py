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


FORMATS = ["transformers", "torch-export"]


@pytest.fixture(scope="module", params=FORMATS)
def stored(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random ResNet stored in one of the two formats (same weights in both)."""
    from contract.names import EXPORT_FILE
    from models.export import LogitsOnly, export_program

    path: Path = tmp_path_factory.mktemp(request.param)
    model = tiny_resnet()
    if request.param == "transformers":
        model.save_pretrained(path)
    else:
        torch.export.save(export_program(LogitsOnly(model), 32), path / EXPORT_FILE)
    return path


def metadata_of(path: Path) -> dict[str, Any]:
    fmt = "torch-export" if any(path.glob("*.pt2")) else "transformers"
    return {"format": fmt, "labels": LABELS, "preprocessing": PREPROCESSING}


@pytest.fixture(scope="module", params=["eager", "optimized"])
def classifier(request: pytest.FixtureRequest, stored: Path) -> Classifier:
    return Classifier.load(
        stored, metadata_of(stored), device=torch.device("cpu"), graph=request.param
    )


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


def test_the_optimized_graph_is_torchscript_and_agrees_with_eager(stored: Path) -> None:
    eager = Classifier.load(stored, metadata_of(stored), device=torch.device("cpu"))
    fast = Classifier.load(
        stored, metadata_of(stored), device=torch.device("cpu"), graph="optimized"
    )
    assert isinstance(fast._forward, torch.jit.ScriptModule)  # not the eager fallback
    assert not isinstance(eager._forward, torch.jit.ScriptModule)
    for n in (1, 2, 5, 8):  # traced with 2: other batch sizes run the same graph
        x = pixels(n, seed=n)
        np.testing.assert_allclose(fast.probabilities(x), eager.probabilities(x), atol=1e-5)


class BatchOfTwoIsSpecial(torch.nn.Module):
    """Its Python branch on the batch size is frozen into a trace made with a batch of 2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :5] * (2.0 if x.shape[0] == 2 else 1.0)


class LeavesTorch(torch.nn.Module):
    """Goes through numpy: the tracer cannot follow, so its trace returns a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(x.flatten(1)[:, :5].numpy().copy())


class NotATensor(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> Any:
        return {"logits": x.flatten(1)[:, :5]}  # optimize_for_inference wants tensors out


@pytest.mark.parametrize("module", [BatchOfTwoIsSpecial(), LeavesTorch(), NotATensor()])
def test_a_graph_that_does_not_hold_falls_back_to_eager_with_a_warning(
    module: torch.nn.Module, caplog: pytest.LogCaptureFixture
) -> None:
    from runners.classifier import optimized

    with caplog.at_level("WARNING", logger="runners.classifier"):
        assert optimized(module, (3, 32, 32), torch.device("cpu")) is None
    assert "serving eager PyTorch" in caplog.text
