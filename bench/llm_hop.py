"""The LLM service's own hop alone, for bench/gateway.py's `llm-hop` path.

runners/llm.py serves vLLM the way BentoML serves any service with a custom command: BentoML's
reverse proxy (`_bentoml_impl/server/proxy.py`: FastAPI, aiohttp to `http.proxy_port`) behind
its middleware, with this bundle's DrainMiddleware and tracing setting. This service is that hop
with the same config, in front of the benchmark's deterministic upstream instead of vLLM: its
command only waits (the upstream already runs, on LLM_HOP_UPSTREAM_PORT). Streams through the
bundle cross this hop after the gateway's, so gateway + llm-hop is the bundled path's relay cost.

    LLM_HOP_UPSTREAM_PORT=8000 bentoml serve bench.llm_hop:LLMHop --port 3001
"""

from __future__ import annotations

import os
import sys

import bentoml

from lifecycle import DrainMiddleware, tune_gc
from settings import get_settings


@bentoml.service(
    name="llm-hop",
    http={"proxy_port": int(os.environ.get("LLM_HOP_UPSTREAM_PORT", "8000"))},
    traffic={"timeout": 3600},
    workers=1,
    **get_settings().log.bentoml_tracing(),
)
class LLMHop:
    def __init__(self) -> None:
        tune_gc()  # as runners/llm.py's service does

    def __command__(self) -> list[str]:
        return [sys.executable, "-c", "import time; time.sleep(1e9)"]


LLMHop.add_asgi_middleware(DrainMiddleware)  # type: ignore[attr-defined]
