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
import re
import string
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.names import BUNDLED, model_name

DEFAULT_PATH = Path(__file__).with_name("bundle.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ToolStrictLevel = Literal["auto", "function", "parameter"]  # vLLM's --tool-strict-level
# How a pool picks an endpoint per request (gateway/routing/pick.py)
Balance = Literal["round_robin", "least_load", "prefix", "session"]
# A request's class for admission and the engine (gateway/scope/admission.py)
Priority = Literal["high", "normal", "low"]


class Discover(_Section):
    """A pool's endpoints from a DNS name's addresses (a Kubernetes headless Service)."""

    dns: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    every_s: float = Field(2.0, gt=0)  # re-resolved, and each endpoint's health read, this often
    # Health and draining on another port and path than the traffic's (the bundled LLM's pods:
    # requests to vLLM on 8100, /readyz on the service's 3000); unset: the traffic's.
    health_port: int | None = Field(None, ge=1, le=65535)
    health_path: str | None = Field(None, pattern=r"^/")


LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]  # what vLLM's --max-lora-rank takes


class LoraAdapter(_Section):
    """A LoRA adapter served under a name of its own (`sql`) rather than its store name."""

    model: str = Field(min_length=1)  # a model-store tag (format peft-lora)
    name: str = Field(min_length=1)


class LoraSettings(_Section):
    """LoRA adapters on the bundled engine (vLLM --enable-lora): each is served as a model of
    its own whose parent is the base model. Absent: the engine starts without LoRA (vLLM's CPU
    build then keeps its compiled graphs, which it turns off for all traffic with LoRA on)."""

    max_loras: int = Field(4, ge=1)  # adapters resident in one batch at once (--max-loras)
    max_rank: LoraRank = 16  # the highest adapter rank the engine takes (--max-lora-rank)
    # model-store tags served from the start, under the tag's name without its version
    # (demo-llm-sql:abc -> demo-llm-sql), or {model: TAG, name: NAME}
    adapters: list[str | LoraAdapter] = []
    # POST /v1/load_lora_adapter and /v1/unload_lora_adapter through the gateway, for keys
    # marked `admin: true` (VLLM_ALLOW_RUNTIME_LORA_UPDATING on the engine)
    runtime_updates: bool = False

    def served(self) -> list[tuple[str, str]]:
        """(served name, store tag) of each configured adapter."""
        return [
            (a.name, a.model) if isinstance(a, LoraAdapter) else (model_name(a), a)
            for a in self.adapters
        ]


