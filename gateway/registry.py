"""Which public model name goes to which backend."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Kind = Literal["llm", "image", "speech", "tensor"]


@dataclass(frozen=True)
class Route:
    name: str  # the name clients use in `model`
    kind: Kind
    backend: str  # the adapter that serves it
    upstream_model: str  # the model's name at that backend


class Registry:
    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes: dict[str, Route] = {}
        for route in routes:
            if route.name in self._routes:
                raise ValueError(f"model '{route.name}' is configured twice")
            self._routes[route.name] = route

    def get(self, name: str) -> Route | None:
        return self._routes.get(name)

    def names(self, kinds: Iterable[Kind] | None = None) -> list[str]:
        wanted = set(kinds) if kinds is not None else None
        return [r.name for r in self._routes.values() if wanted is None or r.kind in wanted]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._routes.values())
