"""The text embedding runner: texts or token ids in, pooled vectors out, batched by BentoML.

`embed` is the batchable API. Its items are single inputs (a text or a list of token ids), so
BentoML's dispatcher merges the inputs of many requests, and splits a request with more inputs
than `max_batch_size` across batches. Each result says how many tokens its input had; an input
the model cannot take (over `max_tokens`, a token id outside the vocabulary) is refused on its
own, so it fails only its own request::

    client.embed(inputs=[EmbedInput(text="hello"), EmbedInput(ids=[2, 1651, 3])])
    # [Embedding(embedding=array([...], dtype=float32), tokens=3), ...]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import bentoml

from contract.embedding import Embedding, EmbedInfo, EmbedInput
from contract.names import EMBED as EMBED_NAME
from runners.metrics import BATCH_SIZE
from runners.shell import batched_runner, starting
from settings import get_settings

if TYPE_CHECKING:
    from runners.encoder import Encoder

SETTINGS = get_settings()
EMBED = SETTINGS.embed


@batched_runner(EMBED_NAME)
class Embedder:
    model = bentoml.models.BentoModel(EMBED.model)

    def __init__(self) -> None:
        with starting(EMBED.max_hold_ms) as device:
            from runners.encoder import Encoder  # torch loads in this service's process only

            stored = self.model
            self.tag = str(stored.tag)
            self.encoder: Encoder = Encoder.load(
                stored.path,
                stored.info.metadata,
                device=device,
                max_tokens=EMBED.max_input_tokens,
                batch_size=EMBED.max_batch_size,
            )

    @bentoml.api(
        batchable=EMBED.batching,
        max_batch_size=EMBED.max_batch_size,
        max_latency_ms=EMBED.max_latency_ms,
    )
    def embed(self, inputs: list[EmbedInput]) -> list[Embedding]:
        """A vector per input, in order (see `info` for its length and the token limit)."""
        BATCH_SIZE.labels(runner=EMBED_NAME).observe(len(inputs))
        return self.encoder.embed(inputs)

    @bentoml.api
    def info(self) -> EmbedInfo:
        encoder = self.encoder
        return EmbedInfo(
            model=self.tag,
            dimensions=encoder.dimensions,
            max_tokens=encoder.max_tokens,
            pooling=encoder.pooling,
            normalize=encoder.normalize,
            vocab_size=encoder.vocab_size,
        )
