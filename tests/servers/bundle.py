"""The real bundle as a user runs it: `bentoml build`, then `bentoml serve <built tag>`."""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psutil

from tests.servers.process import ServerProcess, free_port, http_ok

ROOT = Path(__file__).resolve().parents[2]
BENTOML = [sys.executable, "-m", "bentoml"]
TO_BUILD = "<the Bento built from this checkout>"


@functools.cache
def build_bento() -> str:
    """Build the Bento from this checkout once per process; returns its tag."""
    out = subprocess.run(
        [*BENTOML, "build", "--output", "tag"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1].removeprefix("__tag__:")


def bento_info(tag: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(
        [*BENTOML, "get", tag, "-o", "json"], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(out))


def start_bundle(
    *, target: str | None = None, port: int | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    """Serve `target` (default: a freshly built Bento of this checkout) until ready."""
    return bundle_process(target=target, port=port, env=env).start()


def bundle_process(
    *, target: str | None = None, port: int | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    """The bundle's server, not started yet: `.start()` builds the Bento (unless `target` is
    given), serves it and waits until /readyz answers 200."""
    build = target is None
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [*BENTOML, "serve", target or TO_BUILD, "--port", str(port), "--host", "127.0.0.1"]
    server = ServerProcess(
        "bundle",
        command,
        ready=http_ok(f"{url}/readyz"),
        url=url,
        fatal_log_lines=["Application startup failed"],
        env={"HF_HUB_OFFLINE": "1", **(env or {})},
        cwd=tempfile.gettempdir(),  # what runs is the Bento, not this checkout
        timeout_s=420,
    )
    if build:

        def build_first() -> None:  # in the thread that starts it, beside the other servers
            server.command[server.command.index(TO_BUILD)] = build_bento()

        server.before_start = build_first
    return server


def service_worker(bundle: ServerProcess, service: str) -> psutil.Process:
    """The worker process of one of the bundle's services (`gateway`, `vision`, ...): the first,
    where the service runs several."""
    assert bundle.proc is not None, "the bundle is not running"
    for proc in psutil.Process(bundle.proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            command = " ".join(proc.cmdline()) + " "
            worker = "_bentoml_impl.worker.service" in command
            if worker and f"--service-name {service} " in command:
                return proc
    raise LookupError(f"no worker of service '{service}' in the bundle")


def remote_gateway_process(config: dict[str, Any], *, timeout_s: float = 180) -> ServerProcess:
    """`bentoml serve service:RemoteGateway` (the gateway alone, remote backends only) on a free
    port with `config` as its BUNDLE_CONFIG and a BENTOML_HOME of its own; not started yet."""
    import yaml

    from tests.servers.bentoml_home import isolated_home

    directory = Path(tempfile.mkdtemp(prefix="remote-gateway-"))
    (directory / "routes.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return ServerProcess(
        "remote-gateway",
        [*BENTOML, "serve", "service:RemoteGateway", "--port", str(port), "--host", "127.0.0.1"],
        ready=http_ok(f"{url}/readyz"),
        url=url,
        env={
            "BUNDLE_CONFIG": str(directory / "routes.yaml"),
            "BENTOML_HOME": str(isolated_home(directory)),
        },
        cwd=ROOT,
        timeout_s=timeout_s,
    )
