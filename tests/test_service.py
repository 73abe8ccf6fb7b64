"""The gateways' BentoML service config (service.py)."""

from __future__ import annotations

import pytest

import service
from settings import Settings


@pytest.mark.parametrize("trace", [False, True])
def test_bentoml_layers_the_pipeline_covers_are_off(
    monkeypatch: pytest.MonkeyPatch, trace: bool
) -> None:
    settings = Settings.model_validate(
        {"log": {"trace_requests": trace}, "gateway": {"workers": 3}}
    )
    monkeypatch.setattr(service, "get_settings", lambda: settings)
    config = service.gateway_config()
    assert config["workers"] == 3
    assert config["logging"] == {"access": {"enabled": False}}  # the pipeline logs each request
    if trace:
        assert "tracing" not in config  # BentoML's tracing as configured
    else:
        assert config["tracing"] == {"excluded_urls": [".*"]}
    from _bentoml_sdk.service.config import validate

    validate(config)  # type: ignore[arg-type]  # BentoML accepts it
