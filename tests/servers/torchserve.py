"""A real TorchServe for the routing tests, on free ports, serving the models of
tests/servers/torchserve_archive.py (packed at its first start, in its starting thread)::

    server = TorchServeProcess()
    server.start()          # archives, then `torchserve --start --foreground ...`, until ready
    server.inference_url    # http://127.0.0.1:P (POST /predictions/resnet)
    server.stop(); server.start()   # fault tests: gone, then back on the same ports
    server.close()

TorchServe (its Java frontend, its Python workers) runs from .venv-torchserve, which
``scripts/torchserve-env`` makes; Java comes from scripts/system-deps. Token auth (on by default
since 0.11) is off, as is the snapshot of the model set (--ncs). `last_ready_s` is the seconds
from the launch to both models' workers ready; `archive_s` the packing's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.servers.process import ServerProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
TORCHSERVE = ROOT / ".venv-torchserve" / "bin" / "torchserve"
MODELS = ("resnet", "upper")
READY_TIMEOUT_S = 180.0
# Packing imports torch and transformers: 25 s on a quiet machine, 200 s beside three other
# routing stacks starting at once.
ARCHIVE_TIMEOUT_S = 600.0
MAX_BODY = 25 * 1024 * 1024  # the bundle's limits.max_request_bytes (TorchServe's: 6.5 MB)
# Its JVM small and quick to start: a client JIT, one GC thread (2 cores for everything here).
VM_ARGS = "-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1"


class TorchServeProcess:
    def __init__(self, *, vision_model: str = "demo-resnet", host: str = "127.0.0.1") -> None:
        self.host = host
        self.vision_model = vision_model
        self.inference_port, self.management_port = free_port(), free_port()
        self.metrics_port = free_port()
        self._tmp = Path(tempfile.mkdtemp(prefix="torchserve-test-"))
        self.store = self._tmp / "model-store"
        self.archive_s: float | None = None
        self.last_ready_s: float | None = None
        config = self._write_config()
        command = [
            str(TORCHSERVE), "--start", "--foreground", "--disable-token-auth", "--ncs",
            "--model-store", str(self.store), "--ts-config", str(config),
            "--models", *(f"{m}={m}.mar" for m in MODELS),
        ]  # fmt: skip
        self.server = ServerProcess(
            "torchserve",
            command,
            ready=self._ready,
            url=self.inference_url,
            env=self._environment(),
            cwd=self._tmp,
            timeout_s=READY_TIMEOUT_S,
        )
        self.abort = self.server.abort

    @property
    def inference_url(self) -> str:
        return f"http://{self.host}:{self.inference_port}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"

    def start(self) -> TorchServeProcess:
        if not TORCHSERVE.exists():
            raise RuntimeError(f"{TORCHSERVE} is missing: run scripts/torchserve-env first")
        self._archive()  # timed apart from the server's own start
        started = time.monotonic()
        self.server.start()
        self.last_ready_s = time.monotonic() - started
        return self

    def stop(self) -> None:
        self.server.stop()

    def close(self) -> None:
        self.server.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def log_text(self) -> str:
        """Everything it logged (its workers' MODEL_LOG lines included) over all its starts."""
        return self.server.log_path.read_text(errors="replace")

    def _environment(self) -> dict[str, str]:
        """Its files in its own folder: TMPDIR holds its pid file (TorchServe refuses to start
        while the one in the shared temp dir names a live server), LOG_LOCATION its logs."""
        folder = str(self._tmp)
        return {"TMPDIR": folder, "LOG_LOCATION": f"{folder}/logs", "METRICS_LOCATION": folder}

    def _write_config(self) -> Path:
        """Its config.properties: its HTTP and gRPC APIs on free ports and its workers' sockets
        named from one (TorchServe's defaults, 8080-8082, 7070-7071 and 9000, would meet another
        server's)."""
        path = self._tmp / "config.properties"
        address = f"http://{self.host}"
        path.write_text(
            f"inference_address={address}:{self.inference_port}\n"
            f"management_address={address}:{self.management_port}\n"
            f"metrics_address={address}:{self.metrics_port}\n"
            f"grpc_inference_port={free_port()}\ngrpc_management_port={free_port()}\n"
            f"initial_worker_port={free_port()}\n"
            f"max_request_size={MAX_BODY}\nmax_response_size={MAX_BODY}\n"
            "number_of_netty_threads=2\nnetty_client_threads=2\n"
            "disable_system_metrics=true\n"
            f"vmargs={VM_ARGS}\n"
        )
        return path

    def _archive(self) -> None:
        if self.archive_s is not None:
            return
        started = time.monotonic()
        command = [sys.executable, "-m", "tests.servers.torchserve_archive", str(self.store)]
        done = subprocess.run(
            [*command, "--vision-model", self.vision_model],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=ARCHIVE_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"packing TorchServe's models failed:\n{done.stderr[-3000:]}")
        self.archive_s = time.monotonic() - started

    def _ready(self) -> bool:
        """Its ping answers and each model has a worker READY."""
        try:
            if httpx.get(f"{self.inference_url}/ping", timeout=2.0).status_code != 200:
                return False
            for model in MODELS:
                described = httpx.get(f"{self.management_url}/models/{model}", timeout=2.0)
                workers = described.json()[0]["workers"] if described.status_code == 200 else []
                if not any(w.get("status") == "READY" for w in workers):
                    return False
        except (httpx.HTTPError, ValueError, LookupError):
            return False
        return True
