"""Which torch device a runner loads its model on."""

from __future__ import annotations

from typing import Literal

import torch


def select_device(setting: Literal["auto", "cpu", "cuda"]) -> torch.device:
    """CUDA when present (or demanded), CPU otherwise; asking for CUDA without one fails loudly."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda is configured, but torch sees no CUDA device")
    if setting == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")
