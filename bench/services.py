"""The bundle minus vLLM: the real gateway app and adapters over the vision and speech runners.

The benchmark serves this (`bentoml serve bench.services:MediaGateway`) so that it measures the
gateway -> runner path without an LLM engine competing for the CPU.
"""

from __future__ import annotations

import bentoml

from contract.names import model_name
from gateway.adapters.base import InferenceAdapter
from gateway.adapters.pixels import PixelTensorAdapter
from gateway.adapters.runner import SpeechRunnerAdapter, VisionRunnerAdapter
from gateway.app import create_app, install
from gateway.routing.registry import Registry, Route
from gateway.routing.router import Router
from runners.speech import Transcriber
from runners.vision import ImageClassifier
from settings import get_settings

app = create_app()


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="media-gateway", traffic={"timeout": 3600})
class MediaGateway:
    vision = bentoml.depends(ImageClassifier)
    speech = bentoml.depends(Transcriber)

    def __init__(self) -> None:
        settings = get_settings()
        vision, speech = model_name(settings.vision.model), model_name(settings.speech.model)
        routes = [
            Route(vision, "image", "vision", vision),
            Route(speech, "speech", "speech", speech),
        ]
        adapters: dict[str, InferenceAdapter] = {
            # as gateway/routing/bundle.py wires it: image files on /v1, KServe V2 tensors on /v2
            "vision": PixelTensorAdapter(
                VisionRunnerAdapter("vision", self.vision, default_top_k=5, max_pixels=40_000_000)
            ),
            "speech": SpeechRunnerAdapter("speech", self.speech, max_seconds=600),
        }
        install(app, settings=settings, router=Router(Registry(routes), adapters))

    async def __is_ready__(self) -> bool:
        return all((await app.state.router.health()).values())
