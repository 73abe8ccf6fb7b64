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
# "*.json" matches in subfolders too: sentence-transformers' modules.json, 1_Pooling/config.json
EMBEDDING_FILES = ["*.json", "*.safetensors", "*.txt", "*.model"]


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


def import_embedding(
    model_id: str, name: str | None = None, revision: str | None = None
) -> store.StoredModel:
    """A text embedding encoder (e.g. BAAI/bge-small-en-v1.5, sentence-transformers/...):
    weights, tokenizer and the sentence-transformers pooling config, when it has one."""

    def write(path: Path) -> dict[str, Any]:
        download(model_id, path, EMBEDDING_FILES, revision)
        return embedding_metadata(path, model_id)

    metadata = store.make_metadata("feature-extraction", f"huggingface:{model_id}", "transformers")
    return store.save(name or store.tag_name(model_id), metadata, write)


# sentence-transformers' Pooling config keys -> the runner's pooling names
_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_lasttoken": "last",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
}
POOLINGS = ("mean", "cls", "max", "last")  # what runners/encoder.py implements
_ROBERTA_LIKE = {"roberta", "xlm-roberta", "camembert", "mpnet"}  # positions offset by padding
_NO_LIMIT = 1_000_000  # transformers writes ~1e30 as model_max_length when it has none


def embedding_metadata(path: Path, model_id: str) -> dict[str, Any]:
    """``pooling``, ``normalize``, ``dimensions`` and ``max_length`` of an encoder directory.

    A sentence-transformers model says them in its files: the Pooling module's config
    (``1_Pooling/config.json``), a Normalize module in ``modules.json``, ``max_seq_length`` in
    ``sentence_bert_config.json``. A plain transformers encoder gets CLS pooling if it is a BGE
    model (as BAAI documents), mean pooling otherwise, and normalized vectors.
    """
    modules = _json(path / "modules.json")
    modules = modules if isinstance(modules, list) else []
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if unsupported := [k for k in kinds if k not in ("Transformer", "Pooling", "Normalize")]:
        raise RuntimeError(
            f"{model_id} has sentence-transformers modules this runner does not apply "
            f"({', '.join(unsupported)}); only Transformer, Pooling and Normalize are served"
        )
    pooling_dir = next(
        (str(m.get("path") or "") for m, k in zip(modules, kinds, strict=True) if k == "Pooling"),
        "1_Pooling",
    )
    pooling_config = _json(path / pooling_dir / "config.json") if pooling_dir else {}
    pooling_config = pooling_config if isinstance(pooling_config, dict) else {}
    config = _text_config(path)
    return {
        "pooling": _pooling(pooling_config, model_id),
        "normalize": "Normalize" in kinds if modules else True,
        "dimensions": int(pooling_config.get("word_embedding_dimension") or config["hidden_size"]),
        "max_length": _max_length(path, config),
    }


def _pooling(pooling_config: dict[str, Any], model_id: str) -> str:
    if not pooling_config:
        return "cls" if "bge" in model_id.lower() else "mean"
    mode = pooling_config.get("pooling_mode")  # newer sentence-transformers write a name
    if isinstance(mode, str):
        modes = ["last" if mode == "lasttoken" else mode]
    else:
        modes = [name for key, name in _POOLING_FLAGS.items() if pooling_config.get(key)]
    if len(modes) != 1 or modes[0] not in POOLINGS:
        raise RuntimeError(
            f"the pooling of this model ({' + '.join(modes) or 'none'}) is not one the embedding "
            f"runner does: {', '.join(POOLINGS)}"
        )
    return modes[0]


def _max_length(path: Path, config: dict[str, Any]) -> int:
    """Tokens the encoder reads, special tokens included."""
    positions = int(config.get("max_position_embeddings") or _NO_LIMIT)
    if config.get("model_type") in _ROBERTA_LIKE:
        positions -= int(config.get("pad_token_id") or 1) + 1  # positions start after padding
    limits = [positions]
    sbert = _json(path / "sentence_bert_config.json")
    tokenizer = _json(path / "tokenizer_config.json")
    for value in (
        sbert.get("max_seq_length") if isinstance(sbert, dict) else None,
        tokenizer.get("model_max_length") if isinstance(tokenizer, dict) else None,
    ):
        if isinstance(value, int | float) and 0 < value < _NO_LIMIT:
            limits.append(int(value))
    limit = min(limits)
    if limit >= _NO_LIMIT:
        raise RuntimeError(f"no maximum input length found in {path}'s configs")
    return limit


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else {}


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
