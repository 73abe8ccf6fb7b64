"""The BentoML model store: the single way this project reads (and writes) models.

Every model carries metadata with at least::

    task:   "text-generation" | "image-classification" | "speech-recognition"
            | "feature-extraction" (text embeddings)
    source: "demo" | "huggingface:<id>" | "torchvision:<name>"
    format: "transformers" (a save_pretrained directory) | "torch-export" (model.pt2)
            | "peft-lora" (a LoRA adapter of a stored base: ``base``, ``rank``, see models.lora)

plus, per task: ``max_position_embeddings`` (text-generation); ``labels`` and ``preprocessing``
(image-classification, see ``models.preprocessing``); ``sampling_rate`` (speech-recognition);
``pooling`` ("mean" | "cls" | "max" | "last"), ``normalize``, ``dimensions`` and ``max_length``
(feature-extraction, see ``models.hub.embedding_metadata``).

bentoml is imported inside the functions so that importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

Task = Literal[
    "text-generation", "image-classification", "speech-recognition", "feature-extraction"
]
Format = Literal["transformers", "torch-export", "peft-lora"]
TASKS: tuple[str, ...] = (
    "text-generation",
    "image-classification",
    "speech-recognition",
    "feature-extraction",
)
FORMATS: tuple[str, ...] = ("transformers", "torch-export", "peft-lora")


_TAG_NAME_MAX = 63


class ModelNotFoundError(LookupError):
    """The requested tag is not in the BentoML model store."""


@dataclass(frozen=True)
class StoredModel:
    tag: str
    path: Path
    metadata: Mapping[str, Any]

    @property
    def task(self) -> str:
        return str(self.metadata.get("task", ""))

    @property
    def source(self) -> str:
        return str(self.metadata.get("source", ""))

    @property
    def format(self) -> str:
        return str(self.metadata.get("format", ""))


def store_dir() -> Path:
    """Where the models live (BentoML's store under BENTOML_HOME, default ~/bentoml)."""
    home = os.environ.get("BENTOML_HOME") or os.path.join(os.path.expanduser("~"), "bentoml")
    return Path(home) / "models"


def _stored(model: Any) -> StoredModel:
    return StoredModel(
        tag=str(model.tag),
        path=Path(model.path),
        metadata=MappingProxyType(dict(model.info.metadata)),
    )


def resolve(tag: str) -> StoredModel:
    """Look up ``name``, ``name:latest`` or ``name:version`` in the model store."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        model = bentoml.models.get(tag)
    except NotFound as exc:
        raise ModelNotFoundError(
            f"Model {tag!r} is not in the BentoML model store ({store_dir()}). "
            "Run `python -m models demo` to create the demo models, or "
            "`python -m models import ...` to import a real one (see `python -m models --help`)."
        ) from exc
    return _stored(model)


def exists(tag: str) -> bool:
    try:
        resolve(tag)
    except ModelNotFoundError:
        return False
    return True


def list_models() -> list[StoredModel]:
    import bentoml

    models = [_stored(m) for m in bentoml.models.list()]
    return sorted(models, key=lambda m: m.tag)


def make_metadata(task: Task, source: str, fmt: Format, **extra: Any) -> dict[str, Any]:
    """The common metadata block; ``extra`` holds the task-specific keys."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    return {"task": task, "source": source, "format": fmt, **extra}


def save(
    name: str,
    metadata: Mapping[str, Any],
    write: Callable[[Path], Mapping[str, Any] | None],
    version: str | None = None,
) -> StoredModel:
    """Create ``name[:version]`` in the store; ``write(dir)`` fills the model directory.

    ``write`` may return metadata it discovered in the files (merged into ``metadata``). Nothing
    is stored if it raises. Without ``version`` BentoML generates one.
    """
    import bentoml

    tag = f"{name}:{version}" if version else name
    with bentoml.models.create(tag, metadata=dict(metadata)) as model:
        found = write(Path(model.path))
        if found:
            model.info.metadata.update(found)  # model.yaml is written when the context exits
    return resolve(str(model.tag))


def spec_version(spec: Mapping[str, Any]) -> str:
    """A short deterministic version string for a generator spec (a JSON-able mapping)."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def tag_name(model_id: str) -> str:
    """A valid BentoML tag name from a hub id.

    ``Qwen/Qwen2.5-0.5B-Instruct`` -> ``qwen2.5-0.5b-instruct``
    """
    last = model_id.rstrip("/").split("/")[-1].lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", last)
    name = re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", name)[:_TAG_NAME_MAX]
    name = re.sub(r"[^a-z0-9]+$", "", name)
    if not name:
        raise ValueError(f"cannot derive a model name from {model_id!r}; pass --name")
    return name


def dir_size(path: Path) -> int:
    """Total bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
