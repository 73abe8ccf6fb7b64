"""Importers of real models (need network access to the Hugging Face Hub, or torchvision).

Each writes a ``transformers`` (or ``torch-export``) directory into the BentoML store with the
metadata described in ``models.store``. BentoML generates the version.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from models import preprocessing, store

LLM_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
SPEECH_FILES = ["*.json", "*.safetensors", "*.txt"]


def download(model_id: str, dest: Path, patterns: Sequence[str], revision: str | None) -> None:
    """Fetch the files of ``model_id`` matching ``patterns`` into ``dest`` (the model directory)."""
    from huggingface_hub import snapshot_download

    snapshot_download(model_id, revision=revision, local_dir=dest, allow_patterns=list(patterns))
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's local_dir bookkeeping
    if not any(dest.glob("*.safetensors")):
        raise RuntimeError(f"{model_id} has no safetensors weights; only safetensors are imported")


def _text_config(path: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((path / "config.json").read_text())
    text_config: dict[str, Any] = config.get("text_config") or config
    return text_config


def _sampling_rate(path: Path) -> int:
    """From preprocessor_config.json (Hub layout) or processor_config.json (transformers 5)."""
    for name, key in (
        ("preprocessor_config.json", None),
        ("processor_config.json", "feature_extractor"),
    ):
        if (path / name).is_file():
            config = json.loads((path / name).read_text())
            config = config.get(key, {}) if key else config
            if "sampling_rate" in config:
                return int(config["sampling_rate"])
    raise RuntimeError(f"no feature extractor config with a sampling_rate in {path}")


def import_llm(
    model_id: str, name: str | None = None, revision: str | None = None
) -> store.StoredModel:
    """A causal LM for vLLM: config, tokenizer (+ chat template) and safetensors, as on the Hub."""

    def write(path: Path) -> dict[str, Any]:
        download(model_id, path, LLM_FILES, revision)
        return {"max_position_embeddings": _text_config(path).get("max_position_embeddings")}

    metadata = store.make_metadata("text-generation", f"huggingface:{model_id}", "transformers")
    return store.save(name or store.tag_name(model_id), metadata, write)


def import_image(
    model_id: str, name: str | None = None, revision: str | None = None
) -> store.StoredModel:
    """An image classifier (e.g. microsoft/resnet-50) with labels and preprocessing from the Hub."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    processor = AutoImageProcessor.from_pretrained(model_id, revision=revision)
    model = AutoModelForImageClassification.from_pretrained(model_id, revision=revision)
    id2label = model.config.id2label
    labels = [str(id2label[i]) for i in sorted(id2label)]
    metadata = store.make_metadata(
        "image-classification",
        f"huggingface:{model_id}",
        "transformers",
        labels=labels,
        preprocessing=preprocessing.from_image_processor(processor.to_dict()),
    )

    def write(path: Path) -> None:
        model.save_pretrained(path)
        processor.save_pretrained(path)

    return store.save(name or store.tag_name(model_id), metadata, write)


def import_speech(
    model_id: str, name: str | None = None, revision: str | None = None
) -> store.StoredModel:
    """A Whisper-style speech model (e.g. openai/whisper-tiny): weights, processor, generation."""

    def write(path: Path) -> dict[str, Any]:
        download(model_id, path, SPEECH_FILES, revision)
        return {"sampling_rate": _sampling_rate(path)}

    metadata = store.make_metadata("speech-recognition", f"huggingface:{model_id}", "transformers")
    return store.save(name or store.tag_name(model_id), metadata, write)


def import_torchvision(arch: str, name: str | None = None) -> store.StoredModel:
    """Export a pretrained torchvision classifier (e.g. resnet50) to ``torch-export``.

    Needs torchvision (the GPU build has it); serving the result does not.
    """
    try:
        from torchvision import models as tv_models
    except Exception as exc:  # missing, or a build that does not match this torch
        raise RuntimeError(
            f"`import torchvision` failed ({exc}). torchvision is only needed for this import: "
            "run it where torchvision works (e.g. the GPU build, BUILD=gpu scripts/setup); the "
            "exported model.pt2 is then served without torchvision."
        ) from exc

    from models.export import export_classifier

    weights = tv_models.get_model_weights(arch).DEFAULT
    model = tv_models.get_model(arch, weights=weights)
    transforms = weights.transforms()
    prep = preprocessing.imagenet(
        resize=int(transforms.resize_size[0]),
        crop_size=int(transforms.crop_size[0]),
        resample=str(transforms.interpolation.value),
    )
    prep["mean"], prep["std"] = list(transforms.mean), list(transforms.std)
    labels = [str(c) for c in weights.meta["categories"]]
    return export_classifier(
        model, labels, prep, name or store.tag_name(arch), f"torchvision:{arch}"
    )
