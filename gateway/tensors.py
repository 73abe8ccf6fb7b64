"""Tensors as the gateway passes them between KServe V2 clients and tensor backends.

The `infer` task's payload is a `TensorRequest` and its response body a tuple of `Tensor`s,
whichever backend serves the model (a Triton server, the bundled image runner).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# KServe V2 datatypes and their numpy equivalents. BYTES are object arrays of `bytes`.
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(np.object_),
}


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str  # a key of DTYPES
    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.data.shape)


@dataclass(frozen=True)
class TensorSpec:
    """An input or output as a model declares it; -1 in `shape` is any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def accepts(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            want in (-1, got) for want, got in zip(self.shape, shape, strict=True)
        )


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    platform: str
    versions: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def renamed(self, name: str, versions: tuple[str, ...]) -> ModelMetadata:
        """The metadata as the gateway publishes it: its own model name and versions."""
        return ModelMetadata(name, self.platform, versions, self.inputs, self.outputs)


@dataclass(frozen=True)
class TensorRequest:
    inputs: tuple[Tensor, ...]
    outputs: tuple[str, ...] = ()  # requested output names; empty: all of them
    version: str = ""  # the model version at the backend; empty: its default
    id: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)


def dtype_of(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for a KServe datatype; ValueError for one the gateway cannot carry."""
    try:
        return DTYPES[datatype]
    except KeyError:
        known = ", ".join(DTYPES)
        raise ValueError(f"unsupported datatype '{datatype}' (supported: {known})") from None