class LLMSettings(_Section):
    """The bundled vLLM engine. Each field maps to a `vllm serve` flag."""

    model: str = "demo-llm"
    served_name: str | None = None  # defaults to the model tag's name
    port: int = Field(8100, ge=1, le=65535)  # vLLM's own HTTP port inside the LLM service
    # The interface vLLM listens on: loopback, or every interface where a gateway in another pod
    # reaches it directly (engine_url, engine_discover). Loopback is always included: the
    # service's proxy and probes use it. vLLM's port takes requests that pass by the gateway's
    # keys: let only the gateway reach it (deploy/kubernetes/base/network-policies.yaml).
    host: Literal["127.0.0.1", "0.0.0.0", "::"] = "127.0.0.1"
    command: list[str] = ["{python}", "-m", "vllm.entrypoints.openai.api_server"]
    max_model_len: int | None = Field(None, ge=16)
    dtype: str = "auto"
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    kv_cache_space_gib: int = Field(1, ge=1)  # CPU only: VLLM_CPU_KVCACHE_SPACE
    max_num_seqs: int = Field(64, ge=1)
    enable_prefix_caching: bool = True
    # vLLM's parser for the model's tool-call format (hermes for Qwen2.5/Hermes and the demo,
    # llama3_json for Llama 3.x, mistral, ...): with one, tool_choice "auto" works
    tool_call_parser: str | None = None
    # With a tool_call_parser, which calls vLLM's grammar pins to the tool's parameters schema
    # (--tool-strict-level): "parameter", every call (forced or "auto"), as if each tool said
    # `"strict": true`; "function", the call's markup and name only; "auto" (vLLM's default),
    # only calls to tools marked `"strict": true`: a forced call to another tool answered
    # arguments such as `true` or `103` for an object schema (issue 21).
    tool_strict_level: ToolStrictLevel = "parameter"
    reasoning_parser: str | None = None  # e.g. deepseek_r1, qwen3
    extra_args: list[str] = []
    startup_timeout_s: float = Field(600, gt=0)
    shutdown_timeout_s: int = Field(10, ge=0)  # vLLM --shutdown-timeout: its own drain, last
    # The gateway sends LLM requests straight to vLLM's port, past the LLM service's BentoML
    # proxy, a second relay as costly per chunk as the gateway (bench.gateway, path llm-hop):
    # at every replica's engine found by `engine_discover` (Kubernetes: the headless Service
    # llm-engine), or at `engine_url` when set, else at 127.0.0.1:port when the LLM service runs
    # on the gateway's host (`bentoml serve`, the image, compose). Health checks, restarts and
    # the drain stay with the service. Elsewhere (BentoCloud: one port per service) the
    # service's proxy is the way in. engine_direct false: always through the service (it does
    # not apply with engine_discover).
    engine_direct: bool = True
    engine_url: str | None = Field(None, pattern=r"^https?://[^/\s]+/?$")
    # Every replica of the LLM service as an endpoint of the gateway's `llm` pool, by DNS (on
    # Kubernetes the headless Service over the llm pods' engine port, deploy/kubernetes): each
    # request picked by `balance`; health and draining read on the pod's service port
    # (`health_port`, /readyz). Unset: the one engine at engine_url (or this host's).
    engine_discover: Discover | None = None
    balance: Balance = "prefix"
    # vLLM --scheduling-policy: priority (the gateway passes each request's class as vLLM's
    # `priority`; with one class it is first come first served) or fcfs.
    scheduling_policy: Literal["priority", "fcfs"] = "priority"
    # Added to the engine processes' niceness (0-19), and to their session's autogroup's (the
    # engine runs in a session of its own), once the engine answers /health (it starts at full
    # speed): on one host its busy-polling threads then yield the cores to the gateway, whose
    # answers (refusals, other models) stay quick (bench.refusals, 2 cores, engine saturated,
    # 2,000+ refusals: p99.9 2.2 s at 0, 13 ms at 10). Where the engine has its own cores (a
    # pod of its own) it changes nothing.
    nice: int = Field(10, ge=0, le=19)
    lora: LoraSettings | None = None

    @model_validator(mode="after")
    def _one_engine_source(self) -> LLMSettings:
        if self.engine_url and self.engine_discover:
            raise ValueError("llm: set engine_url or engine_discover, not both")
        names = [name for name, _ in self.lora.served()] if self.lora else []
        if twice := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"llm.lora.adapters: {', '.join(twice)} served twice")
        return self

    def adapters(self) -> list[str]:
        """The served names of the adapters the engine starts with."""
        return [name for name, _ in self.lora.served()] if self.lora else []


VisionGraph = Literal["eager", "optimized"]  # how the vision runner runs its network


class VisionSettings(_Section):
    model: str = "demo-resnet"
    batching: bool = True  # off: one forward per request (the benchmark's baseline)
    max_batch_size: int = Field(32, ge=2)  # BentoML requires > 1 for a batchable API
    # BentoML answers 503 for requests it estimates would exceed this, so it is a budget, not a
    # wait: sized for CPU (a ResNet-50 batch of 32 takes about 1 s on 2 cores); ~100 on GPU.
    max_latency_ms: int = Field(5000, ge=1)
    # The longest BentoML's batcher holds a lone request waiting for others (runners/batching.py;
    # Triton's max_queue_delay): under load batches form from the requests queued behind a
    # running batch anyway. Without a bound it learns to hold for as long as requests queued in
    # the last burst.
    max_hold_ms: float = Field(10, ge=0)
    top_k: int = Field(5, ge=1)  # predictions returned when a request names no top_k
    # "optimized": TorchScript traced, frozen and optimized for inference at load (checked
    # against eager first; eager when that fails); "eager": the model as stored, in PyTorch.
    graph: VisionGraph = "optimized"


