"""The real bundle under `bentoml serve`, as a user runs it."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.servers.process import ServerProcess, free_port, http_ok

ROOT = Path(__file__).resolve().parents[2]


def start_bundle(*, port: int | None = None, env: dict[str, str] | None = None) -> ServerProcess:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        "bundle",
        [sys.executable, "-m", "bentoml", "serve", "service:Gateway", "--port", str(port),
         "--host", "127.0.0.1"],
        ready=http_ok(f"{url}/readyz"),
        url=url,
        fatal_log_lines=["Application startup failed"],
        env={"HF_HUB_OFFLINE": "1", **(env or {})},
        cwd=ROOT,
        timeout_s=420,
    )
    return server.start()
