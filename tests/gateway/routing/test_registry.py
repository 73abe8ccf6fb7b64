"""The model registry from the `routing:` configuration: aliases, splits, fallbacks, errors."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import yaml

from gateway.routing.registry import Registry, Route, Split, Variant, bundled_routes, check_routing
from settings import OpenAIBackend, Settings, SettingsError, TritonBackend, parse_settings

CONFIG = """
routing:
  backends:
    triton: {kind: triton, url: "127.0.0.1:8001", protocol: grpc, timeout_s: 2, retries: 1,
             breaker: {failure_threshold: 2, recovery_s: 3}}
    triton-http: {kind: triton, url: "127.0.0.1:8000", protocol: http}
    remote: {kind: openai, url: "http://127.0.0.1:8200"}
    llm: {kind: runner, timeout_s: 300}
  models:
    scale: {backend: triton, versions: ["1"], aliases: [scale-grpc]}
    scale-http: {backend: triton-http, upstream: scale}
    remote-llm: {backend: remote, fallback: [demo-llm], aliases: [big]}
    chat:
      variants: [{model: remote-llm, weight: 3}, {model: demo-llm, weight: 1}]
"""


def settings(text: str) -> Settings:
    return parse_settings(yaml.safe_load(text), source="test.yaml")


def registry_of(s: Settings) -> Registry:
    return Registry.from_settings(s.routing, bundled_routes(*s.bundled_models()))


def test_backends_are_typed_by_kind_with_their_options() -> None:
    routing = settings(CONFIG).routing
    triton, remote = routing.backends["triton"], routing.backends["remote"]
    assert isinstance(triton, TritonBackend) and triton.protocol == "grpc"
    assert (triton.timeout_s, triton.retries, triton.breaker.failure_threshold) == (2, 1, 2)
    assert triton.breaker.window_s == 30  # defaults fill the rest
    assert isinstance(remote, OpenAIBackend) and remote.timeout_s == 600
    assert routing.backends["llm"].required  # bundled runners gate readiness by default


def test_bundled_runners_are_the_default_routes() -> None:
    registry = registry_of(Settings())
    assert registry.names() == ["demo-llm", "demo-resnet", "demo-whisper", "demo-embed"]
    assert registry.get("demo-embed") == Route("demo-embed", "embedding", "embed", "demo-embed")
    assert registry.get("demo-resnet") == Route("demo-resnet", "image", "vision", "demo-resnet")


def test_configured_models_join_the_bundled_ones() -> None:
    registry = registry_of(settings(CONFIG))
    assert registry.get("scale") == Route("scale", "tensor", "triton", "scale", ("1",))
    assert registry.get("scale-http") == Route("scale-http", "tensor", "triton-http", "scale")
    assert registry.get("scale-grpc") == registry.get("scale")  # an alias
    assert registry.resolve("big") == registry.get("remote-llm")
    remote = registry.get("remote-llm")
    assert remote is not None and remote.kind == "llm"
    assert [r.name for r in registry.chain(remote)] == ["remote-llm", "demo-llm"]
    assert "demo-llm" in registry.names(["llm"]) and "chat" in registry.names(["llm"])


def test_a_split_keeps_each_caller_on_one_variant_and_follows_the_weights() -> None:
    registry = registry_of(settings(CONFIG))
    for caller in ("alice", "bob", "carol"):
        first = registry.resolve("chat", caller=caller)
        assert first is not None
        assert all(registry.resolve("chat", caller=caller) == first for _ in range(20))
    picks = Counter(registry.resolve("chat", caller=f"user-{i}").name for i in range(4000))  # type: ignore[union-attr]
    assert set(picks) == {"remote-llm", "demo-llm"}
    assert 0.70 < picks["remote-llm"] / 4000 < 0.80  # weights 3:1


def test_without_a_caller_a_split_picks_at_random_by_weight() -> None:
    values = iter([0.0, 0.74, 0.76, 0.99])
    registry = Registry(
        [Route("a", "llm", "x", "a"), Route("b", "llm", "x", "b")],
        splits=[Split("ab", "llm", (Variant("a", 3), Variant("b", 1)))],
        rng=lambda: next(values),
    )
    assert [registry.resolve("ab").name for _ in range(4)] == ["a", "a", "b", "b"]  # type: ignore[union-attr]


def test_a_zero_weight_variant_gets_nothing() -> None:
    registry = Registry(
        [Route("a", "llm", "x", "a"), Route("b", "llm", "x", "b")],
        splits=[Split("ab", "llm", (Variant("a", 1), Variant("b", 0)))],
    )
    assert {registry.resolve("ab", caller=str(i)).name for i in range(200)} == {"a"}  # type: ignore[union-attr]


def test_a_configured_model_replaces_a_bundled_one_of_the_same_name() -> None:
    s = settings("""
