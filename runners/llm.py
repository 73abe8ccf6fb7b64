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

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bentoml
import httpx
from prometheus_client.parser import text_string_to_metric_families

from contract.names import LLM as NAME
from contract.names import model_name
from lifecycle import DRAIN, DrainMiddleware, die_with_parent, drain_runner, tune_gc
from settings import LLMSettings, LoraSettings, get_settings

SETTINGS = get_settings().llm
log = logging.getLogger("runners.llm")


def engine_command(
    settings: LLMSettings,
    model_path: str,
    served_name: str,
    adapters: Sequence[tuple[str, str]] = (),
) -> list[str]:
    """The command line that starts vLLM's OpenAI server for these settings; `adapters` are
    (served name, directory) of the LoRA adapters it serves from the start."""
    cmd = [part.format(python=sys.executable) for part in settings.command]
    cmd += ["--model", model_path, "--served-model-name", served_name]
    cmd += ["--host", settings.host, "--port", str(settings.port)]
    cmd += ["--dtype", settings.dtype, "--max-num-seqs", str(settings.max_num_seqs)]
    cmd += ["--tensor-parallel-size", str(settings.tensor_parallel_size)]
    cmd += ["--scheduling-policy", settings.scheduling_policy]
    if settings.max_model_len:
        cmd += ["--max-model-len", str(settings.max_model_len)]
    if _has_cuda():
        cmd += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    cmd.append(
        "--enable-prefix-caching"
        if settings.enable_prefix_caching
        else "--no-enable-prefix-caching"
    )
    if settings.tool_call_parser:
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", settings.tool_call_parser]
        cmd += ["--tool-strict-level", settings.tool_strict_level]
    if settings.reasoning_parser:
        cmd += ["--reasoning-parser", settings.reasoning_parser]
    cmd += ["--shutdown-timeout", str(settings.shutdown_timeout_s)]
    cmd += lora_args(settings.lora, adapters)
    cmd += ["--disable-uvicorn-access-log", *settings.extra_args]
    return cmd


def lora_args(lora: LoraSettings | None, adapters: Sequence[tuple[str, str]]) -> list[str]:
    """vLLM's LoRA flags; none without `llm.lora`, so the engine starts exactly as before."""
    if lora is None:
        return []
    args = ["--enable-lora", "--max-loras", str(lora.max_loras)]
    args += ["--max-lora-rank", str(lora.max_rank)]
    if adapters:
        args += ["--lora-modules", *(f"{name}={path}" for name, path in adapters)]
    return args


def keep_adapters(settings: LLMSettings) -> list[str]:
    """The supervisor's flag to reload run-time adapters after a restart of the engine."""
    if settings.lora is None or not settings.lora.runtime_updates:
        return []
    return ["--keep-adapters", f"http://127.0.0.1:{settings.port}"]


def lora_modules(settings: LLMSettings, base_path: str) -> list[tuple[str, str]]:
    """(served name, directory) of each configured adapter, each checked against the base
    model and `max_rank` so that a wrong one stops the start with the reason."""
    if settings.lora is None:
        return []
    from models import store
    from models.lora import check_adapter, is_adapter

    found = []
    for name, tag in settings.lora.served():
        stored = store.resolve(tag)
        if not is_adapter(stored):
            raise ValueError(f"llm.lora.adapters: {stored.tag} is a {stored.format} model, "
                             "not a LoRA adapter (python -m models import lora)")  # fmt: skip
        check_adapter(stored.path, Path(base_path), max_rank=settings.lora.max_rank)
        found.append((name, str(stored.path)))
    return found


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def served_name(settings: LLMSettings) -> str:
    return settings.served_name or model_name(settings.model)


