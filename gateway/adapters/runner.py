"""Adapters for the bundled vision, speech and embedding runners, over their BentoML clients.

Files are decoded, validated and preprocessed here, in a worker thread of the gateway, so that only
well-formed tensors reach a runner's batch: a corrupt or oversized upload fails its own request
with a 4xx and can never fail the other requests BentoML batched with it.

Tasks and payloads::

    classify    bytes of one image file     options top_k
                -> body: list[Prediction], scores descending
    infer       float32 ndarray (N, 3, H, W) of preprocessed pixels, already checked against
                the model's input (gateway/adapters/pixels.py does, for KServe V2 tensors)
                -> body: float32 ndarray (N, classes) of probabilities
    transcribe  bytes of one audio file     options language, prompt, temperature, translate
                -> body: Transcript
    embed       list of texts, or of token-id lists (the model's ids)    options dimensions
                -> body: Embeddings (float32 vectors and the runner's token count)

Adapters return data; the routes encode it once for their protocol (an embedding as float lists or
base64 straight from the array). Limits (`max_pixels`, `max_seconds`) and defaults
(`default_top_k`) are bound when the adapter is built (gateway/routing/bundle.py), not per request.
"""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypeVar

import aiohttp
import anyio.to_thread
import httpx
import numpy as np
from bentoml.exceptions import BentoMLException

from contract import audio, imaging, vision
from contract.embedding import Embedding, EmbedInfo, EmbedInput
from contract.speech import Clip
from contract.vision import Prediction
from gateway.adapters.base import Embeddings, InferRequest, InferResponse, Segment, Transcript
from gateway.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    GatewayError,
    InvalidRequest,
    PayloadTooLarge,
)

T = TypeVar("T")


class RunnerAdapter:
    """Calls a runner service's APIs and maps its failures to gateway errors naming it."""

    def __init__(self, name: str, client: Any) -> None:
        self.name = name
        self._client = client  # BentoML's; it opens and closes it with the Gateway service
        self._info: Any = None

    async def call(self, api: str, **kwargs: Any) -> Any:
        """`api` on the runner, with its failures as gateway errors naming this backend."""
        target = getattr(self._client, "to_async", None)
        try:
            try:
                return await self._send(target, api, kwargs)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if isinstance(exc, aiohttp.ClientConnectorError):
                    raise  # nothing listens: the router's retries and breaker decide
                # A pooled keep-alive connection the runner closed as we sent on it; the call
                # did not run, or ran without effect (inference is idempotent): send it again.
                return await self._send(target, api, kwargs)
        except BentoMLException as exc:
            raise self._runner_error(exc) from None
        except (TimeoutError, httpx.TimeoutException, aiohttp.ServerTimeoutError):
            raise BackendTimeout(self.name, _timeout_of(target)) from None
        except (aiohttp.ClientConnectionError, httpx.TransportError, OSError) as exc:
            raise BackendUnavailable(self.name, _describe(exc)) from None
        except aiohttp.ClientError as exc:
            raise BackendError(self.name, _describe(exc)) from None

    async def _send(self, target: Any, api: str, kwargs: dict[str, Any]) -> Any:
        """Its async client under `bentoml serve`; the service instance itself in process."""
        if target is not None:
            return await getattr(target, api)(**kwargs)
        call = functools.partial(getattr(self._client, api), **kwargs)
        return await anyio.to_thread.run_sync(call)

    async def info(self) -> Any:
        """The runner's `info()`, asked once (a runner serves one model for its lifetime)."""
        if self._info is None:
            self._info = await self.call("info")
        return self._info

    def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        raise InvalidRequest(f"Streaming is not supported for '{request.task}'.")

    async def health(self) -> bool:
        is_ready = getattr(self._client, "is_ready", None)
        if is_ready is None:  # an in-process instance is ready once constructed
            return True
        try:
            return bool(await is_ready(5))
        except Exception:
            return False

    async def aclose(self) -> None:
        self._info = None

    def _runner_error(self, exc: BentoMLException) -> GatewayError:
        status, detail = int(exc.error_code), _error_detail(str(exc))
        if status in (429, 503):  # BentoML sheds load past max_latency_ms with a 503
            return BackendOverloaded(self.name, detail)
        return BackendError(self.name, f"HTTP {status}: {detail}")

    def _unsupported(self, request: InferRequest) -> InvalidRequest:
        return InvalidRequest(f"The '{self.name}' backend does not do '{request.task}'.")


