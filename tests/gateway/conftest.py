from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from gateway.app import create_app, install
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from settings import Settings
from tests.fakes import FakeAdapter


@pytest.fixture
def llm() -> FakeAdapter:
    return FakeAdapter("llm")


@pytest.fixture
def router(llm: FakeAdapter) -> Router:
    routes = [Route("tiny-llm", "llm", "llm", "tiny-llm-upstream")]
    return Router(Registry(routes), {"llm": llm})


@pytest.fixture
def client(router: Router) -> Iterator[TestClient]:
    """The gateway's ASGI app in-process, over fake backends."""
    app = create_app()
    install(app, settings=Settings(), router=router)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