class SpeechSettings(_Section):
    model: str = "demo-whisper"
    batching: bool = True
    max_batch_size: int = Field(8, ge=2)  # in 30 s chunks, not requests
    max_latency_ms: int = Field(30000, ge=1)  # a CPU batch of 8 chunks decodes for seconds
    max_hold_ms: float = Field(50, ge=0)  # see VisionSettings; a clip decodes for ~1 s on CPU
    max_new_tokens: int = Field(128, ge=1, le=440)  # per 30 s chunk; Whisper's limit is 448


class EmbedSettings(_Section):
    model: str = "demo-embed"
    batching: bool = True
    max_batch_size: int = Field(32, ge=2)  # inputs (texts), not requests; a request's many
    # inputs are split across batches
    max_latency_ms: int = Field(2000, ge=1)
    max_hold_ms: float = Field(10, ge=0)  # see VisionSettings
    # Inputs longer than this (or than the model's own max_length, if less) are refused with a
    # 400, as OpenAI does; counted in the model's tokens, special tokens included.
    max_input_tokens: int = Field(512, ge=1)


class LimitSettings(_Section):
    max_request_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=1)
    max_audio_seconds: float = Field(600, gt=0)
    # Elements of one KServe V2 BYTES input (/v2 and gRPC), checked on its shape before any
    # element is built: each may become work of its own (an audio file is a decode and a call).
    max_bytes_elements: int = Field(4096, ge=1)


class DrainSettings(_Section):
    """What SIGTERM (Kubernetes' stop, `bentoml serve`'s Ctrl-C) does: see lifecycle.py."""

    # Requests in flight (streams too) get this long to finish; a typical chat stream of ~1,000
    # tokens at 30 tokens/s is ~35 s. Size the pod's terminationGracePeriodSeconds above it.
    timeout_s: float = Field(60.0, gt=0)
    final_grace_s: float = Field(5.0, ge=0)  # after the deadline, for the cut streams' last events
    retry_after_s: int = Field(5, ge=1)  # on the 503s a draining gateway answers
    runner_quiet_s: float = Field(2.0, ge=0)  # runners stop once idle this long (or past the
    # gateway's deadline): their client, the draining gateway, may still call them


class GatewaySettings(_Section):
    timeout_s: float = Field(600, gt=0)  # whole-request limit for non-streaming upstream calls
    workers: int = Field(1, ge=1)
    # KServe V2 over gRPC (gateway/kserve/grpc.py) on this port, beside HTTP; None: off. Every
    # worker binds it (SO_REUSEPORT). Triton's default is 8001.
    grpc_port: int | None = Field(None, ge=1, le=65535)


# --- routing: remote backends and the models they serve -------------------------------------
# The bundled runners are always there as backends `llm`, `vision`, `speech` and `embed`, serving
# their models under their store names (demo-llm, demo-resnet, demo-whisper, demo-embed); this
# section adds remote backends and models, and may tune the bundled backends (kind: runner)::
#
#     routing:
#       caller_header: X-Caller-Id          # names the caller for sticky A/B splits
#       backends:
#         triton:
#           kind: triton
#           url: 10.0.0.5:8001
#           protocol: grpc                  # or http (then the HTTP port)
#           timeout_s: 5
#           retries: 1                      # only when the backend could not be reached
#           breaker: {failure_threshold: 5, window_s: 30, recovery_s: 10, half_open_max_calls: 1}
#         big-vllm: {kind: openai, url: http://10.0.0.6:8000, timeout_s: 120}
#         tfs: {kind: tfserving, url: http://10.0.0.7:8501, format: row}   # TF Serving's REST
#         ts: {kind: torchserve, url: http://10.0.0.8:8080, management_port: 8081}
#         llm: {kind: runner, timeout_s: 300}      # tunes the bundled LLM backend
#       models:
#         resnet-trt: {backend: triton, upstream: resnet50, versions: ["1", "2"]}
#         llama-70b:
#           backend: big-vllm
#           upstream: meta-llama/Llama-3.1-70B-Instruct
#           aliases: [llama]
#           fallback: [demo-llm]            # tried in order when llama-70b's backend fails
#         chat:                             # an A/B split: a caller keeps its variant
#           variants: [{model: llama-70b, weight: 90}, {model: demo-llm, weight: 10}]
#
# The names models, aliases and fallbacks refer to are checked when the gateway builds its router
# (gateway/routing/registry.py), so a typo fails the gateway's start with the path of the bad value.


