"""Where the gateway sends the bundled LLM's requests (gateway/routing/bundle.py)."""

from __future__ import annotations

import pytest

from gateway.routing.bundle import engine_url
from settings import Settings


@pytest.mark.parametrize(
    "service",
    ["tcp://127.0.0.1:41234", "http://localhost:41234", "file:///tmp/bentoml/llm.sock"],
)
def test_a_service_on_this_host_means_its_engine_port_directly(service: str) -> None:
    settings = Settings.model_validate({"llm": {"port": 8123}})
    assert engine_url(settings, service) == "http://127.0.0.1:8123"


def test_a_service_in_its_own_pod_is_the_way_in() -> None:
    assert engine_url(Settings(), "http://llm:3000") == "http://llm:3000"


def test_engine_direct_off_always_goes_through_the_service() -> None:
    settings = Settings.model_validate({"llm": {"engine_direct": False}})
    assert engine_url(settings, "tcp://127.0.0.1:41234") == "tcp://127.0.0.1:41234"


def test_an_engine_url_reaches_the_engine_in_another_pod() -> None:
    settings = Settings.model_validate({"llm": {"engine_url": "http://llm:8100/"}})
    assert engine_url(settings, "http://llm:3000") == "http://llm:8100"
    off = Settings.model_validate(
        {"llm": {"engine_url": "http://llm:8100", "engine_direct": False}}
    )
    assert engine_url(off, "http://llm:3000") == "http://llm:3000"


@pytest.mark.parametrize("bad", ["llm:8100", "http://llm:8100/v1", "tcp://llm:8100"])
def test_an_engine_url_is_a_bare_http_origin(bad: str) -> None:
    with pytest.raises(ValueError, match="engine_url"):
        Settings.model_validate({"llm": {"engine_url": bad}})
