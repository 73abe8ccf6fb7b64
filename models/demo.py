"""Demo models: random weights from a fixed seed, everything made locally (never a download).

The version of each demo tag is a hash of its generator spec, so creating the demos twice is a
no-op the second time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import store

#: Bump to give every demo model a new version when the generator code changes meaningfully.
SPEC_VERSION = 1


@dataclass(frozen=True)
class DemoModel:
    name: str
    spec: Mapping[str, Any]
    metadata: Mapping[str, Any]
    write: Callable[[Path], None]

    @property
    def version(self) -> str:
        return store.spec_version({"spec_version": SPEC_VERSION, "name": self.name, **self.spec})

    @property
    def tag(self) -> str:
        return f"{self.name}:{self.version}"


@dataclass(frozen=True)
class Outcome:
    tag: str
    created: bool
    seconds: float
    size_bytes: int

    def describe(self) -> str:
        size = f"{self.size_bytes / 1e6:.1f} MB"
        if self.created:
            return f"created {self.tag} in {self.seconds:.1f} s ({size})"
        return f"exists  {self.tag} ({size}), skipped"


def registry() -> dict[str, DemoModel]:
    """The demo models by short key (``llm``, ``resnet``, ``whisper``, ``embed``)."""
    from models import demo_embed, demo_llm, demo_resnet, demo_whisper

    return {
        "llm": demo_llm.DEMO,
        "resnet": demo_resnet.DEMO,
        "whisper": demo_whisper.DEMO,
        "embed": demo_embed.DEMO,
    }


def ensure(demo: DemoModel) -> Outcome:
    """Create ``demo`` in the store unless its tag (name + spec hash) is already there."""
    start = time.perf_counter()
    if store.exists(demo.tag):
        stored = store.resolve(demo.tag)
        return Outcome(demo.tag, False, time.perf_counter() - start, store.dir_size(stored.path))
    stored = store.save(demo.name, demo.metadata, demo.write, version=demo.version)
    return Outcome(stored.tag, True, time.perf_counter() - start, store.dir_size(stored.path))
