"""A text encoder (transformers) with sentence-transformers pooling, usable without a server.

    encoder = Encoder.load(path, metadata, device=torch.device("cpu"), max_tokens=512)
    encoder.embed([EmbedInput(text="hello"), EmbedInput(ids=[2, 1651, 3])])  # [Embedding, ...]

Texts are tokenized with the model's tokenizer (special tokens added); token-id inputs are taken
as they are. Inputs are padded on the right to the longest of their group and pooled over their
own tokens only (the attention mask), so a vector does not depend on what it was batched with.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from contract.embedding import Embedding, EmbedInput, Pooling

log = logging.getLogger("runners.embed")

POOLINGS: tuple[Pooling, ...] = ("mean", "cls", "max", "last")


class Encoder:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        pooling: Pooling,
        normalize: bool,
        max_tokens: int,
        device: torch.device,
        batch_size: int = 32,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, not {pooling!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling: Pooling = pooling
        self.normalize = normalize
        self.max_tokens = max_tokens
        self.device = device
        self.batch_size = batch_size  # rows per forward pass
        self.vocab_size = int(model.get_input_embeddings().num_embeddings)
        self.dimensions = int(model.config.hidden_size)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else 0)

    @classmethod
    def load(
        cls,
        path: str | Path,
        metadata: Mapping[str, Any],
        *,
        device: torch.device,
        max_tokens: int | None = None,
        batch_size: int = 32,
    ) -> Encoder:
        """From a model directory and its store metadata (pooling, normalize, max_length).

        `max_tokens` lowers the model's own limit (its positions), never raises it."""
        from transformers import AutoModel, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
        model = model.to(device).eval()
        limits = [int(metadata.get("max_length") or model.config.max_position_embeddings)]
        if max_tokens is not None:
            limits.append(max_tokens)
        return cls(
            model,
            tokenizer,
            pooling=cast(Pooling, metadata.get("pooling", "mean")),
            normalize=bool(metadata.get("normalize", True)),
            max_tokens=min(limits),
            device=device,
            batch_size=batch_size,
        )

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """The model's input ids of each text, special tokens included, not truncated."""
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=True, verbose=False)
        return [list(ids) for ids in encoded["input_ids"]]

    def embed(self, inputs: Sequence[EmbedInput]) -> list[Embedding]:
        """One result per input, in order: a vector, or why this input has none."""
        texts = [i for i, item in enumerate(inputs) if item.text is not None]
        tokenized = self.token_ids([inputs[i].text or "" for i in texts])
        ids: list[list[int]] = [item.ids or [] for item in inputs]
        for i, row in zip(texts, tokenized, strict=True):
            ids[i] = row
        results: list[Embedding | None] = [self._refusal(row) for row in ids]
        todo = [i for i, result in enumerate(results) if result is None]
        todo.sort(key=lambda i: len(ids[i]))  # similar lengths share a forward: less padding
        for start in range(0, len(todo), self.batch_size):
            group = todo[start : start + self.batch_size]
            try:
                vectors = self.vectors([ids[i] for i in group])
            except Exception as exc:
                log.exception("embedding failed for %d input(s)", len(group))
                failed = f"{type(exc).__name__}: {exc}"
                for i in group:
                    results[i] = Embedding(tokens=len(ids[i]), error=failed)
                continue
            for i, vector in zip(group, vectors, strict=True):
                results[i] = Embedding(embedding=vector, tokens=len(ids[i]))
        return [r for r in results if r is not None]

    def vectors(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Pooled (and normalized) float32 vectors (N, dimensions) for token-id rows, one pass."""
        longest = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for r, row in enumerate(rows):
            input_ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[r, : len(row)] = 1
        mask = mask.to(self.device)
        with torch.inference_mode():
            out = self.model(input_ids=input_ids.to(self.device), attention_mask=mask)
            pooled = pool(out.last_hidden_state.float(), mask, self.pooling)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=-1)
            return pooled.cpu().numpy().astype(np.float32, copy=False)

    def _refusal(self, row: Sequence[int]) -> Embedding | None:
        """Why the model cannot take `row` (checked before the batch runs, where it would fail
        every input of the batch), or None."""
        if not row:
            return Embedding(error="The input has no tokens.", code="invalid_input")
        if len(row) > self.max_tokens:
            return Embedding(
                tokens=len(row),
                error=f"The input has {len(row)} tokens; this model reads at most "
                f"{self.max_tokens}.",
                code="context_length_exceeded",
            )
        if min(row) < 0 or max(row) >= self.vocab_size:
            return Embedding(
                tokens=len(row),
                error=f"Token ids must be between 0 and {self.vocab_size - 1}.",
                code="invalid_input",
            )
        return None


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(N, T, H) token states and their (N, T) attention mask -> (N, H), padding ignored."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "mean":
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
    if pooling == "max":
        return hidden.masked_fill(weights == 0, float("-inf")).max(dim=1).values
    last = mask.sum(dim=1).clamp(min=1) - 1  # right padding: each row's last real token
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
