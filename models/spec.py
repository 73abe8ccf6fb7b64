"""What a demo model is: a name, the spec its version is hashed from, and how to write it.

Each demo module (demo_llm.py, demo_resnet.py, ...) declares one `DEMO`; models/demo.py lists
them and creates them in the store.
"""

from __future__ import annotations

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