@bentoml.service(
    name=NAME,
    http={"proxy_port": SETTINGS.port},
    # Time to the first byte only (lifecycle mends BentoML's timeout): long enough for a long
    # generation that is not streamed; a stream, once started, runs as long as it needs.
    traffic={"timeout": 3600},
    workers=1,
    **get_settings().log.bentoml_tracing(),  # no span per relayed chunk unless log.trace_requests
)
class LLM:
    model = bentoml.models.BentoModel(SETTINGS.model)

    def __init__(self) -> None:
        die_with_parent()
        drain_runner(get_settings().drain)
        self._probe = httpx.AsyncClient(base_url=f"http://127.0.0.1:{SETTINGS.port}", timeout=2)
        # The gateway on this host streams from the engine's port directly (llm.engine_direct),
        # so this worker's drain waits for the engine's own requests, not only its own.
        DRAIN.busy = self._engine_busy
        self._watch = asyncio.get_running_loop().create_task(watch_supervisor())
        tune_gc()

    def __command__(self) -> list[str]:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(SETTINGS.kv_cache_space_gib))
        if not _has_cuda():
            # vLLM 0.32's AOT compile cache cannot be loaded back on CPU ("'function' object has
            # no attribute 'finalize_loading'": it compiles again on every start). Without AOT
            # its inductor cache is reused: engine init 23.7 s cold, 3.9 s warm (demo-llm).
            os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
        if SETTINGS.lora is not None and SETTINGS.lora.runtime_updates:
            os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
        adapters = lora_modules(SETTINGS, self.model.path)
        engine = engine_command(SETTINGS, self.model.path, served_name(SETTINGS), adapters)
        drain = get_settings().drain  # the worker drains for at most this long, then stops us
        wait_s = drain.timeout_s + 2 * drain.final_grace_s + 10
        ready = f"http://127.0.0.1:{SETTINGS.port}/health"  # the niceness is taken from then on
        return [sys.executable, "-m", "runners.supervisor", "--drain-wait", f"{wait_s:g}",
                "--stop-timeout", str(SETTINGS.shutdown_timeout_s + 10),
                "--nice", str(SETTINGS.nice), "--ready-url", ready,
                *keep_adapters(SETTINGS), "--", *engine]  # fmt: skip

    async def __is_alive__(self) -> bool:
        """Dead once the supervisor is gone (killed, or out of restarts): liveness turns false,
        so Kubernetes restarts the pod; `watch_supervisor` makes the worker exit as well."""
        return supervisor_running()

    async def __is_ready__(self) -> bool:
        """Ready only when the engine itself answers /health, not when BentoML has started."""
        try:
            r = await self._probe.get("/health")
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    async def _engine_busy(self) -> bool:
        r = await self._probe.get("/metrics")
        return engine_requests(r.text) > 0

    @bentoml.on_shutdown
    async def _close(self) -> None:
        self._watch.cancel()
        await self._probe.aclose()


ENGINE_QUEUES = ("vllm:num_requests_running", "vllm:num_requests_waiting")


def engine_requests(metrics: str) -> float:
    """Requests vLLM runs or queues, from its Prometheus text (/metrics)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name in ENGINE_QUEUES
    )


def supervisor_running() -> bool:
    """False once the supervisor BentoML started as this service's command has exited."""
    proc = _supervisor()
    return proc is None or proc.returncode is None


def _supervisor() -> Any:
    return LLM.context.state.get("proc")  # type: ignore[attr-defined]  # BentoML's proxy sets it


async def watch_supervisor() -> None:
    """Without its supervisor this service proxies to nothing, for good: SIGTERM this worker,
    so `bentoml serve` respawns it (and with it the supervisor and vLLM) and a lone service
    (`bentoml start-http-server`, one per pod) exits for its owner to restart."""
    while (proc := _supervisor()) is None:  # noqa: ASYNC110  # BentoML starts it after __init__
        await asyncio.sleep(0.5)
    code = await proc.wait()
    if DRAIN.draining:
        return  # stopped as part of this worker's own shutdown
    log.error("the vLLM supervisor exited with %s; stopping this worker to be restarted", code)
    os.kill(os.getpid(), signal.SIGTERM)


# The adapters travel with the Bento (`bentoml build`, containerize) as the base model does.
ADAPTER_TAGS = [tag for _, tag in (SETTINGS.lora or LoraSettings()).served()]
LLM.models.extend(bentoml.models.BentoModel(tag) for tag in ADAPTER_TAGS)  # type: ignore[attr-defined]
LLM.add_asgi_middleware(DrainMiddleware)  # type: ignore[attr-defined]
