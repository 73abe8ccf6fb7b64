"""Behaving stand-ins for the BentoML clients of the vision, speech and embedding runners.

They answer like `bentoml.depends(...)` proxies (`client.to_async.<api>(...)`), record what they
were sent, and can be told to fail the next call.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from contract.embedding import Embedding, EmbedInfo, EmbedInput
from contract.speech import Clip, ClipText, SpeechInfo
from contract.vision import VisionInfo

LABELS = ["cat", "dog", "fox", "owl"]
PREPROCESSING = {
    "resize": 32,
    "crop_size": 28,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "resample": "bilinear",
    "rescale_factor": 1 / 255,
}


class _Async:
    """The `to_async` face: every API is a coroutine that the owner may make fail."""

    def __init__(self, owner: FakeRunner) -> None:
        self._owner = owner

    def __getattr__(self, api: str) -> Any:
        async def call(**kwargs: Any) -> Any:
            self._owner.calls.append((api, kwargs))
            if self._owner.failures:
                raise self._owner.failures.pop(0)
            return getattr(self._owner, api)(**kwargs)

        return call


class FakeRunner:
    def __init__(self, *, ready: bool = True) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.failures: list[BaseException] = []
        self.ready = ready
        self.to_async = _Async(self)

    def fail_next(self, *errors: BaseException) -> None:
        self.failures.extend(errors)

    def sent(self, api: str) -> list[dict[str, Any]]:
        return [kwargs for name, kwargs in self.calls if name == api]

    async def is_ready(self, timeout: int | None = None) -> bool:  # noqa: ASYNC109  # BentoML's
        if isinstance(self.ready, BaseException):
            raise self.ready
        return self.ready


class FakeVisionRunner(FakeRunner):
    """Probabilities follow the mean pixel of each image, so different images rank differently."""

    def info(self) -> VisionInfo:
        return VisionInfo(
            model="fake-resnet:1",
            labels=LABELS,
            preprocessing=PREPROCESSING,
            input_shape=(3, 28, 28),
        )

    def predict(self, pixel_values: np.ndarray) -> np.ndarray:
        return probabilities_for(pixel_values)


def probabilities_for(pixels: np.ndarray) -> np.ndarray:
    means = pixels.reshape(len(pixels), 3, -1).mean(axis=2)  # (N, 3) channel means
    logits = np.concatenate([means, -means.sum(axis=1, keepdims=True)], axis=1) * 3
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


NAMES = {"en": "english", "de": "german", "fr": "french"}


class FakeSpeechRunner(FakeRunner):
    """Each clip's text says how long it is and which options it carried."""

    def __init__(self, *, languages: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        codes = ["en", "de", "fr"] if languages is None else languages
        self.languages = {code: NAMES.get(code, code) for code in codes}

    def info(self) -> SpeechInfo:
        return SpeechInfo(
            model="fake-whisper:1",
            sampling_rate=16000,
            languages=self.languages,
            chunk_seconds=30.0,
        )

    def transcribe(self, clips: list[Clip]) -> list[ClipText]:
        return [
            ClipText(
                text=f"{len(c.audio) / 16000:.1f}s {c.language or '-'} {c.prompt or '-'} "
                f"{c.temperature:g}",
                tokens=[1, 2, 3],
                language=c.language or "en",
                avg_logprob=-len(c.audio) / 16000 / 100,  # a value per clip, to see it carried
                no_speech_prob=0.25,
            )
            for c in clips
        ]


EMBED_DIMENSIONS, EMBED_MAX_TOKENS, EMBED_VOCAB = 8, 16, 100
CLS, SEP = 1, 2


def fake_ids(text: str) -> list[int]:
    """The fake tokenizer: [CLS] one id per word [SEP]."""
    words = [int(hashlib.sha256(w.encode()).hexdigest(), 16) % 90 + 10 for w in text.split()]
    return [CLS, *words, SEP]


def fake_vector(ids: list[int]) -> np.ndarray:
    """A unit vector that depends only on the token ids."""
    seed = int(hashlib.sha256(repr(ids).encode()).hexdigest()[:8], 16)
    vector = np.random.default_rng(seed).standard_normal(EMBED_DIMENSIONS)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


class FakeEmbedRunner(FakeRunner):
    """Texts are tokenized by words; a vector is a function of the token ids only."""

    def info(self) -> EmbedInfo:
        return EmbedInfo(
            model="fake-embed:1",
            dimensions=EMBED_DIMENSIONS,
            max_tokens=EMBED_MAX_TOKENS,
            pooling="mean",
            normalize=True,
            vocab_size=EMBED_VOCAB,
        )

    def embed(self, inputs: list[EmbedInput]) -> list[Embedding]:
        results = []
        for item in inputs:
            ids = fake_ids(item.text) if item.text is not None else list(item.ids or [])
            if len(ids) > EMBED_MAX_TOKENS:
                results.append(
                    Embedding(tokens=len(ids), error="too long", code="context_length_exceeded")
                )
            else:
                results.append(Embedding(embedding=fake_vector(ids), tokens=len(ids)))
        return results
