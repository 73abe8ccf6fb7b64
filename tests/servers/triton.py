"""Start and stop the real Triton Inference Server of tests/servers/triton_models.py from tests.

Runs in the main .venv (standard library only); the server itself runs in .venv-triton, which
``scripts/triton-env`` creates. Typical use in a fixture::

    with start_triton() as triton:
        client = tritonclient.http.InferenceServerClient(triton.http_url)
        ...
        triton.stop()   # fault injection: the server goes away (triton.kill() for a crash)
        triton.start()  # and comes back on the same ports

``start_triton`` returns only when ``/v2/health/ready`` answers 200 and every model in
``MODELS`` reports ready; on timeout or early exit it raises with the tail of the server log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

from tests.servers.process import StartAborted

REPO_ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON = REPO_ROOT / ".venv-triton" / "bin" / "python"
MODELS_SCRIPT = Path(__file__).resolve().with_name("triton_models.py")
MODELS = ("scale", "classify", "sleepy", "fail")
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
# PyTriton logs this when its tritonserver child exits with a non-zero code.
TRITONSERVER_FAILED = "Triton Inference Server exited with failure"


class TritonStartError(RuntimeError):
    """The server did not become ready (the message ends with the tail of its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):  # refused, reset, timed out, half-started server
        return None


def _remove_model_copies(workspace: Path) -> None:
    """Remove the /tmp/folderXXXXXX model copies Triton made for this workspace's models.

    Triton (path fixed, not $TMPDIR) copies each model it loads there and removes the copy when
    it unloads the model, so a killed server leaves them (~300 KB each). Their config.pbtxt
    names the PyTriton workspace, which tells them apart from other servers' copies.
    """
    needle = f'"{workspace}"'  # quoted: workspace-1 must not match workspace-10
    for folder in Path("/tmp").glob("folder*"):
        with contextlib.suppress(OSError):
            if needle in (folder / "config.pbtxt").read_text(errors="replace"):
                shutil.rmtree(folder, ignore_errors=True)


