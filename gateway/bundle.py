"""Wiring for the bundle: the routes and adapters for the runners `service.py` composes."""

from __future__ import annotations

from typing import Any

from gateway.adapters.base import InferenceAdapter
from gateway.adapters.openai import OpenAIAdapter, make_client
from gateway.adapters.runner import SpeechRunnerAdapter, VisionRunnerAdapter
from gateway.registry import Registry, Route
from gateway.router import Router
from runners.llm import served_name
from settings import Settings


def dependency_url(dependency: Any) -> str:
    """The address BentoML wired a `bentoml.depends(...)` service at (a socket file on one host)."""
    dependency.get()
    if not dependency.url:
        raise RuntimeError(f"{dependency.on.name} is not served by BentoML here; run `bentoml serve`")
    return str(dependency.url)


def model_name(tag: str) -> str:
    return tag.split(":")[0]


def bundled_router(settings: Settings, *, llm_url: str, vision: Any, speech: Any) -> Router:
    """A router over the three bundled runners, each model served under its store name."""
    llm_name = served_name(settings.llm)
    routes = [
        Route(llm_name, "llm", "llm", llm_name),
        Route(model_name(settings.vision.model), "image", "vision", model_name(settings.vision.model)),
        Route(model_name(settings.speech.model), "speech", "speech", model_name(settings.speech.model)),
    ]
    adapters: dict[str, InferenceAdapter] = {
        "llm": OpenAIAdapter("llm", make_client(llm_url, timeout_s=settings.gateway.timeout_s)),
        "vision": VisionRunnerAdapter("vision", vision),
        "speech": SpeechRunnerAdapter("speech", speech),
    }
    return Router(Registry(routes), adapters)
