from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.servers.bundle import start_bundle


@pytest.fixture(scope="session")
def bundle_url() -> Iterator[str]:
    """Base URL of the whole bundle, started once per test session with `bentoml serve`.

    Set BUNDLE_URL to test a bundle that is already running instead.
    """
    if url := os.environ.get("BUNDLE_URL"):
        yield url.rstrip("/")
        return
    server = start_bundle()
    try:
        yield server.url
    finally:
        server.stop()
