"""The one check of an error on /v1: OpenAI's shape, and `code` always a string.

Every route test that provokes an error reads it through `error_of`, so the rule is checked
over every error the routes' tests raise (tests/gateway/test_errors.py checks every error class)."""

from __future__ import annotations

from typing import Any


def error_of(response: Any, status: int | None = None) -> dict[str, Any]:
    if status is not None:
        assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error = dict(body["error"])
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and isinstance(error["type"], str), error
    return error
