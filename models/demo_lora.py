"""``demo-llm-sql``: a rank-8 LoRA adapter of demo-llm (PEFT format), random A and B from a seed.

Its version hashes demo-llm's as well as its own spec, so a new demo-llm gets a new adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models import demo_llm, store
from models.lora import ATTENTION, write_random_adapter
from models.spec import DemoModel

SPEC: dict[str, Any] = {
    "base": demo_llm.DEMO.tag,
    "rank": 8,
    "seed": 1,
    "scale": 0.5,
    "target_modules": list(ATTENTION),
}


def base() -> store.StoredModel:
    """The stored demo-llm this adapter is made for (created first if missing)."""
    from models.demo import ensure

    ensure(demo_llm.DEMO)
    return store.resolve(demo_llm.DEMO.tag)


def write(path: Path) -> None:
    write_random_adapter(
        path, base().path, rank=SPEC["rank"], seed=SPEC["seed"], scale=SPEC["scale"]
    )


DEMO = DemoModel(
    name="demo-llm-sql",
    spec=SPEC,
    metadata=store.make_metadata(
        "text-generation",
        "demo",
        "peft-lora",
        base=demo_llm.DEMO.name,
        base_tag=demo_llm.DEMO.tag,
        rank=SPEC["rank"],
        target_modules=SPEC["target_modules"],
    ),
    write=write,
)
