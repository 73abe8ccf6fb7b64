"""The LLM runner: vLLM's own OpenAI server, owned and supervised by a BentoML service.

BentoML starts `__command__` (our supervisor wrapping vLLM) and proxies every request that
reaches this service to it, so the full OpenAI surface (chat, completions, tools, structured
output, /metrics) is vLLM's. The gateway talks to it with the same OpenAI adapter it uses for
remote vLLM or SGLang servers.

vLLM inherits BentoML's PROMETHEUS_MULTIPROC_DIR, so its own metrics
(vllm:time_to_first_token_seconds, vllm:num_requests_running, ...) are part of the /metrics
that BentoML serves.
"""

from __future__ import annotations

import os
import sys

import bentoml
import httpx

from contract.names import LLM as NAME
from contract.names import model_name
from settings import LLMSettings, get_settings

SETTINGS = get_settings().llm


def engine_command(settings: LLMSettings, model_path: str, served_name: str) -> list[str]:
    """The command line that starts vLLM's OpenAI server for these settings."""
    cmd = [part.format(python=sys.executable) for part in settings.command]
    cmd += ["--model", model_path, "--served-model-name", served_name]
    cmd += ["--host", "127.0.0.1", "--port", str(settings.port)]
    cmd += ["--dtype", settings.dtype, "--max-num-seqs", str(settings.max_num_seqs)]
    cmd += ["--tensor-parallel-size", str(settings.tensor_parallel_size)]
    if settings.max_model_len:
        cmd += ["--max-model-len", str(settings.max_model_len)]
    if _has_cuda():
        cmd += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    cmd.append(
        "--enable-prefix-caching"
        if settings.enable_prefix_caching
        else "--no-enable-prefix-caching"
    )
    cmd += ["--disable-uvicorn-access-log", *settings.extra_args]
    return cmd


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def served_name(settings: LLMSettings) -> str:
    return settings.served_name or model_name(settings.model)


@bentoml.service(
    name=NAME,
    http={"proxy_port": SETTINGS.port},
    traffic={"timeout": 3600},  # long streams must not be cut
    workers=1,
)
class LLM:
    model = bentoml.models.BentoModel(SETTINGS.model)

    def __init__(self) -> None:
        self._probe = httpx.AsyncClient(base_url=f"http://127.0.0.1:{SETTINGS.port}", timeout=2)

    def __command__(self) -> list[str]:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(SETTINGS.kv_cache_space_gib))
        engine = engine_command(SETTINGS, self.model.path, served_name(SETTINGS))
        return [sys.executable, "-m", "runners.supervisor", "--", *engine]

    async def __is_ready__(self) -> bool:
        """Ready only when the engine itself answers /health, not when BentoML has started."""
        try:
            r = await self._probe.get("/health")
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    @bentoml.on_shutdown
    async def _close(self) -> None:
        await self._probe.aclose()
