"""KServe V2 tensors for the bundled speech runner: encoded audio files in, transcripts out.

Wraps the speech runner's adapter (gateway/adapters/runner.py) like `PixelTensorAdapter` wraps the
vision runner's, and passes every other task (the OpenAI routes' `transcribe`) through, so the
backend keeps one name, one breaker and one client::

    POST /v2/models/demo-whisper/infer
    {"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "data": [<file bytes>]}],
     "parameters": {"language": "de", "task": "transcribe"}}
    -> {"outputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["..."]}]}

Each element of `audio` is one whole file (WAV, FLAC, OGG, MP3: whatever the OpenAI route takes);
each is decoded and windowed like an upload, and all of them go to the runner at once, so its
adaptive batching sees their 30 s clips together. `text[i]` is the transcript of `audio[i]`.
`language` and `task` ("transcribe", or "translate" into English) come as request parameters or
as BYTES inputs holding one value for every file or one per file. Decoding is greedy, so an
answer is a function of the request (the response cache may keep it).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from gateway.adapters.base import InferRequest, InferResponse, Transcript
from gateway.errors import InvalidRequest
from gateway.kserve.codec import check_inputs, check_outputs
from gateway.tensors import ModelMetadata, Tensor, TensorRequest, TensorSpec

AUDIO = "audio"
LANGUAGE = "language"
TASK = "task"
TEXT = "text"
TASKS = ("transcribe", "translate")

INPUTS = (
    TensorSpec(AUDIO, "BYTES", (-1,)),
    TensorSpec(LANGUAGE, "BYTES", (-1,)),  # optional: one code for every file, or one per file
    TensorSpec(TASK, "BYTES", (-1,)),  # optional: likewise
)
OUTPUTS = (TensorSpec(TEXT, "BYTES", (-1,)),)


class TranscriptTensorAdapter:
    """`infer` with a `TensorRequest` on top of a runner adapter whose `transcribe` takes files."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner  # a SpeechRunnerAdapter: predict(transcribe: bytes), its own limits
        self.name: str = inner.name

    async def predict(self, request: InferRequest) -> InferResponse:
        if not isinstance(request.payload, TensorRequest):
            return await self.inner.predict(request)
        tensors: TensorRequest = request.payload
        check_inputs(tensors.inputs, INPUTS)
        check_outputs(tensors.outputs, OUTPUTS)
        by_name = {t.name: t for t in tensors.inputs}
        if len(by_name) != len(tensors.inputs):
            raise InvalidRequest("Each input may be sent only once.")
        audio = by_name.get(AUDIO)
        if audio is None or audio.data.size == 0:
            raise InvalidRequest(f"Expected the input '{AUDIO}' with at least one audio file.")
        files = [_as_bytes(x) for x in audio.data.reshape(-1)]
        languages = _option(LANGUAGE, by_name, tensors.parameters, len(files))
        tasks = _option(TASK, by_name, tensors.parameters, len(files))
        for task in tasks:
            if task is not None and task not in TASKS:
                raise InvalidRequest(
                    f"Unknown task '{task}'; use 'transcribe' or 'translate'.", param=TASK
                )
        transcripts = await _all(
            self.inner.predict(
                dataclasses.replace(
                    request,
                    task="transcribe",
                    payload=data,
                    options={"language": language, "translate": task == "translate"},
                )
            )
            for data, language, task in zip(files, languages, tasks, strict=True)
        )
        texts = np.empty(len(files), dtype=object)
        texts[:] = [_text(r.body).encode() for r in transcripts]
        return InferResponse((Tensor(TEXT, "BYTES", texts),))

    def stream(self, request: InferRequest) -> AsyncIterator[bytes]:
        return self.inner.stream(request)

    async def metadata(self, model: str, version: str) -> ModelMetadata:
        return ModelMetadata(
            name=model, platform="bentoml", versions=(), inputs=INPUTS, outputs=OUTPUTS
        )

    async def model_ready(self, model: str, version: str) -> bool:
        return await self.health()

    async def health(self) -> bool:
        return bool(await self.inner.health())

    async def aclose(self) -> None:
        await self.inner.aclose()


def _option(
    name: str, inputs: Mapping[str, Tensor], parameters: Mapping[str, Any], count: int
) -> list[str | None]:
    """One value per file: from the input `name` (one value, or one per file), else from the
    request parameter `name`, else None."""
    tensor = inputs.get(name)
    if tensor is not None:
        if name in parameters:
            raise InvalidRequest(f"Give '{name}' as an input or as a parameter, not both.")
        values = [_as_bytes(x).decode(errors="replace").strip() or None for x in tensor.data]
        if len(values) == 1:
            return values * count
        if len(values) != count:
            raise InvalidRequest(
                f"Input '{name}' has {len(values)} values for {count} audio files; "
                "send one for all of them or one per file.",
                param=name,
            )
        return values
    value = parameters.get(name)
    if value is None:
        return [None] * count
    if not isinstance(value, str):
        raise InvalidRequest(f"Parameter '{name}' must be a string.", param=name)
    return [value.strip() or None] * count


async def _all(calls: Iterable[Awaitable[InferResponse]]) -> Sequence[InferResponse]:
    """Every call at once (so the runner batches them); the first failure fails the request and
    cancels the others."""
    tasks: list[asyncio.Task[InferResponse]] = [asyncio.ensure_future(c) for c in calls]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _text(body: Any) -> str:
    return body.text if isinstance(body, Transcript) else str(body)
