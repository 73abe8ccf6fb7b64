"""Every error class renders in the protocol's shape, with a string `code` on /v1."""

from __future__ import annotations

import inspect
import json

import pytest

import gateway.app
import gateway.routing.build  # noqa: F401
from gateway.errors import GatewayError, render

# Errors made from another error: their code is that error's.
WRAPPERS = {"StepFailed"}


def every_error_class() -> list[type[GatewayError]]:
    found, todo = [], [GatewayError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__name__ not in WRAPPERS]


ARGS = {"backend": "b", "detail": "d", "message": "m", "model": "x", "kind": "llm",
        "served_at": "/v1/chat/completions", "path": "/v1/embeddings", "available": ["y"],
        "version": "9", "versions": ["1"], "retry_after": "2", "retry_after_s": 2,
        "timeout_s": 1.0, "headers": {}}  # fmt: skip


def instance(cls: type[GatewayError]) -> GatewayError:
    wanted = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.default is inspect.Parameter.empty and p.kind != p.VAR_KEYWORD
    ]
    unknown = [name for name in wanted if name not in ARGS]
    assert not unknown, f"add a value for {unknown} to ARGS (or {cls.__name__} to WRAPPERS)"
    return cls(**{name: ARGS[name] for name in wanted})


@pytest.mark.parametrize("cls", every_error_class(), ids=lambda c: c.__name__)
def test_every_error_has_a_string_code_on_v1_and_kserves_shape_on_v2(
    cls: type[GatewayError],
) -> None:
    err = instance(cls)
    body = json.loads(render("/v1/chat/completions", err).body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert json.loads(render("/v2/models/x/infer", err).body) == {"error": err.message}
    if err.status == 503:
        assert "Retry-After" in render("/v1/models", err).headers
