"""Byte-level BPE trained locally on the built-in corpus (shared by the demo LLM and Whisper)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from models.corpus import corpus_lines

if TYPE_CHECKING:
    from tokenizers import Tokenizer


def train_byte_level_bpe(vocab_size: int, special_tokens: Sequence[str] = ()) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE; ``special_tokens`` get the first ids.

    The corpus is small, so the vocabulary may stop short of ``vocab_size`` (about 2.2k is the
    most it yields).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer)
    return tokenizer


def vocab_and_merges(tokenizer: Tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE model's vocabulary and merges (to rebuild it inside a transformers tokenizer)."""
    model = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return dict(model["vocab"]), [(a, b) for a, b in merges]