class BreakerSettings(_Section):
    failure_threshold: int = Field(5, ge=1)  # failures within window_s that open the breaker
    window_s: float = Field(30.0, gt=0)
    recovery_s: float = Field(10.0, gt=0)  # open for this long, then half-open
    half_open_max_calls: int = Field(1, ge=1)  # probes let through; all must succeed to close


class _Backend(_Section):
    timeout_s: float | None = Field(None, gt=0)  # per call; streams: until the first chunk
    # extra attempts when the backend was unreachable: on another endpoint of a pool
    retries: int = Field(1, ge=0, le=5)
    backoff_s: float = Field(0.05, ge=0)  # before retry n: backoff_s * 2**n, jittered
    required: bool = False  # the gateway is ready only when this backend is healthy
    breaker: BreakerSettings = BreakerSettings()


class RunnerBackend(_Backend):
    """A runner of this bundle (llm, vision, speech, embed); BentoML wires its address."""

    kind: Literal["runner"]
    required: bool = True


class _Pool(_Backend):
    """A remote backend's endpoints: exactly one of `url` (one endpoint), `urls` (replicas of
    the same model server) or `discover` (replicas found by DNS), picked per request by
    `balance` (gateway/routing/pick.py)."""

    url: str | None = None
    urls: list[str] = []
    discover: Discover | None = None
    balance: Balance | None = None  # default: prefix (openai), least_load (triton)
    load_every_s: float = Field(1.0, gt=0)  # each endpoint's /metrics (its engine's queue)

    @model_validator(mode="after")
    def _one_source(self) -> Any:
        given = [n for n in ("url", "urls", "discover") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                f"a {self.kind} backend takes exactly one of url, urls or discover "  # type: ignore[attr-defined]
                f"(got {', '.join(given) or 'none'})"
            )
        for url in self.addresses:
            if not re.match(self.ADDRESS, url):
                raise ValueError(f"{url!r} is not an address of this backend: {self.ADDRESS_HINT}")
        return self

    ADDRESS: ClassVar[str] = r"."
    ADDRESS_HINT: ClassVar[str] = ""

    @property
    def addresses(self) -> list[str]:
        """The configured endpoints (none when discovered)."""
        return [self.url] if self.url else list(self.urls)

    @property
    def target(self) -> str:
        """Where it is, for the status page."""
        if self.discover is not None:
            return f"dns:{self.discover.dns}:{self.discover.port}"
        return ", ".join(self.addresses)


class OpenAIBackend(_Pool):
    """Any OpenAI-compatible server: vLLM, SGLang, ..."""

    kind: Literal["openai"]
    timeout_s: float | None = Field(600.0, gt=0)
    api_key: str | None = None
    # Send each request's class as vLLM's `priority` (high -1, normal 0, low 1): only for an
    # engine started with `--scheduling-policy priority` (vLLM refuses it otherwise).
    priority: bool = False
    # Its engines serve LoRA adapters: the gateway reads them from each engine's /v1/models,
    # serves each as a model (`parent`: the engine's base), and sends an adapter's requests to
    # an engine holding it (routing/pick.py adapter_tier).
    lora: bool = False
    ADDRESS: ClassVar[str] = r"^(https?|tcp|unix|file)://"
    ADDRESS_HINT: ClassVar[str] = "a URL (http://host:port)"


