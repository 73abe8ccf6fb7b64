from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers.bundle import start_bundle


@pytest.fixture(scope="session")
def bundle_url() -> Iterator[str]:
    """Base URL of the whole bundle started once per test session with `bentoml serve`."""
    server = start_bundle()
    try:
        yield server.url
    finally:
        server.stop()
