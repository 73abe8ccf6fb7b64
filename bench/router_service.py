"""The gateway alone, routing only to remote backends: what the router benchmark serves.

    BUNDLE_CONFIG=routes.yaml bentoml serve bench.router_service:RouterGateway

Same app, router and BentoML HTTP stack as the bundle's Gateway, without the bundled runners, so
the benchmark measures the router's own cost with no engine competing for the CPU.
"""

from __future__ import annotations

import bentoml

from gateway.app import create_app, install, shutdown
from gateway.build import build_router
from settings import get_settings

app = create_app()


@bentoml.asgi_app(app, path="/")
@bentoml.service(name="router-gateway", traffic={"timeout": 3600})
class RouterGateway:
    def __init__(self) -> None:
        settings = get_settings()
        router = build_router(settings.routing, bundled={}, bundled_routes=[])
        install(app, settings=settings, router=router)

    async def __is_ready__(self) -> bool:
        return bool(await app.state.router.ready())

    @bentoml.on_shutdown
    async def close(self) -> None:
        await shutdown(app)
