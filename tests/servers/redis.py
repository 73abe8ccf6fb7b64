"""A real redis-server for tests, on a free loopback port, with nothing saved to disk.

Needs Debian's redis-server (``scripts/system-deps`` installs it). Typical use in a fixture::

    with RedisProcess() as redis:
        limiter = RateLimiter.from_settings(RateLimitSettings(storage=redis.url))
        ...
        redis.kill()    # fault injection: the server dies (SIGKILL), its port stops answering
        redis.start()   # and comes back, empty, on the same port

``start`` returns once the server answers PING; on timeout or early exit it raises with the tail
of the server log.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from types import TracebackType

from tests.servers.process import ServerProcess, free_port

REDIS_SERVER = "redis-server"
READY_TIMEOUT_S = 30.0


def ping(host: str, port: int, timeout_s: float = 0.5) -> bool:
    """True when a Redis server at host:port answers PING (RESP, no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProcess:
    """redis-server --port P --bind 127.0.0.1 --save '' --appendonly no, in its own group."""

    def __init__(self, port: int | None = None, *, timeout_s: float = READY_TIMEOUT_S) -> None:
        if shutil.which(REDIS_SERVER) is None:
            raise RuntimeError(f"{REDIS_SERVER} is not installed: run scripts/system-deps")
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.server = ServerProcess(
            "redis",
            [REDIS_SERVER, "--port", str(self.port), "--bind", self.host,
             "--save", "", "--appendonly", "no"],
            ready=lambda: ping(self.host, self.port),
            url=self.url,
            timeout_s=timeout_s,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        proc = self.server.proc
        return proc is not None and proc.poll() is None

    def start(self) -> RedisProcess:
        if not self.running:
            self.server.start()
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        self.server.stop(timeout_s=10.0)

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash (no shutdown); connections are reset."""
        proc = self.server.proc
        if proc is None or proc.poll() is not None:
            return
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        proc.wait()

    def log_tail(self, lines: int = 60) -> str:
        return self.server.log_tail(lines)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.server.log_path.unlink(missing_ok=True)