class TritonProcess:
    """A Triton server subprocess on fixed ports, in its own process group."""

    def __init__(
        self,
        *,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        sleepy_seconds: float = 1.0,
        host: str = "127.0.0.1",
        ready_timeout_s: float = READY_TIMEOUT_S,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.sleepy_seconds = sleepy_seconds
        self.ready_timeout_s = ready_timeout_s
        self.extra_args = extra_args
        self._tmp = Path(tempfile.mkdtemp(prefix="triton-test-"))
        self.log_path = self._tmp / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0  # where the current start's output begins in the log
        self.starts = 0
        self.last_ready_s: float | None = None  # seconds from spawn to all models ready
        self.abort = threading.Event()  # set from another thread to give up waiting at once

    # -- addresses ---------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        """host:port, the form tritonclient.http.InferenceServerClient(url=...) takes."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 60, *, this_start: bool = False) -> str:
        """The last lines of the server log (of all starts, or of the current one only)."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._log_offset if this_start else 0)
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:])

    def _workspace(self, start: int) -> Path:
        return self._tmp / f"workspace-{start}"

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> TritonProcess:
        """Launch the server (again, on the same ports) and wait until all models are ready."""
        if self.is_running():
            raise RuntimeError(f"Triton is already running (pid {self.pid})")
        if not TRITON_PYTHON.exists():
            raise TritonStartError(f"{TRITON_PYTHON} is missing: run scripts/triton-env first")
        self.starts += 1
        workspace = self._workspace(self.starts)  # PyTriton creates it and removes it
        cmd = [
            str(TRITON_PYTHON),
            str(MODELS_SCRIPT),
            "--address", self.host,
            "--http-port", str(self.http_port),
            "--grpc-port", str(self.grpc_port),
            "--metrics-port", str(self.metrics_port),
            "--sleepy-seconds", str(self.sleepy_seconds),
            "--workspace", str(workspace),
            *self.extra_args,
        ]  # fmt: skip
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")  # keep .venv's numpy 2 out
        }
        env["PYTHONUNBUFFERED"] = "1"
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            log.write(f"\n===== start #{self.starts}: {' '.join(cmd)}\n".encode())
            log.flush()
            started = time.monotonic()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,  # own process group: tritonserver and stubs included
            )
        try:
            self._wait_ready(started)
        except BaseException:
            self.kill()
            raise
        self.last_ready_s = time.monotonic() - started
        return self

    def _wait_ready(self, started: float) -> None:
        base = f"http://{self.host}:{self.http_port}"
        urls = [f"{base}/v2/health/ready"] + [f"{base}/v2/models/{m}/ready" for m in MODELS]
        deadline = started + self.ready_timeout_s
        pending = list(urls)
        while pending:
            assert self._proc is not None
            if self.abort.is_set():
                raise StartAborted("Triton: start abandoned (another server failed)")
            code = self._proc.poll()
            if code is not None:
                self._start_failed(f"Triton exited with code {code} before it was ready")
            if TRITONSERVER_FAILED in self.log_tail(20, this_start=True):
                # e.g. a port in use: PyTriton itself would wait minutes before it exits.
                self._start_failed("tritonserver exited with an error while starting")
            if time.monotonic() > deadline:
                waited = f"{self.ready_timeout_s:.0f} s"
                self._start_failed(f"Triton not ready after {waited} (waiting for {pending[0]})")
            if _http_status(pending[0]) == 200:
                pending.pop(0)
            else:
                time.sleep(0.2)

    def _start_failed(self, why: str) -> NoReturn:
        tail = self.log_tail()
        raise TritonStartError(f"{why}; end of the server log ({self.log_path}):\n{tail}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Stop gracefully and wait; SIGKILL the process group if it takes too long.

        SIGTERM goes to the launcher process only: it stops tritonserver (SIGINT), which waits
        for clients' open HTTP connections, unloads the models and their Python backend stubs
        (bounded by --exit-timeout-secs, 3 s), then PyTriton closes its proxies (~1 s a model):
        5-9 s in all. A SIGTERM to the whole group would reach the stubs first and make Triton
        log errors while unloading. Returns the exit code (None if it was not running).
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        return self._reap()

    def kill(self) -> int | None:
        """Crash the server: SIGKILL to the whole process group at once (no graceful shutdown)."""
        if self._proc is None:
            return None
        return self._reap()

    def _reap(self) -> int | None:
        proc = self._proc
        assert proc is not None
        # Whatever is still in the group (tritonserver, stubs, resource trackers) is killed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait()
        self._proc = None
        # PyTriton names its shared memory after the launcher's pid; a killed server leaks it.
        for leaked in Path("/dev/shm").glob(f"pytrtion{proc.pid}-*"):
            with contextlib.suppress(OSError):
                leaked.unlink()
        # Also after a clean exit: Triton exits before unloading everything if that takes longer
        # than its exit timeout, and PyTriton has then already removed the workspace dir.
        workspace = self._workspace(self.starts)
        _remove_model_copies(workspace)
        shutil.rmtree(workspace, ignore_errors=True)
        return code

    def close(self) -> None:
        """Stop the server and remove its temp dir (log included)."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> TritonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def start_triton(
    *,
    http_port: int | None = None,
    grpc_port: int | None = None,
    metrics_port: int | None = None,
    sleepy_seconds: float = 1.0,
    ready_timeout_s: float = READY_TIMEOUT_S,
    extra_args: tuple[str, ...] = (),
) -> Iterator[TritonProcess]:
    """Start the test Triton server (free ports by default), yield it ready, stop it on exit.

    ``extra_args`` go to triton_models.py, e.g. ``("--scale-queue-delay-us", "20000")``.
    """
    server = TritonProcess(
        http_port=http_port or free_port(),
        grpc_port=grpc_port or free_port(),
        metrics_port=metrics_port or free_port(),
        sleepy_seconds=sleepy_seconds,
        ready_timeout_s=ready_timeout_s,
        extra_args=extra_args,
    )
    with server:
        server.start()
        yield server


def settled_stats(
    read: Callable[[], tuple[int, int]], inferences: int, timeout_s: float = 10.0
) -> tuple[int, int]:
    """Read (inference_count, execution_count) until the first reaches ``inferences``.

    Triton records a request in its statistics when the request is released, which can come
    after its response has reached the client: read straight after the last response, the
    counts can still miss that batch (seen once: 0 of 16 recorded). Returns the last read
    when the count does not get there in ``timeout_s``, so the caller's assert says by how much.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        counts = read()
        if counts[0] >= inferences or time.monotonic() > deadline:
            return counts
        time.sleep(0.02)
