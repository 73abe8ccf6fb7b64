"""An exact-match response cache for deterministic requests, opt-in per model.

    cache:
      models: ["demo-resnet", "demo-whisper"]   # globs; empty: nothing is cached
      ttl_s: 300
      max_entries: 10000                        # memory: least recently used evicted
      storage: memory://                        # or redis://host:port/db, shared by replicas

A request is cached only when its answer is a function of the request: image classification,
tensor inference and embeddings always; transcription and LLM calls at temperature 0 (or, for
LLM calls, with a fixed `seed`); never streams. The key is the model's public name, the task and
a SHA-256 of the normalized request (JSON with sorted keys; file and tensor bytes as they are). A
hit still passes authentication and rate limits (the pipeline runs first) and answers
`x-cache: hit`.

Values are stored in an explicit codec of the response bodies the gateway makes (JSON, tensors as
base64), never pickled, so a shared Redis cannot make the gateway run code.
"""

from __future__ import annotations

import base64
import dataclasses
import fnmatch
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from prometheus_client import Counter

from contract.vision import Prediction
from gateway.adapters.base import Embeddings, InferResponse, Segment, Task, Transcript
from gateway.kserve.codec import to_bytes
from gateway.tensors import Tensor, TensorRequest
from settings import CacheSettings

log = logging.getLogger("gateway.scope.cache")

LOOKUPS = Counter("gateway_cache_lookups", "Response cache lookups by result.", ["model", "result"])


