"""What the image runner answers, and the one top-k rule, shared by the runner and the gateway."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel


class Prediction(BaseModel):
    """One class of a classification: the runner's `classify`, the gateway's JSON response."""

    label: str
    index: int
    score: float


class VisionInfo(BaseModel):
    """What a caller needs to prepare inputs and read outputs (the runner's `info`)."""

    model: str  # the store tag
    labels: list[str]
    preprocessing: dict[str, Any]  # contract.imaging.Preprocessing.metadata()
    input_shape: tuple[int, int, int]


def top_k(probabilities: np.ndarray, labels: Sequence[str], k: int) -> list[Prediction]:
    """The k most probable classes, highest first (ties go to the lower index)."""
    order = np.argsort(-np.asarray(probabilities), kind="stable")[:k]
    return [Prediction(label=labels[i], index=int(i), score=float(probabilities[i])) for i in order]
