"""What every batched runner service (vision, speech, embeddings) is built from, once.

    @batched_runner(EMBED_NAME)
    class Embedder:
        def __init__(self) -> None:
            with starting(EMBED.max_hold_ms) as device:
                self.encoder = Encoder.load(..., device=device)

`batched_runner` declares the BentoML service (one worker, its runner connection, 600 s traffic
timeout) with the drain middleware; `starting` wraps the service's `__init__`: it dies with its
parent, drains on SIGTERM, caps the batcher's hold, picks the device, and tunes the collector once
the model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import bentoml

from lifecycle import DrainMiddleware, die_with_parent, drain_runner, tune_gc
from runners.batching import cap_batch_hold
from runners.metrics import RUNNER_CONNECTION
from settings import get_settings

T = TypeVar("T")


def batched_runner(name: str) -> Callable[[T], T]:
    def declare(cls: T) -> T:
        service: Any = bentoml.service(
            name=name, workers=1, traffic={"timeout": 600}, runner_connection=RUNNER_CONNECTION
        )(cls)
        service.add_asgi_middleware(DrainMiddleware)
        return service

    return declare


@contextmanager
def starting(max_hold_ms: float) -> Iterator[Any]:
    """The body of a runner service's `__init__`; yields the torch device to load onto."""
    settings = get_settings()
    die_with_parent()
    drain_runner(settings.drain)
    cap_batch_hold(max_hold_ms)
    from runners.device import select_device  # torch loads in the runner's process only

    yield select_device(settings.device)
    tune_gc()
