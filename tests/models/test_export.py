"""The torch-export format, exercised with the demo ResNet (no torchvision needed)."""

from __future__ import annotations

import pytest
import torch

from contract.names import EXPORT_FILE
from models import store
from models.export import LogitsOnly, export_classifier, load_exported
from tests.models.conftest import DemoStore


@pytest.fixture(scope="module")
def eager_and_exported(demo_store: DemoStore) -> tuple[torch.nn.Module, store.StoredModel]:
    from transformers import AutoModelForImageClassification

    demo = store.resolve("demo-resnet")
    eager = LogitsOnly(AutoModelForImageClassification.from_pretrained(demo.path)).eval()
    exported = export_classifier(
        eager,
        demo.metadata["labels"],
        demo.metadata["preprocessing"],
        name="demo-resnet-export",
        source="demo",
    )
    return eager, exported


def test_metadata(eager_and_exported: tuple[torch.nn.Module, store.StoredModel]) -> None:
    _, exported = eager_and_exported
    stored = store.resolve("demo-resnet-export")
    assert stored.tag == exported.tag
    assert stored.metadata["format"] == "torch-export"
    assert stored.metadata["task"] == "image-classification"
    assert stored.metadata["labels"] == store.resolve("demo-resnet").metadata["labels"]
    assert (stored.path / EXPORT_FILE).is_file()


@pytest.mark.parametrize("batch", [1, 3])
def test_roundtrip_matches_eager(
    eager_and_exported: tuple[torch.nn.Module, store.StoredModel], batch: int
) -> None:
    eager, exported = eager_and_exported
    module = load_exported(exported)
    pixels = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():
        expected = eager(pixels)
        got = module(pixels)
    assert got.shape == (batch, 10)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_requires_complete_preprocessing() -> None:
    with pytest.raises(ValueError, match="preprocessing lacks"):
        export_classifier(torch.nn.Identity(), ["a"], {"resize": 256}, name="x", source="demo")
