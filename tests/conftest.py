"""Test tiers. Unit tests start no server, build no Bento and create no model in a store; a test
that does any of these is an integration test, marked here by the fixtures it uses (or by its
own `pytestmark`). Every integration test has a timeout, so a hang fails with the test's name.

    scripts/test --unit                    the unit tier, seconds
    scripts/test                           both tiers, unit first (no idle engines beside it)

Shared fixtures live next to the tests that use them: tests/integration/conftest.py starts the
real bundle (with real Triton and vLLM backends) once per session.
"""

from __future__ import annotations

import logging

import pytest

OUR_LOGGERS = {"gateway", "runners", "lifecycle", "models"}

# Fixtures that start servers or create models: a test using one is an integration test.
INTEGRATION_FIXTURES = {"demo_store", "bundle_url", "routing_stack"}
INTEGRATION_TIMEOUT_S = 300  # per test body; server start-ups have their own deadlines


@pytest.fixture(autouse=True)
def _our_loggers_enabled() -> None:
    """A test that loads BentoML's logging config (dictConfig, disable_existing_loggers) must not
    silence the loggers later tests read."""
    for name, logger in logging.Logger.manager.loggerDict.items():
        if isinstance(logger, logging.Logger) and name.split(".")[0] in OUR_LOGGERS:
            logger.disabled = False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("integration") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(INTEGRATION_TIMEOUT_S))
    # Tests that kill or stop the session's bundle run after all the others, in file order.
    items.sort(key=lambda item: item.get_closest_marker("destructive") is not None)
