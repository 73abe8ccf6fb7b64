"""Start a real server process for tests, wait until it is ready, and always clean it up."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StartAborted(RuntimeError):
    """A start given up because a server started alongside it failed."""


def start_together(*starts: Callable[[], object], aborts: Sequence[threading.Event]) -> None:
    """Run the start functions in parallel; the first failure aborts the others at once and is
    raised, so a broken server surfaces in seconds, not after every other server's timeout."""
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(len(starts)) as pool:
        jobs = [pool.submit(start) for start in starts]
        done, _ = wait(jobs, return_when=FIRST_EXCEPTION)
        failed = [job for job in done if job.exception() is not None]
        if failed:
            for event in aborts:
                event.set()
            wait(jobs)
            raise failed[0].exception()  # type: ignore[misc]


class ServerProcess:
    """A subprocess in its own process group, with its output kept in a log file."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        ready: Callable[[], bool],
        url: str = "",
        fatal_log_lines: Sequence[str] = (),
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        timeout_s: float = 300.0,
        before_start: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self.command = list(command)
        self._ready = ready
        self.url = url
        self.fatal_log_lines = tuple(fatal_log_lines)
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.timeout_s = timeout_s
        self.log_path = Path(tempfile.mkstemp(prefix=f"{name}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.abort = threading.Event()  # set from another thread to give up waiting at once
        self.before_start = before_start  # e.g. build the Bento, in the starting thread

    def start(self) -> ServerProcess:
        if self.before_start is not None:
            self.before_start()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.abort.is_set():
                self.stop()
                raise StartAborted(f"{self.name}: start abandoned (another server failed)")
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            if self._ready():
                return self
            if any(
                line in self.log_path.read_text(errors="replace") for line in self.fatal_log_lines
            ):
                self.stop()
                raise RuntimeError(f"{self.name} failed to start:\n{self.log_tail()}")
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"{self.name} not ready after {self.timeout_s:.0f} s:\n{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = os.getpgid(self.proc.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # children the leader left behind
            os.killpg(pgid, signal.SIGKILL)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check