class Storage(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...
    async def aclose(self) -> None: ...


class MemoryStorage:
    """LRU over at most `max_entries` values, each expiring `ttl_s` after it was stored."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._entries[key] = (self._clock() + ttl_s, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def aclose(self) -> None:
        self._entries.clear()


class RedisStorage:
    """The same Redis the rate limits use; a failing Redis is a miss, never an error."""

    def __init__(self, url: str, prefix: str) -> None:
        import redis.asyncio

        self._redis = redis.asyncio.Redis.from_url(
            url, socket_timeout=0.25, socket_connect_timeout=0.25
        )
        self._prefix = prefix

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._redis.get(self._prefix + key)
        except Exception as exc:
            log.warning("response cache: Redis get failed: %s", exc)
            return None
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await self._redis.set(self._prefix + key, value, px=int(ttl_s * 1000))
        except Exception as exc:
            log.warning("response cache: Redis set failed: %s", exc)

    async def aclose(self) -> None:
        await self._redis.aclose()


class ResponseCache:
    def __init__(self, settings: CacheSettings, storage: Storage) -> None:
        self.settings = settings
        self.storage = storage

    @classmethod
    def from_settings(cls, settings: CacheSettings, prefix: str = "bundle") -> ResponseCache:
        if settings.storage.startswith("memory://"):
            return cls(settings, MemoryStorage(settings.max_entries))
        return cls(settings, RedisStorage(settings.storage, f"{prefix}:cache:"))

    def key(self, model: str, task: Task, payload: Any, options: dict[str, Any]) -> str | None:
        """The cache key of a request, or None when its model or the request is not cacheable."""
        if not any(fnmatch.fnmatchcase(model, glob) for glob in self.settings.models):
            return None
        if not deterministic(task, payload, options):
            return None
        digest = hashlib.sha256(f"{model}\0{task}\0".encode())
        _feed(digest, payload)
        digest.update(json.dumps(options, sort_keys=True, default=str).encode())
        return f"{model}:{task}:{digest.hexdigest()}"

    async def get(self, model: str, key: str) -> InferResponse | None:
        value = await self.storage.get(key)
        LOOKUPS.labels(model=model, result="miss" if value is None else "hit").inc()
        return None if value is None else decode(value)

    async def put(self, key: str, response: InferResponse) -> None:
        value = encode(response)
        if value is not None and len(value) <= self.settings.max_entry_bytes:
            await self.storage.set(key, value, self.settings.ttl_s)

    async def aclose(self) -> None:
        await self.storage.aclose()


def deterministic(task: Task, payload: Any, options: dict[str, Any]) -> bool:
    if task in ("classify", "infer", "embed"):
        return True
    if task == "transcribe":
        return not options.get("temperature")
    if isinstance(payload, dict) and not payload.get("stream"):  # chat, completion
        return payload.get("temperature") == 0 or payload.get("seed") is not None
    return False


def _feed(digest: Any, payload: Any) -> None:
    if isinstance(payload, bytes | bytearray | memoryview):
        digest.update(payload)
    elif isinstance(payload, TensorRequest):
        for t in payload.inputs:
            digest.update(f"{t.name}\0{t.datatype}\0{t.shape}\0".encode())
            digest.update(to_bytes(t))  # BYTES elements length-prefixed, so lists cannot collide
        meta = {
            "outputs": payload.outputs,
            "version": payload.version,
            "parameters": payload.parameters,
        }
        digest.update(json.dumps(meta, sort_keys=True, default=str).encode())
    else:
        digest.update(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())


# -- the codec: each kind of body the gateway's adapters return -----------------------------


def encode(response: InferResponse) -> bytes | None:
    body = response.body
    if isinstance(body, dict):
        data: dict[str, Any] = {"kind": "json", "body": body}
    elif isinstance(body, list) and all(isinstance(p, Prediction) for p in body):
        data = {"kind": "predictions", "body": [p.model_dump() for p in body]}
    elif isinstance(body, Transcript):
        data = {"kind": "transcript", "body": dataclasses.asdict(body)}
    elif isinstance(body, tuple) and all(isinstance(t, Tensor) for t in body):
        data = {"kind": "tensors", "body": [_tensor_to_json(t) for t in body]}
    elif isinstance(body, Embeddings):
        vectors = Tensor("vectors", "FP32", np.asarray(body.vectors, dtype=np.float32))
        data = {"kind": "embeddings", "body": _tensor_to_json(vectors), "tokens": body.tokens}
    else:
        return None  # a body this codec does not know is not cached
    data["status"] = response.status
    return json.dumps(data, separators=(",", ":")).encode()


def decode(value: bytes) -> InferResponse:
    data = json.loads(value)
    kind, body = data["kind"], data["body"]
    if kind == "predictions":
        body = [Prediction(**p) for p in body]
    elif kind == "transcript":
        segments = tuple(Segment(**{**s, "tokens": tuple(s["tokens"])}) for s in body["segments"])
        body = Transcript(**{**body, "segments": segments})
    elif kind == "tensors":
        body = tuple(_tensor_from_json(t) for t in body)
    elif kind == "embeddings":
        body = Embeddings(_tensor_from_json(body).data, tokens=int(data["tokens"]))
    return InferResponse(body, status=int(data["status"]))


def _tensor_to_json(t: Tensor) -> dict[str, Any]:
    if t.datatype == "BYTES":
        items = [base64.b64encode(x if isinstance(x, bytes) else str(x).encode()).decode()
                 for x in t.data.flat]  # fmt: skip
        return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape), "items": items}
    data = np.ascontiguousarray(t.data)
    return {
        "name": t.name,
        "datatype": t.datatype,
        "shape": list(t.shape),
        "dtype": data.dtype.str,
        "data": base64.b64encode(data.tobytes()).decode(),
    }


def _tensor_from_json(t: dict[str, Any]) -> Tensor:
    shape = tuple(t["shape"])
    if t["datatype"] == "BYTES":
        flat = np.empty(len(t["items"]), dtype=object)
        flat[:] = [base64.b64decode(x) for x in t["items"]]
        return Tensor(t["name"], "BYTES", flat.reshape(shape))
    array = np.frombuffer(base64.b64decode(t["data"]), dtype=np.dtype(t["dtype"])).reshape(shape)
    return Tensor(t["name"], t["datatype"], array)