class TritonBackend(_Pool):
    """A Triton Inference Server (or any KServe V2 server)."""

    kind: Literal["triton"]
    protocol: Literal["http", "grpc"] = "grpc"
    timeout_s: float | None = Field(60.0, gt=0)
    ADDRESS: ClassVar[str] = r"^[^/\s]+:\d+$"  # host:port, of the gRPC or the HTTP endpoint
    ADDRESS_HINT: ClassVar[str] = "host:port"


# How tensors go to TF Serving's `:predict`: row ({"instances": [...]}, one entry per batch row,
# what its documentation and most of its users send) or columnar ({"inputs": ...}).
PredictFormat = Literal["row", "columnar"]


class TFServingBackend(_Pool):
    """TensorFlow Serving's REST API (or another server of its `:predict` format, such as
    KServe's V1 protocol); its models are tensor models, answered on /v2."""

    kind: Literal["tfserving"]
    format: PredictFormat = "row"
    formats: dict[str, PredictFormat] = {}  # per model (its name at the backend)
    timeout_s: float | None = Field(60.0, gt=0)
    ADDRESS: ClassVar[str] = r"^https?://"
    ADDRESS_HINT: ClassVar[str] = "a URL (http://host:port, TF Serving's REST port)"


class TorchServeBackend(_Pool):
    """A TorchServe: its inference API at each URL, its management API (a model's metadata and
    readiness) on the same host at `management_port`. Its models say their kind: image or
    tensor (ModelSettings.kind)."""

    kind: Literal["torchserve"]
    management_port: int = Field(8081, ge=1, le=65535)  # TorchServe's default
    timeout_s: float | None = Field(60.0, gt=0)
    ADDRESS: ClassVar[str] = r"^https?://[^/\s]+/?$"
    ADDRESS_HINT: ClassVar[str] = "a URL (http://host:port, TorchServe's inference API)"


Backend = Annotated[
    RunnerBackend | OpenAIBackend | TritonBackend | TFServingBackend | TorchServeBackend,
    Field(discriminator="kind"),
]


class Variant(_Section):
    model: str
    weight: int = Field(ge=0)


class ModelSettings(_Section):
    backend: str | None = None  # or `variants`
    upstream: str | None = None  # the model's name at the backend; default: this name
    # Its kind follows from the backend: openai -> llm, triton and tfserving -> tensor, runner ->
    # the runner's; a torchserve backend's models say theirs (image: /v1/images/classifications,
    # tensor: /v2), since what a TorchServe model takes is its handler's business.
    kind: Literal["image", "tensor"] | None = None
    aliases: list[str] = []
    versions: list[str] = []  # versions clients may name on /v2; passed on to the backend
    fallback: list[str] = []  # models tried in order when this one's backend fails
    variants: list[Variant] = []

    @model_validator(mode="after")
    def _backend_or_variants(self) -> ModelSettings:
        if (self.backend is None) == (not self.variants):
            raise ValueError("give either 'backend' or 'variants'")
        if self.variants and (self.upstream or self.versions or self.fallback or self.kind):
            raise ValueError("a split ('variants') takes no upstream, versions, fallback or kind")
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
            if isinstance(backend, RunnerBackend) and name not in BUNDLED:
                raise ValueError(
                    f"backends.{name}: kind 'runner' is for the bundled runners "
                    f"({', '.join(BUNDLED)}), not '{name}'"
                )
            if name in BUNDLED and not isinstance(backend, RunnerBackend):
                raise ValueError(f"backends.{name}: the name is the bundled runner's")
        return self


