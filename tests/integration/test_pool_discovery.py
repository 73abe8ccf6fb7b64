"""A pool found by DNS, through the system's real resolver: simulated vLLM replicas
(tests/servers/sim_vllm.py) on 127.0.0.2-4, one name for them in /etc/hosts (what a headless
Service is to a pod's resolver), and the gateway (`bentoml serve service:RemoteGateway`)
discovering them while requests flow. A replica added to the name takes a fair share within
`every_s` + 1 s; a replica killed under load loses no request (none of them streams).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers.bundle import remote_gateway_process
from tests.servers.process import ServerProcess, free_port, http_ok, start_together
from tests.servers.sim_vllm import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HOSTS = Path("/etc/hosts")
EVERY_S = 1.0
SIM = ["--prefill-tokens-per-s", "200000", "--token-ms", "2", "--max-tokens", "8"]


@contextlib.contextmanager
def hosts_entries() -> Iterator[Callable[[list[str]], None]]:
    """A function that puts lines after /etc/hosts' own; the file as it was at the end."""
    original = HOSTS.read_text()

    def publish(lines: list[str]) -> None:
        HOSTS.write_text(original.rstrip("\n") + "\n" + "\n".join(lines) + "\n")

    try:
        yield publish
    finally:
        HOSTS.write_text(original)


def replica(host: str, port: int) -> ServerProcess:
    url = f"http://{host}:{port}"
    command = [sys.executable, "-m", "tests.servers.sim_vllm", "--host", host,
               "--port", str(port), *SIM]  # fmt: skip
    return ServerProcess(f"sim-{host}", command, ready=http_ok(f"{url}/health"), url=url,
                         cwd=ROOT, timeout_s=60)  # fmt: skip


def served(server: ServerProcess) -> int:
    return int(httpx.get(f"{server.url}/stats", timeout=10).json()["requests"])


class Load:
    """Requests sent by a few threads, one after another each, until stopped."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _run(self) -> None:
        body = {"model": "fleet-llm", "messages": [{"role": "user", "content": "hi " * 50}]}
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                try:
                    r = client.post(f"{self.url}/v1/chat/completions", json=body)
                    self.statuses.append(r.status_code)
                    if r.status_code != 200:
                        self.errors.append(r.text[:300])
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))


@pytest.mark.skipif(not os.access(HOSTS, os.W_OK), reason="needs to write /etc/hosts (root)")
def test_discovery_follows_scaling_and_a_killed_replica_loses_no_request() -> None:
    name = f"fleet-{os.getpid()}.pool.test"
    port = free_port()
    replicas = [replica(f"127.0.0.{i}", port) for i in (2, 3, 4)]
    with hosts_entries() as publish, contextlib.ExitStack() as stack:
        lines = [f"127.0.0.2 {name}", f"127.0.0.3 {name}"]
        publish(lines)
        start_together(*(r.start for r in replicas), aborts=[r.abort for r in replicas])
        for r in replicas:
            stack.callback(r.stop)
        config = {
            "routing": {
                "backends": {
                    "fleet": {
                        "kind": "openai",
                        "discover": {"dns": name, "port": port, "every_s": EVERY_S},
                        "balance": "least_load",
                        "retries": 2,
                        "timeout_s": 30,
                    }
                },
                "models": {"fleet-llm": {"backend": "fleet"}},
            },
            "admission": {"fleet": {"max_inflight": 16, "max_queue": 64}},
            "log": {"access_log": False},
            "gateway": {"workers": 1, "grpc_port": None},
        }
        gateway = remote_gateway_process(config).start()
        stack.callback(gateway.stop)
        with Load(gateway.url) as load:
            time.sleep(2)
            assert served(replicas[0]) > 0 and served(replicas[1]) > 0
            assert served(replicas[2]) == 0  # not in the name yet

            publish([*lines, f"127.0.0.4 {name}"])  # scale up
            time.sleep(EVERY_S + 1)
            before = [served(r) for r in replicas]
            time.sleep(3)
            window = [served(r) - b for r, b in zip(replicas, before, strict=True)]
            share = window[2] / sum(window)
            print(f"\nafter scaling up, requests per replica in 3 s: {window} ({share:.0%} new)")
            assert share >= 0.2, window  # a fair share is a third

            assert replicas[0].proc is not None  # under load: its requests go to the others
            os.killpg(replicas[0].proc.pid, signal.SIGKILL)
            time.sleep(3)
        assert not load.errors, load.errors[:5]
        assert len(load.statuses) > 50 and set(load.statuses) == {200}
        status = httpx.get(f"{gateway.url}/status", timeout=10).json()["backends"]
        endpoints = {e["endpoint"]: e["state"] for e in status[0]["endpoints"]}
        assert endpoints[replicas[0].url] == "unready", endpoints
        assert endpoints[replicas[2].url] == "ready", endpoints