routing:
  backends: {remote: {kind: openai, url: "http://h:1"}}
  models: {demo-llm: {backend: remote, upstream: big-model}}
""")
    assert registry_of(s).get("demo-llm") == Route("demo-llm", "llm", "remote", "big-model")


ERRORS: list[tuple[dict[str, Any], str]] = [
    ({"backends": {"t": {"kind": "tensorflow", "url": "h:1"}}}, "routing.backends.t"),
    ({"backends": {"t": {"kind": "triton", "url": "http://h:1"}}}, "not an address of this"),
    ({"backends": {"t": {"kind": "triton"}}}, "exactly one of url, urls or discover (got none)"),
    ({"backends": {"t": {"kind": "triton", "url": "h:1", "urls": ["h:2"]}}}, "(got url, urls)"),
    ({"backends": {"t": {"kind": "triton", "url": "h:1", "protocol": "udp"}}}, "protocol"),
    ({"backends": {"o": {"kind": "openai", "url": "h:1"}}}, "'h:1' is not an address"),
    ({"backends": {"o": {"kind": "openai", "urls": ["http://h:1"], "balance": "x"}}}, "balance"),
    ({"backends": {"t": {"kind": "triton", "url": "h:1", "retries": -1}}}, "retries"),
    ({"backends": {"t": {"kind": "triton", "url": "h:1", "breaker": {"window_s": 0}}}}, "window_s"),
    ({"backends": {"t": {"kind": "triton", "url": "h:1", "typo": 1}}}, "typo: Extra inputs"),
    ({"backends": {"gpu": {"kind": "runner"}}}, "kind 'runner' is for the bundled runners"),
    ({"backends": {"llm": {"kind": "openai", "url": "http://h:1"}}}, "the bundled runner's"),
    ({"models": {"m": {"backend": "nowhere"}}}, "backend 'nowhere' is not one of"),
    ({"models": {"m": {}}}, "give either 'backend' or 'variants'"),
    ({"models": {"m": {"backend": "llm", "fallback": ["ghost"]}}}, "fallback 'ghost' is not"),
    ({"models": {"m": {"backend": "llm", "fallback": ["m"]}}}, "names itself"),
    ({"models": {"m": {"backend": "llm", "fallback": ["demo-resnet"]}}}, "is image"),
    ({"models": {"m": {"variants": [{"model": "ghost", "weight": 1}]}}}, "'ghost' is not a model"),
    (
        {"models": {"m": {"variants": [{"model": "demo-llm", "weight": 1},
                                       {"model": "demo-resnet", "weight": 1}]}}},
        "variant 'demo-resnet' is image",
    ),
    ({"models": {"m": {"variants": [{"model": "demo-llm", "weight": 0}]}}}, "add up to 0"),
    ({"models": {"m": {"backend": "llm", "aliases": ["demo-resnet"]}}}, "configured twice"),
    (
        {"models": {"a": {"backend": "llm", "aliases": ["x"]},
                    "b": {"backend": "llm", "aliases": ["x"]}}},
        "alias 'x' is given to two models",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("routing", "message"), ERRORS)
def test_bad_configuration_fails_loudly_with_the_path(
    routing: dict[str, Any], message: str
) -> None:
    """Bad values fail when the file is read; names that do not resolve when the gateway builds
    its router (settings import nothing of the gateway). Either way the message says where."""
    with pytest.raises(SettingsError) as err:
        check_routing(parse_settings({"routing": routing}, source="bad.yaml"))
    assert str(err.value).startswith(("bad.yaml: routing", "routing: "))
    assert message in str(err.value)
