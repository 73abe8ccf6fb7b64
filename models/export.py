"""The ``torch-export`` format: an image classifier as a ``torch.export`` program (model.pt2).

Serving loads it with ``load_exported`` (``torch.export.load(path).module()``): no torchvision and
no transformers needed. Input: float32 ``(N, 3, crop, crop)`` already preprocessed; output: logits
``(N, len(labels))``. The batch dimension is dynamic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from contract.names import EXPORT_FILE
from models import store
from models.preprocessing import KEYS
from runners.classifier import LogitsOnly

MAX_BATCH = 1024


def export_program(module: torch.nn.Module, crop_size: int) -> torch.export.ExportedProgram:
    """Trace ``module`` in eval mode with a dynamic batch dimension."""
    module = module.eval()
    example = torch.randn(2, 3, crop_size, crop_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes=({0: batch},))


def export_classifier(
    module: torch.nn.Module,
    labels: Sequence[str],
    preprocessing: Mapping[str, Any],
    name: str,
    source: str,
    version: str | None = None,
) -> store.StoredModel:
    """Export ``module`` (pixels -> logits) and store it as ``name`` in the torch-export format."""
    missing = [k for k in KEYS if k not in preprocessing]
    if missing:
        raise ValueError(f"preprocessing lacks {missing}")
    program = export_program(module, int(preprocessing["crop_size"]))
    metadata = store.make_metadata(
        "image-classification",
        source,
        "torch-export",
        labels=list(labels),
        preprocessing=dict(preprocessing),
        file=EXPORT_FILE,
    )

    def write(path: Path) -> None:
        torch.export.save(program, path / EXPORT_FILE)

    return store.save(name, metadata, write, version=version)


def load_exported(model: store.StoredModel) -> torch.nn.Module:
    """The stored program as a callable module (``module(pixels) -> logits``)."""
    if model.format != "torch-export":
        raise ValueError(f"{model.tag} has format {model.format!r}, not 'torch-export'")
    return torch.export.load(model.path / EXPORT_FILE).module()


def export_stored_classifier(tag: str, name: str | None = None) -> store.StoredModel:
    """Convert a stored transformers image classifier (e.g. demo-resnet) to torch-export."""
    from transformers import AutoModelForImageClassification

    source_model = store.resolve(tag)
    if source_model.task != "image-classification" or source_model.format != "transformers":
        raise ValueError(f"{source_model.tag} is not a transformers image classifier")
    hf_model = AutoModelForImageClassification.from_pretrained(source_model.path)
    return export_classifier(
        LogitsOnly(hf_model),
        source_model.metadata["labels"],
        source_model.metadata["preprocessing"],
        name or f"{source_model.tag.split(':')[0]}-export",
        source_model.source,
    )
