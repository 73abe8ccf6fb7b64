"""Demo models: random weights from a fixed seed, everything made locally (never a download).

The version of each demo tag is a hash of its generator spec, so creating the demos twice is a
no-op the second time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from models import demo_embed, demo_llm, demo_lora, demo_resnet, demo_whisper, store
from models.spec import DemoModel


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
    """The demo models by short key (``llm``, ``lora``, ``resnet``, ``whisper``, ``embed``)."""
    return {
        "llm": demo_llm.DEMO,
        "lora": demo_lora.DEMO,
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