class VisionRunnerAdapter(RunnerAdapter):
    def __init__(self, name: str, client: Any, *, default_top_k: int, max_pixels: int) -> None:
        super().__init__(name, client)
        self.default_top_k = default_top_k  # vision.top_k
        self.max_pixels = max_pixels  # limits.max_image_pixels

    async def predict(self, request: InferRequest) -> InferResponse:
        if request.task == "classify":
            return InferResponse(await self._classify(request.payload, **request.options))
        if request.task == "infer":
            return InferResponse(await self._probabilities(request.payload))
        raise self._unsupported(request)

    async def _classify(self, data: bytes, *, top_k: int | None = None) -> list[Prediction]:
        info = await self.info()
        labels: Sequence[str] = info.labels
        k = top_k if top_k is not None else min(self.default_top_k, len(labels))
        if not 1 <= k <= len(labels):
            raise InvalidRequest(
                f"top_k must be between 1 and {len(labels)} (the model's classes), got {k}.",
                param="top_k",
            )
        pp = imaging.Preprocessing.from_metadata(info.preprocessing)
        pixels = await _in_thread(_prepare_image, data, pp, self.max_pixels)
        probabilities = (await self._probabilities(pixels[None]))[0]
        return vision.top_k(probabilities, labels, k)

    async def _probabilities(self, pixels: np.ndarray) -> np.ndarray:
        result = await self.call("predict", pixel_values=pixels)
        return np.asarray(result, dtype=np.float32)


class SpeechRunnerAdapter(RunnerAdapter):
    def __init__(self, name: str, client: Any, *, max_seconds: float) -> None:
        super().__init__(name, client)
        self.max_seconds = max_seconds  # per file: limits.max_audio_seconds

    async def predict(self, request: InferRequest) -> InferResponse:
        if request.task != "transcribe":
            raise self._unsupported(request)
        return InferResponse(await self._transcribe(request.payload, **request.options))

    async def _transcribe(
        self,
        data: bytes,
        *,
        language: str | None = None,
        prompt: str | None = None,
        temperature: float = 0.0,
        translate: bool = False,
    ) -> Transcript:
        info = await self.info()
        language = _checked_language(language, info.languages)
        if translate and not info.languages:
            raise InvalidRequest(
                f"The model of '{self.name}' is English-only: it cannot translate."
            )
        rate, window = int(info.sampling_rate), float(info.chunk_seconds)
        samples = await _in_thread(_decode_audio, data, self.max_seconds, rate)
        starts, clips = [], []
        for start, piece in audio.chunks(samples, seconds=window, sample_rate=rate):
            starts.append(start)
            clips.append(
                Clip(
                    audio=piece,
                    language=language,
                    prompt=prompt,
                    temperature=temperature,
                    task="translate" if translate else "transcribe",
                )
            )
        texts = await self.call("transcribe", clips=clips)
        if errors := [t.error for t in texts if t.error]:
            raise BackendError(self.name, errors[0])
        duration = audio.duration(samples, sample_rate=rate)
        code = language or next((t.language for t in texts if t.language), None)
        return Transcript(
            text=" ".join(t.text for t in texts if t.text),
            language=code,
            language_name=info.languages.get(code, code) if code else None,
            duration=duration,
            segments=tuple(
                Segment(
                    i,
                    start,
                    min(start + window, duration),
                    t.text,
                    tuple(t.tokens),
                    avg_logprob=t.avg_logprob or 0.0,
                    no_speech_prob=t.no_speech_prob or 0.0,
                )
                for i, (start, t) in enumerate(zip(starts, texts, strict=True))
            ),
            temperature=temperature,
            task="translate" if translate else "transcribe",
        )