# --- chains: a model name whose request runs several models in order --------------------------
# (gateway/routing/chains.py; `pipeline` already names the request pipeline)::
#
#     chains:
#       voice-chat:                     # /v1/chat/completions with an input_audio part
#         steps:
#           - {model: demo-whisper, task: transcribe}
#           - {model: demo-llm, task: chat, system: "Answer briefly.", input: "{text}"}
#
# A template names the fields earlier steps produce: `{text}` (a transcript, a chat answer; before
# any step, the request's own text), `{labels}` (a classification's top labels, joined by ", "),
# and `{prompt}` (always the request's own text); `{{` and `}}` are literal braces. A name refers
# to the latest step before it that produces it. The models are checked against the routes when
# the gateway starts (gateway/routing/chains.py), so a typo fails its start.

ChainTask = Literal["transcribe", "classify", "chat"]
# What each task makes available to later steps' templates
CHAIN_FIELDS: dict[str, tuple[str, ...]] = {
    "request": ("text", "prompt"),
    "transcribe": ("text",),
    "classify": ("labels",),
    "chat": ("text",),
}
_TASK_OPTIONS = {"input": "chat", "system": "chat", "max_tokens": "chat", "top_k": "classify",
                 "language": "transcribe"}  # fmt: skip


class ChainStep(_Section):
    model: str = Field(min_length=1)
    task: ChainTask
    input: str | None = None  # chat: the user message; default: the latest step's output
    system: str | None = None  # chat: a system message
    max_tokens: int | None = Field(None, ge=1)  # chat: for a step before the last (the last
    # takes the request's own options)
    top_k: int | None = Field(None, ge=1)  # classify: labels for {labels}; default vision.top_k
    language: str | None = None  # transcribe: the audio's language; default: detected

    @model_validator(mode="after")
    def _options_of_its_task(self) -> ChainStep:
        for option, task in _TASK_OPTIONS.items():
            if getattr(self, option) is not None and self.task != task:
                raise ValueError(f"'{option}' is for a {task} step, not {self.task}")
        return self


class ChainSettings(_Section):
    steps: list[ChainStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _templates_and_answer(self) -> ChainSettings:
        if self.steps[-1].task != "chat":
            raise ValueError(
                "the last step must be a chat step: a chain answers /v1/chat/completions"
            )
        available = set(CHAIN_FIELDS["request"])
        for number, step in enumerate(self.steps, 1):
            for name in template_fields(step.input or ""):
                if name not in available:
                    raise ValueError(
                        f"step {number} ({step.model}): its input names '{{{name}}}', which no "
                        f"earlier step produces (available: {', '.join(sorted(available))})"
                    )
            available |= set(CHAIN_FIELDS[step.task])
        return self


def template_fields(template: str) -> list[str]:
    """The field names a chain step's template uses; a ValueError for anything but plain
    `{name}` fields (no attributes, indexes, conversions or format specs)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"template {template!r}: {exc} (write a literal brace as {{{{ or }}}})"
        ) from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(
                f"template {template!r}: '{{{name}}}' is not a plain field such as {{text}}"
            )
        names.append(name)
    return names


# --- the request pipeline: keys, limits, admission, cache, access log -----------------------


class KeySettings(_Section):
    """One API key, stored as the SHA-256 of the key (`python -m gateway.scope.keys new NAME`)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.@-]{1,64}$")  # what logs, metrics and errors show
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    models: list[str] = []  # allowed model names (globs, "demo-*"); empty: every model
    rpm: int | None = Field(None, ge=1)  # requests per minute
    tpm: int | None = Field(None, ge=1)  # tokens per minute, prompt + completion
    max_parallel: int | None = Field(None, ge=1)  # requests in flight
    # The highest class its requests may ask for (`service_tier`, `X-Priority`): asking higher
    # gets this one. `weight`: its share against other keys of a class in a full queue.
    max_priority: Priority = "normal"
    weight: float = Field(1.0, gt=0)
    admin: bool = False  # may load and unload LoRA adapters at run time (/v1/load_lora_adapter)


