"""The bundle's configuration: one typed object, read once from a YAML file.

The file is ``bundle.yaml`` next to this module unless ``BUNDLE_CONFIG`` names another one.
Which model each service serves is configuration (a BentoML model tag), not code::

    llm:
      model: demo-llm            # any tag in the BentoML model store
      max_model_len: 512
    vision:
      model: demo-resnet
      max_batch_size: 32
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.config import RoutingSettings
from gateway.registry import Registry, bundled_routes

DEFAULT_PATH = Path(__file__).with_name("bundle.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LLMSettings(_Section):
    """The bundled vLLM engine. Each field maps to a `vllm serve` flag."""

    model: str = "demo-llm"
    served_name: str | None = None  # defaults to the model tag's name
    port: int = Field(8100, ge=1, le=65535)  # vLLM's own HTTP port inside the LLM service
    command: list[str] = ["{python}", "-m", "vllm.entrypoints.openai.api_server"]
    max_model_len: int | None = Field(None, ge=16)
    dtype: str = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    kv_cache_space_gib: int = Field(1, ge=1)  # CPU only: VLLM_CPU_KVCACHE_SPACE
    max_num_seqs: int = Field(64, ge=1)
    enable_prefix_caching: bool = True
    extra_args: list[str] = []
    startup_timeout_s: float = Field(600, gt=0)


class VisionSettings(_Section):
    model: str = "demo-resnet"
    batching: bool = True  # off: one forward per request (the benchmark's baseline)
    max_batch_size: int = Field(32, ge=2)  # BentoML requires > 1 for a batchable API
    # BentoML answers 503 for requests it estimates would exceed this, so it is a budget, not a
    # wait: sized for CPU (a ResNet-50 batch of 32 takes about 1 s on 2 cores); ~100 on GPU.
    max_latency_ms: int = Field(5000, ge=1)
    top_k: int = Field(5, ge=1)  # predictions returned when a request names no top_k


class SpeechSettings(_Section):
    model: str = "demo-whisper"
    batching: bool = True
    max_batch_size: int = Field(8, ge=2)  # in 30 s chunks, not requests
    max_latency_ms: int = Field(30000, ge=1)  # a CPU batch of 8 chunks decodes for seconds
    max_new_tokens: int = Field(128, ge=1, le=440)  # per 30 s chunk; Whisper's limit is 448


class LimitSettings(_Section):
    max_request_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_audio_seconds: float = Field(600, gt=0)


class GatewaySettings(_Section):
    timeout_s: float = Field(600, gt=0)  # whole-request limit for non-streaming upstream calls
    workers: int = Field(1, ge=1)


class Settings(_Section):
    llm: LLMSettings = LLMSettings()
    vision: VisionSettings = VisionSettings()
    speech: SpeechSettings = SpeechSettings()
    limits: LimitSettings = LimitSettings()
    gateway: GatewaySettings = GatewaySettings()
    routing: RoutingSettings = RoutingSettings()  # remote backends and models: gateway/config.py
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def bundled_models(self) -> tuple[str, str, str]:
        """The names the bundled LLM, image and speech models are served under."""
        llm = self.llm.served_name or self.llm.model.split(":")[0]
        return llm, self.vision.model.split(":")[0], self.speech.model.split(":")[0]

    @model_validator(mode="after")
    def _routes_resolve(self) -> Settings:
        try:
            Registry.from_settings(self.routing, bundled_routes(*self.bundled_models()))
        except ValueError as exc:
            raise ValueError(f"routing: {exc}") from None
        return self


class SettingsError(ValueError):
    """The configuration file is missing, not YAML, or has a bad value."""


def parse_settings(data: dict[str, Any] | None, *, source: str = "<dict>") -> Settings:
    try:
        return Settings.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"{source}: {problems}") from None


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate the configuration file, failing loudly on any bad value."""
    path = Path(path or os.environ.get("BUNDLE_CONFIG") or DEFAULT_PATH)
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else {}
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a mapping at the top level")
    return parse_settings(data, source=str(path))


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read on first use."""
    return load_settings()