class EmbedRunnerAdapter(RunnerAdapter):
    async def predict(self, request: InferRequest) -> InferResponse:
        if request.task != "embed":
            raise self._unsupported(request)
        return InferResponse(await self._embed(request.payload, **request.options))

    async def _embed(
        self, inputs: Sequence[str] | Sequence[Sequence[int]], *, dimensions: int | None = None
    ) -> Embeddings:
        info: EmbedInfo = await self.info()
        if dimensions is not None and not 1 <= dimensions <= info.dimensions:
            raise InvalidRequest(
                f"'dimensions' must be between 1 and {info.dimensions} (the model's), "
                f"got {dimensions}.",
                param="dimensions",
            )
        items = [
            EmbedInput(text=x) if isinstance(x, str) else EmbedInput(ids=list(x)) for x in inputs
        ]
        for i, item in enumerate(items):  # before the call: the runner would refuse them too
            if item.ids is not None:
                _check_ids(i, item.ids, info)
        results: list[Embedding] = await self.call("embed", inputs=items)
        for i, result in enumerate(results):
            if result.code == "context_length_exceeded":
                raise _too_long(i, result.tokens, info.max_tokens)
            if result.code is not None:
                raise InvalidRequest(f"Input {i}: {result.error}", param="input", code=result.code)
        if failed := next((r.error for r in results if r.error), None):
            raise BackendError(self.name, failed)
        vectors = np.stack([np.asarray(r.embedding, dtype=np.float32) for r in results])
        if dimensions is not None and dimensions < vectors.shape[1]:
            vectors = shorten(vectors, dimensions)
        return Embeddings(vectors, tokens=sum(r.tokens for r in results))


def shorten(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """The first `dimensions` of each vector, scaled back to unit length (Matryoshka-style, as
    OpenAI's `dimensions` does; meaningful for models trained for it)."""
    head = vectors[:, :dimensions]
    norms = np.linalg.norm(head, axis=1, keepdims=True)
    return (head / np.maximum(norms, np.float32(1e-12))).astype(np.float32)


def _check_ids(i: int, ids: Sequence[int], info: EmbedInfo) -> None:
    if len(ids) > info.max_tokens:
        raise _too_long(i, len(ids), info.max_tokens)
    if ids and (min(ids) < 0 or max(ids) >= info.vocab_size):
        raise InvalidRequest(
            f"Input {i}: token ids must be between 0 and {info.vocab_size - 1} (the model's "
            "vocabulary).",
            param="input",
            code="invalid_input",
        )


def _too_long(i: int, tokens: int, limit: int) -> InvalidRequest:
    return InvalidRequest(
        f"This model's maximum context length is {limit} tokens, however input {i} has "
        f"{tokens} tokens. Please reduce the length of the input.",
        param="input",
        code="context_length_exceeded",
    )


def _prepare_image(data: bytes, pp: imaging.Preprocessing, max_pixels: int) -> np.ndarray:
    try:
        return imaging.prepare(data, pp, max_pixels=max_pixels)
    except imaging.ImageTooLarge as exc:
        raise PayloadTooLarge(str(exc), param="file", code="image_too_large") from None
    except imaging.ImageError as exc:
        raise InvalidRequest(str(exc), param="file", code="invalid_image") from None


def _decode_audio(data: bytes, max_seconds: float, rate: int) -> np.ndarray:
    try:
        return audio.decode(data, max_seconds=max_seconds, sample_rate=rate)
    except audio.AudioTooLong as exc:
        raise PayloadTooLarge(str(exc), param="file", code="audio_too_long") from None
    except audio.AudioError as exc:
        raise InvalidRequest(str(exc), param="file", code="invalid_audio") from None


def _checked_language(language: str | None, supported: Sequence[str]) -> str | None:
    if not language:
        return None
    code = language.strip().lower()
    if code in supported:
        return code
    if not supported and code == "en":  # English-only models take no language token
        return None
    names = ", ".join(supported) or "en"
    raise InvalidRequest(
        f"Unsupported language '{language}'. Use an ISO-639-1 code: {names}.", param="language"
    )


async def _in_thread(func: Callable[..., T], *args: Any) -> T:
    """CPU-bound decoding off the event loop, so other requests keep flowing meanwhile."""
    return await anyio.to_thread.run_sync(func, *args)


def _error_detail(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text.strip()[:500] or "no details"
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        return str(data.get("error") or data.get("detail") or data)[:500]
    return str(data)[:500]


def _timeout_of(client: Any) -> float:
    timeout = getattr(client, "timeout", None)  # BentoML's async client: its total timeout
    return float(timeout) if isinstance(timeout, int | float) else 0.0


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
