"""Which public model name goes to which backend: routes, aliases, A/B splits, fallbacks.

    registry = Registry(
        [Route("llama", "llm", "remote", "meta-llama/Llama-3.1-8B", fallback=("demo-llm",)),
         Route("demo-llm", "llm", "llm", "demo-llm")],
        splits=[Split("chat", "llm", (Variant("llama", 90), Variant("demo-llm", 10)))],
        aliases={"llama-8b": "llama"},
    )
    registry.resolve("chat", caller="user-42")   # the same variant for user-42 every time
    registry.chain(route)                        # [route, *its fallbacks]

`from_settings` builds one from the `routing:` section of the configuration, on top of the
bundled runners' routes, checking every name it refers to.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from contract.names import EMBED, LLM, SPEECH, VISION
from settings import ModelSettings, RoutingSettings, Settings, SettingsError

Kind = Literal["llm", "image", "speech", "tensor", "embedding"]

BACKEND_KINDS: dict[str, Kind] = {"openai": "llm", "triton": "tensor", "tfserving": "tensor"}
# Backends whose models say their kind (`kind:` in the configuration), and the kinds they may say
DECLARED_KINDS: dict[str, tuple[Kind, ...]] = {"torchserve": ("image", "tensor")}
# Where each kind of model is served, for the error a model sent to the wrong endpoint gets.
SERVED_AT: dict[Kind, str] = {
    "llm": "/v1/chat/completions, /v1/completions and /v1/responses",
    "image": "/v1/images/classifications and KServe V2 (/v2/models/{name}/infer, gRPC)",
    "speech": "/v1/audio/transcriptions, /v1/audio/translations and KServe V2 "
    "(/v2/models/{name}/infer, gRPC)",
    "tensor": "KServe V2 (/v2/models/{name}/infer, gRPC)",
    "embedding": "/v1/embeddings",
}
RUNNER_KINDS: dict[str, Kind] = {LLM: "llm", VISION: "image", SPEECH: "speech", EMBED: "embedding"}


@dataclass(frozen=True)
class Route:
    name: str  # the name clients use in `model`
    kind: Kind
    backend: str  # the adapter that serves it
    upstream_model: str  # the model's name at that backend
    versions: tuple[str, ...] = ()
    fallback: tuple[str, ...] = ()  # routes tried in order when this route's backend fails
    parent: str | None = None  # a LoRA adapter's: the public name of its base model


@dataclass(frozen=True)
class Variant:
    model: str
    weight: int


@dataclass(frozen=True)
class Split:
    """A public name whose requests go to one of several routes, by weight."""

    name: str
    kind: Kind
    variants: tuple[Variant, ...]
    backend: str = ""  # for listings: the variants' backends, "a|b"


class Registry:
    def __init__(
        self,
        routes: Iterable[Route],
        *,
        splits: Iterable[Split] = (),
        aliases: Mapping[str, str] | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._routes: dict[str, Route] = {}
        self._splits: dict[str, Split] = {}
        self._aliases: dict[str, str] = {}
        for route in routes:
            self._claim(route.name)
            self._routes[route.name] = route
        for split in splits:
            self._claim(split.name)
            self._splits[split.name] = self._checked_split(split)
        for alias, target in (aliases or {}).items():
            self._claim(alias)
            if target not in self._routes and target not in self._splits:
                raise ValueError(f"alias '{alias}' names '{target}', which is not a model")
            self._aliases[alias] = target
        for route in self._routes.values():
            self._check_fallback(route)
        self._rng = rng
        # LoRA adapters the engines report or this gateway loaded, by backend (set_adapters)
        self._found: dict[str, dict[str, Route]] = {}
        self._adapters: dict[str, Route] = {}
        self._held: dict[str, dict[str, int]] = {}

    @classmethod
    def from_settings(cls, routing: RoutingSettings, bundled: Iterable[Route]) -> Registry:
        """The bundled routes plus the configured models (which replace same-named ones)."""
        routes = {r.name: r for r in bundled}
        aliases: dict[str, str] = {}
        for name, model in routing.models.items():
            routes.pop(name, None)
            if not model.variants:
                routes[name] = _route(name, model, routing)
            for alias in model.aliases:
                if alias in aliases:
                    raise ValueError(f"alias '{alias}' is given to two models")
                aliases[alias] = name
        splits = [
            _split(name, model, routes) for name, model in routing.models.items() if model.variants
        ]
        return cls(routes.values(), splits=splits, aliases=aliases)

    def get(self, name: str) -> Route | None:
        """The route of a concrete model or alias of one (no split resolution)."""
        name = self._aliases.get(name, name)
        return self._routes.get(name) or self._adapters.get(name)

    def set_adapters(self, backend: str, found: Mapping[str, tuple[str, int]]) -> None:
        """The LoRA adapters `backend`'s engines serve now: {name: (parent, endpoints holding
        it)}. A configured name keeps its route; an adapter two backends serve goes to the one
        whose endpoints hold it most (then the first to report it)."""
        self._found[backend] = {
            name: Route(name, "llm", backend, name, parent=parent)
            for name, (parent, _) in found.items()
            if name not in self._routes and name not in self._splits and name not in self._aliases
        }
        self._held[backend] = {name: held for name, (_, held) in found.items()}
        merged: dict[str, Route] = {}
        for holder, routes in self._found.items():
            for name, route in routes.items():
                now = merged.get(name)
                if now is None or self._held[holder][name] > self._held[now.backend][name]:
                    merged[name] = route
        self._adapters = merged

    def adapters(self, backend: str | None = None) -> list[Route]:
        """The adapters found at run time (of `backend`), besides the configured ones."""
        return [r for r in self._adapters.values() if backend is None or r.backend == backend]

    def resolve(self, name: str, *, caller: str | None = None) -> Route | None:
        """The route for `name`: aliases followed, a split's variant chosen.

        With `caller`, a split chooses by a hash of the split's and the caller's names, so one
        caller keeps its variant while the weights stay the same; without, at random.
        """
        name = self._aliases.get(name, name)
        split = self._splits.get(name)
        if split is None:
            return self._routes.get(name) or self._adapters.get(name)
        return self._routes[_choose(split, caller, self._rng)]

    def kind_of(self, name: str) -> Kind | None:
        name = self._aliases.get(name, name)
        entry = self._routes.get(name) or self._splits.get(name) or self._adapters.get(name)
        return entry.kind if entry else None

    def chain(self, route: Route) -> list[Route]:
        """The route and then its fallbacks, in order."""
        return [route, *(self._routes[name] for name in route.fallback)]

    def names(self, kinds: Iterable[Kind] | None = None) -> list[str]:
        wanted = set(kinds) if kinds is not None else None
        return [e.name for e in self.entries() if wanted is None or e.kind in wanted]

    def routes(self) -> list[Route]:
        """The concrete models, each served by one backend."""
        return list(self._routes.values())

    def entries(self) -> list[Route | Split]:
        return [*self._routes.values(), *self._adapters.values(), *self._splits.values()]

    def aliases_of(self, name: str) -> list[str]:
        return [alias for alias, target in self._aliases.items() if target == name]

    def __iter__(self) -> Iterator[Route | Split]:
        return iter(self.entries())

    def _claim(self, name: str) -> None:
        if name in self._routes or name in self._splits or name in self._aliases:
            raise ValueError(f"model '{name}' is configured twice")

    def _checked_split(self, split: Split) -> Split:
        backends = []
        for variant in split.variants:
            route = self._routes.get(variant.model)
            if route is None:
                raise ValueError(
                    f"split '{split.name}': '{variant.model}' is not a model with a backend"
                )
            if route.kind != split.kind:
                raise ValueError(
                    f"split '{split.name}' is {split.kind}, but variant '{route.name}' is "
                    f"{route.kind}"
                )
            backends.append(route.backend)
        return Split(split.name, split.kind, split.variants, "|".join(dict.fromkeys(backends)))

    def _check_fallback(self, route: Route) -> None:
        for name in route.fallback:
            target = self._routes.get(name)
            if target is None:
                raise ValueError(f"model '{route.name}': fallback '{name}' is not a model")
            if target is route:
                raise ValueError(f"model '{route.name}' names itself as its fallback")
            if target.kind != route.kind:
                raise ValueError(
                    f"model '{route.name}' is {route.kind}, but fallback '{name}' is {target.kind}"
                )


def bundled_routes(
    llm: str, image: str, speech: str, embedding: str, *, adapters: Iterable[str] = ()
) -> list[Route]:
    """The bundle's own runners, each model under its store name, and the LLM's configured
    LoRA adapters under their served names."""
    return [
        Route(llm, "llm", LLM, llm),
        *(Route(name, "llm", LLM, name, parent=llm) for name in adapters),
        Route(image, "image", VISION, image),
        Route(speech, "speech", SPEECH, speech),
        Route(embedding, "embedding", EMBED, embedding),
    ]


def check_routing(settings: Settings) -> Registry:
    """The registry of `settings`, or a SettingsError naming the first name that does not resolve.

    The gateway calls it before it makes any client, so a typo fails its start."""
    try:
        bundled = bundled_routes(*settings.bundled_models(), adapters=settings.llm.adapters())
        return Registry.from_settings(settings.routing, bundled)
    except ValueError as exc:
        raise SettingsError(f"routing: {exc}") from None


def _route(name: str, model: ModelSettings, routing: RoutingSettings) -> Route:
    assert model.backend is not None
    backend = routing.backends.get(model.backend)
    if backend is not None and backend.kind in DECLARED_KINDS:
        kind = _declared_kind(name, model, backend.kind)
    elif backend is not None:
        kind = BACKEND_KINDS.get(backend.kind) or RUNNER_KINDS[model.backend]
    elif model.backend in RUNNER_KINDS:
        kind = RUNNER_KINDS[model.backend]
    else:
        known = ", ".join([*routing.backends, *RUNNER_KINDS])
        raise ValueError(f"model '{name}': backend '{model.backend}' is not one of: {known}")
    if model.kind is not None and model.kind != kind:
        raise ValueError(
            f"model '{name}': backend '{model.backend}' serves {kind} models, not {model.kind}"
        )
    return Route(
        name,
        kind,
        model.backend,
        model.upstream or name,
        tuple(model.versions),
        tuple(model.fallback),
    )


def _declared_kind(name: str, model: ModelSettings, backend_kind: str) -> Kind:
    """The kind a model of a backend that serves several (TorchServe) says it is."""
    kinds = DECLARED_KINDS[backend_kind]
    if model.kind not in kinds:
        raise ValueError(
            f"model '{name}': a {backend_kind} backend's model says its kind "
            f"({' or '.join(kinds)}), got {model.kind or 'none'}"
        )
    return model.kind


def _split(name: str, model: ModelSettings, routes: Mapping[str, Route]) -> Split:
    first = routes.get(model.variants[0].model)
    if first is None:
        raise ValueError(f"split '{name}': '{model.variants[0].model}' is not a model")
    return Split(name, first.kind, tuple(Variant(v.model, v.weight) for v in model.variants))


def _choose(split: Split, caller: str | None, rng: Callable[[], float]) -> str:
    total = sum(v.weight for v in split.variants)
    if caller:
        digest = hashlib.blake2b(f"{split.name}\0{caller}".encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / 2**64 * total
    else:
        point = rng() * total
    for variant in split.variants:
        if point < variant.weight:
            return variant.model
        point -= variant.weight
    return next(v.model for v in reversed(split.variants) if v.weight > 0)
