"""What the embedding runner takes and answers: one text or token-id list in, one vector out.

The gateway sends `EmbedInput`s; BentoML batches the inputs of many requests into one `embed`
call. Each item is answered on its own, so an input the model cannot take (too many tokens, a
token id outside the vocabulary) fails only its own request, never the batch it rode in.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from bentoml.validators import TensorSchema
from pydantic import BaseModel, Field, model_validator

Pooling = Literal["mean", "cls", "max", "last"]


class EmbedInput(BaseModel):
    """A text, or token ids exactly as the model reads them (its tokenizer's special tokens
    included: for a BERT model `[CLS] ... [SEP]`, what `tokenizer(text).input_ids` gives)."""

    text: str | None = None
    ids: list[int] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> EmbedInput:
        if (self.text is None) == (self.ids is None):
            raise ValueError("give either 'text' or 'ids'")
        return self


# Why an item was refused; the gateway answers these with a 400 of the same code.
InputError = Literal["context_length_exceeded", "invalid_input"]


class Embedding(BaseModel):
    """The vector of one input (float32, `dimensions` long; empty when `error` is set)."""

    embedding: Annotated[np.ndarray, TensorSchema("numpy-array", "float32")] = Field(
        default_factory=lambda: np.zeros(0, dtype=np.float32)
    )
    tokens: int = 0  # tokens the model read (or would have), special tokens included
    error: str | None = None  # this item has no vector; the batch's other items do
    code: InputError | None = None  # set: the input's fault (a 400); unset: the model failed


class EmbedInfo(BaseModel):
    model: str  # the store tag
    dimensions: int
    max_tokens: int  # per input, special tokens included; longer inputs are refused
    pooling: Pooling
    normalize: bool  # vectors have unit L2 norm
    vocab_size: int  # token ids must be in [0, vocab_size)