class AuthSettings(_Section):
    """No keys anywhere: auth is off. Any key: every /v1 and /v2 request needs one."""

    keys: list[KeySettings] = []
    # More keys from a YAML file (a list of entries like `keys`) named by this environment
    # variable, so a Kubernetes or BentoCloud secret can supply them.
    keys_file_env: str = "BUNDLE_KEYS_FILE"
    protect_ops: bool = False  # /status needs a key too (/livez, /readyz never)


class RateLimitSettings(_Section):
    # memory:// (one gateway worker) or redis://host:port/db (across workers and replicas)
    storage: str = Field("memory://", pattern=r"^(memory|redis|rediss)://")
    fail_open: bool = True  # storage down: let requests through (logged, counted) or 503
    prefix: str = "bundle"  # key prefix in the shared storage


class AdmissionSettings(_Section):
    """Per backend: requests sent at once, requests waiting, and how long one may wait."""

    max_inflight: int = Field(64, ge=1)  # per endpoint of a pool
    max_queue: int = Field(256, ge=0)
    queue_timeout_s: float = Field(30.0, gt=0)
    # fair: classes first (high, normal, low), then keys by tokens served; fifo: arrival order
    policy: Literal["fair", "fifo"] = "fair"
    # of max_inflight, lent on top to high and normal while low holds slots (admission.py)
    reserved_fraction: float = Field(0.5, ge=0, le=1)
    promote_after_s: float = Field(10.0, gt=0)  # a waiter moves up one class this often


class CacheSettings(_Section):
    """An exact-match response cache for deterministic requests, opt-in per model."""

    models: list[str] = []  # model names (globs); empty: no caching
    ttl_s: float = Field(300.0, gt=0)
    max_entries: int = Field(10_000, ge=1)  # memory storage: least recently used evicted
    max_entry_bytes: int = Field(1024 * 1024, ge=1)  # larger responses are not cached
    storage: str = Field("memory://", pattern=r"^(memory|redis|rediss)://")


class LogSettings(_Section):
    access_log: bool = True  # one line per finished /v1 and /v2 request
    format: Literal["json", "text"] = "json"
    request_id_header: str = "X-Request-Id"
    # BentoML's OpenTelemetry spans for the gateway's and the LLM service's requests: one per
    # request and one per response chunk, made even when no trace is sampled (BentoML's default
    # sample rate is 0), at about a quarter of the gateway's CPU on a stream (bench/gateway.py).
    # Off, the gateway's own access log and request ids cover each request; on, with BentoML's
    # `tracing:` configured (exporter_type, sample_rate), they are traced like any BentoML service.
    trace_requests: bool = False

    def bentoml_tracing(self) -> dict[str, Any]:
        """The `tracing` part of a streaming service's BentoML config: with `trace_requests` off,
        BentoML's OpenTelemetry middleware skips every URL (a regex searched in each)."""
        return {} if self.trace_requests else {"tracing": {"excluded_urls": [".*"]}}


class Settings(_Section):
    llm: LLMSettings = LLMSettings()
    vision: VisionSettings = VisionSettings()
    speech: SpeechSettings = SpeechSettings()
    embed: EmbedSettings = EmbedSettings()
    limits: LimitSettings = LimitSettings()
    gateway: GatewaySettings = GatewaySettings()
    drain: DrainSettings = DrainSettings()
    routing: RoutingSettings = RoutingSettings()
    auth: AuthSettings = AuthSettings()
    ratelimit: RateLimitSettings = RateLimitSettings()
    # keyed by backend name (llm, vision, speech, or a remote backend); others get the default
    admission: dict[str, AdmissionSettings] = {}
    cache: CacheSettings = CacheSettings()
    log: LogSettings = LogSettings()
    chains: dict[str, ChainSettings] = {}
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def bundled_models(self) -> tuple[str, str, str, str]:
        """The names the bundled LLM, image, speech and embedding models are served under."""
        llm = self.llm.served_name or model_name(self.llm.model)
        return (
            llm,
            model_name(self.vision.model),
            model_name(self.speech.model),
            model_name(self.embed.model),
        )


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
