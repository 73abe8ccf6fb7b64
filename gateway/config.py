"""The `routing:` section of bundle.yaml: backends and the models they serve.

The bundled runners are always there as backends `llm`, `vision` and `speech`, serving their
models under their store names (demo-llm, demo-resnet, demo-whisper); this section adds remote
backends and models, and may tune the bundled backends (kind: runner)::

    routing:
      caller_header: X-Caller-Id          # names the caller for sticky A/B splits
      backends:
        triton:
          kind: triton
          url: 10.0.0.5:8001
          protocol: grpc                  # or http (then the HTTP port)
          timeout_s: 5
          retries: 1                      # only when the backend could not be reached
          breaker: {failure_threshold: 5, window_s: 30, recovery_s: 10, half_open_max_calls: 1}
        big-vllm: {kind: openai, url: http://10.0.0.6:8000, timeout_s: 120}
        llm: {kind: runner, timeout_s: 300}      # tunes the bundled LLM backend
      models:
        resnet-trt: {backend: triton, upstream: resnet50, versions: ["1", "2"]}
        llama-70b:
          backend: big-vllm
          upstream: meta-llama/Llama-3.1-70B-Instruct
          aliases: [llama]
          fallback: [demo-llm]            # tried in order when llama-70b's backend fails
        chat:                             # an A/B split: a caller keeps its variant
          variants: [{model: llama-70b, weight: 90}, {model: demo-llm, weight: 10}]

Names are checked against each other when the file is read (see `Settings`), so a typo fails
at startup with the path of the bad value.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

BUNDLED_BACKENDS = ("llm", "vision", "speech")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BreakerSettings(_Section):
    failure_threshold: int = Field(5, ge=1)  # failures within window_s that open the breaker
    window_s: float = Field(30.0, gt=0)
    recovery_s: float = Field(10.0, gt=0)  # open for this long, then half-open
    half_open_max_calls: int = Field(1, ge=1)  # probes let through; all must succeed to close


class _Backend(_Section):
    timeout_s: float | None = Field(None, gt=0)  # per call; streams: until the first chunk
    retries: int = Field(1, ge=0, le=5)  # extra attempts when the backend was unreachable
    backoff_s: float = Field(0.05, ge=0)  # before retry n: backoff_s * 2**n, jittered
    required: bool = False  # the gateway is ready only when this backend is healthy
    breaker: BreakerSettings = BreakerSettings()


class RunnerBackend(_Backend):
    """A runner of this bundle (llm, vision, speech); BentoML wires its address."""

    kind: Literal["runner"]
    required: bool = True


class OpenAIBackend(_Backend):
    """Any OpenAI-compatible server: vLLM, SGLang, ..."""

    kind: Literal["openai"]
    url: str = Field(pattern=r"^(https?|tcp|unix|file)://")
    timeout_s: float | None = Field(600.0, gt=0)
    api_key: str | None = None


class TritonBackend(_Backend):
    """A Triton Inference Server (or any KServe V2 server)."""

    kind: Literal["triton"]
    url: str = Field(pattern=r"^[^/\s]+:\d+$")  # host:port, of the gRPC or the HTTP endpoint
    protocol: Literal["http", "grpc"] = "grpc"
    timeout_s: float | None = Field(60.0, gt=0)


Backend = Annotated[RunnerBackend | OpenAIBackend | TritonBackend, Field(discriminator="kind")]


class Variant(_Section):
    model: str
    weight: int = Field(ge=0)


class ModelSettings(_Section):
    backend: str | None = None  # or `variants`
    upstream: str | None = None  # the model's name at the backend; default: this name
    # Its kind follows from the backend: openai -> llm, triton -> tensor, runner -> the runner's.
    aliases: list[str] = []
    versions: list[str] = []  # versions clients may name on /v2; passed on to the backend
    fallback: list[str] = []  # models tried in order when this one's backend fails
    variants: list[Variant] = []

    @model_validator(mode="after")
    def _backend_or_variants(self) -> ModelSettings:
        if (self.backend is None) == (not self.variants):
            raise ValueError("give either 'backend' or 'variants'")
        if self.variants and (self.upstream or self.versions or self.fallback):
            raise ValueError("a split ('variants') takes no upstream, versions or fallback")
        if self.variants and sum(v.weight for v in self.variants) == 0:
            raise ValueError("the variants' weights add up to 0")
        return self


class RoutingSettings(_Section):
    caller_header: str = "X-Caller-Id"
    backends: dict[str, Backend] = {}
    models: dict[str, ModelSettings] = {}

    @model_validator(mode="after")
    def _runner_names(self) -> RoutingSettings:
        for name, backend in self.backends.items():
            if isinstance(backend, RunnerBackend) and name not in BUNDLED_BACKENDS:
                raise ValueError(
                    f"backends.{name}: kind 'runner' is for the bundled runners "
                    f"({', '.join(BUNDLED_BACKENDS)}), not '{name}'"
                )
            if name in BUNDLED_BACKENDS and not isinstance(backend, RunnerBackend):
                raise ValueError(f"backends.{name}: the name is the bundled runner's")
        return self
