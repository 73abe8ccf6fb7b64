"""The bundle: a gateway (the entry service) in front of three runners.

    bentoml serve service:Gateway

Each runner is its own BentoML service, so on BentoCloud or Kubernetes each scales on its own.
`RemoteGateway` is the same gateway without the bundled runners, for remote backends only (the
`routing:` section): a proxy in front of vLLM, SGLang or Triton servers::

    BUNDLE_CONFIG=routes.yaml bentoml serve service:RemoteGateway
"""

from __future__ import annotations

import os

import bentoml

from gateway.app import create_app, install, shutdown
from gateway.build import build_router
from gateway.bundle import bundled_router, dependency_url
from lifecycle import DrainMiddleware, die_with_parent, drain_entry
from runners.llm import LLM
from runners.speech import Transcriber
from runners.vision import ImageClassifier
from settings import get_settings

# The runners' sockets as loopback TCP, held open by `bentoml serve` until every service has
# stopped: with Unix sockets BentoML deletes the files as shutdown begins, and a draining
# gateway's requests in flight could no longer reach the runners.
os.environ.setdefault("BENTOML_NO_UDS", "1")

app = create_app()


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="gateway", traffic={"timeout": 3600}, workers=get_settings().gateway.workers)
class Gateway:
    llm = bentoml.depends(LLM)
    vision = bentoml.depends(ImageClassifier)
    speech = bentoml.depends(Transcriber)

    def __init__(self) -> None:
        settings = get_settings()
        die_with_parent()
        drain_entry(settings.drain)
        router = bundled_router(
            settings, llm_url=dependency_url(type(self).llm), vision=self.vision, speech=self.speech
        )
        install(app, settings=settings, router=router)

    async def __is_ready__(self) -> bool:
        """Ready when the bundled runners answer their own health checks (vLLM's /health too).

        Remote backends do not count: their breakers and fallbacks handle them, and GET /status
        shows them."""
        return bool(await app.state.router.ready())

    @bentoml.on_shutdown
    async def close(self) -> None:
        await shutdown(app)


Gateway.add_asgi_middleware(DrainMiddleware)  # type: ignore[attr-defined]


@bentoml.asgi_app(app, path="/")
@bentoml.service(
    name="remote-gateway", traffic={"timeout": 3600}, workers=get_settings().gateway.workers
)
class RemoteGateway:
    def __init__(self) -> None:
        settings = get_settings()
        die_with_parent()
        drain_entry(settings.drain)
        router = build_router(
            settings.routing,
            bundled={},
            bundled_routes=[],
            admission=settings.admission,
            cache=settings.cache,
        )
        install(app, settings=settings, router=router)

    async def __is_ready__(self) -> bool:
        """Ready when every remote backend marked `required` answers its health check."""
        return bool(await app.state.router.ready())

    @bentoml.on_shutdown
    async def close(self) -> None:
        await shutdown(app)


RemoteGateway.add_asgi_middleware(DrainMiddleware)  # type: ignore[attr-defined]
