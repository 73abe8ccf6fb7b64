"""The bundled runners' names and how a model tag becomes the name clients use.

Each bundled runner is a BentoML service and, in the gateway, a backend of the same name.
"""

from __future__ import annotations

from typing import Final

LLM: Final = "llm"
VISION: Final = "vision"
SPEECH: Final = "speech"
EMBED: Final = "embed"
BUNDLED: Final = (LLM, VISION, SPEECH, EMBED)

#: File name of a `torch-export` image classifier inside its model directory (written by
#: models/export.py, loaded by runners/classifier.py).
EXPORT_FILE: Final = "model.pt2"


def model_name(tag: str) -> str:
    """The name a model is served under: its tag without the version (demo-llm:v1 -> demo-llm)."""
    return tag.split(":", 1)[0]
