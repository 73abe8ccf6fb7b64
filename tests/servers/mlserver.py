"""A real MLServer (Seldon's KServe V2 server) with two scikit-learn models trained at test time.

The fixture side runs in .venv (standard library and tests.servers only); the models are trained
and served in .venv-mlserver (scripts/mlserver-env), so the pickles match the sklearn that loads
them::

    server = mlserver_process(Path(tmp))   # a ServerProcess; start() trains, then serves
    server.start()
    server.http_url, server.grpc_url       # host:port, as tritonclient takes them

The models are tests/servers/mlserver_models.py's.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from tests.servers.mlserver_models import MODELS
from tests.servers.process import ServerProcess, free_port, http_ok

REPO_ROOT = Path(__file__).resolve().parents[2]
MLSERVER_VENV = REPO_ROOT / ".venv-mlserver"
MODELS_SCRIPT = Path(__file__).resolve().with_name("mlserver_models.py")


class MLServerProcess(ServerProcess):
    def __init__(self, directory: Path, *, host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.http_port, self.grpc_port = free_port(), free_port()
        self.http_url = f"{host}:{self.http_port}"
        self.grpc_url = f"{host}:{self.grpc_port}"
        base = f"http://{self.http_url}"
        env = {
            "MLSERVER_HOST": host,
            "MLSERVER_HTTP_PORT": str(self.http_port),
            "MLSERVER_GRPC_PORT": str(self.grpc_port),
            "MLSERVER_METRICS_PORT": str(free_port()),
            "MLSERVER_PARALLEL_WORKERS": "0",  # models in the server process: one process less
            "PYTHONPATH": "",  # keep .venv's packages out of .venv-mlserver
            "VIRTUAL_ENV": "",
        }
        model_ready = [http_ok(f"{base}/v2/models/{m}/ready") for m in MODELS]
        super().__init__(
            "mlserver",
            [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(directory)],
            ready=lambda: (
                all(ready() for ready in model_ready) and _listening(host, self.grpc_port)
            ),
            url=base,
            env=env,
            timeout_s=120.0,
            before_start=self._train,
        )

    def _train(self) -> None:
        python = MLSERVER_VENV / "bin" / "python"
        if not python.exists():
            raise RuntimeError(f"{python} is missing: run scripts/mlserver-env first")
        subprocess.run(
            [str(python), str(MODELS_SCRIPT), str(self.directory)],
            check=True,
            env={"PATH": "/usr/bin:/bin"},
            timeout=120,
        )


def mlserver_process(directory: Path) -> MLServerProcess:
    return MLServerProcess(directory)


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False
