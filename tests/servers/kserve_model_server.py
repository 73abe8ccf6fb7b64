"""Start the KServe model server of tests/servers/kserve_model.py (its V1 protocol takes TF
Serving's `:predict` format) from tests. Runs in .venv; the server runs in .venv-kserve, which
``scripts/kserve-env`` creates::

    server = kserve_model_process()   # a ServerProcess
    server.start()                    # ready when both models answer their status
    server.url                        # http://127.0.0.1:PORT, as a tfserving backend takes it
"""

from __future__ import annotations

from pathlib import Path

from tests.servers.process import ServerProcess, free_port, http_ok

REPO_ROOT = Path(__file__).resolve().parents[2]
KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"
MODEL_SCRIPT = Path(__file__).resolve().with_name("kserve_model.py")
MODELS = ("linear", "tagged")


def kserve_model_process(host: str = "127.0.0.1") -> ServerProcess:
    if not KSERVE_PYTHON.exists():
        raise RuntimeError(f"{KSERVE_PYTHON} is missing: run scripts/kserve-env first")
    port = free_port()
    url = f"http://{host}:{port}"
    ready = [http_ok(f"{url}/v1/models/{m}") for m in MODELS]
    return ServerProcess(
        "kserve-model",
        [str(KSERVE_PYTHON), str(MODEL_SCRIPT), "--http_port", str(port),
         "--grpc_port", str(free_port())],
        ready=lambda: all(check() for check in ready),
        url=url,
        env={"PYTHONPATH": "", "VIRTUAL_ENV": ""},  # keep .venv's packages out of .venv-kserve
        timeout_s=120.0,
    )  # fmt: skip
