"""Run-time LoRA updates: POST /v1/load_lora_adapter and /v1/unload_lora_adapter, in vLLM's own
request shape (`lora_name`, `lora_path`), for API keys marked `admin: true`.

    POST /v1/load_lora_adapter {"lora_name": "sql2", "lora_path": "demo-llm-sql2"}
    POST /v1/unload_lora_adapter {"lora_name": "sql2"}

`lora_path` is a model-store tag (checked against the bundled base model first, then loaded
from the store's directory) or a directory on the engines' own disk. `model` (optional, not in
vLLM's shape) names the base model whose backend loads it; default: the bundled LLM. The adapter
is loaded on every endpoint of that backend's pool, and the answer comes when all have it; when
one refuses, those that took it unload it again and the answer is a 400 with the engine's reason.

Other gateway workers (and replicas) learn of it from the engines' own /v1/models, which each
pool with LoRA reads on every health check (routing/pool.py); the supervisor of the bundled
engine reloads it after a restart (runners/supervisor.py AdapterKeeper). Without API keys
these routes are off (404): only an admin key may change what the engines serve.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from contract.names import LLM
from gateway.api.common import context, read_json_object, router_of
from gateway.errors import InvalidRequest, PermissionDenied
from gateway.routing.backend import Backend
from gateway.routing.pool import Endpoint
from gateway.routing.registry import Route as ModelRoute
from models.store import StoredModel
from settings import Settings

LOAD, UNLOAD = "/v1/load_lora_adapter", "/v1/unload_lora_adapter"
T = TypeVar("T", bound=BaseModel)


class LoadAdapter(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:/@-]{1,128}$")
    lora_path: str = Field(min_length=1)
    model: str | None = None  # the base model whose backend loads it
    load_inplace: bool = False


class UnloadAdapter(BaseModel):
    model_config = ConfigDict(extra="ignore")

    lora_name: str = Field(min_length=1)
    model: str | None = None


async def load_adapter(request: Request) -> Response:
    body = await _admin_body(request, LoadAdapter)
    settings: Settings = request.app.state.settings
    base, backend = _lora_backend(request, body.model)
    _not_configured(settings, body.lora_name, "load")
    clash = router_of(request).registry.get(body.lora_name)
    if clash is not None and clash.parent is None:
        raise InvalidRequest(
            f"'{body.lora_name}' is already a model of this gateway; name the adapter otherwise.",
            param="lora_name",
        )
    path = await asyncio.to_thread(engine_path, settings, backend.name, body.lora_path)
    message = {"lora_name": body.lora_name, "lora_path": path, "load_inplace": body.load_inplace}
    endpoints = backend.pool.live()
    results = await asyncio.gather(*(_admin(e, LOAD, message) for e in endpoints))
    took = [e for e, (status, _) in zip(endpoints, results, strict=True) if status == 200]
    refused = [(e, text) for e, (status, text) in zip(endpoints, results, strict=True)
               if status != 200]  # fmt: skip
    if refused:
        unload = {"lora_name": body.lora_name}
        await asyncio.gather(*(_admin(e, UNLOAD, unload) for e in took))
        endpoint, reason = refused[0]
        raise InvalidRequest(
            f"The LoRA adapter '{body.lora_name}' ({body.lora_path}) did not load on "
            f"{backend.name} at {endpoint.key}: {reason}",
            param="lora_path",
            code="lora_load_failed",
        )
    for endpoint in took:
        backend.pool.loaded(endpoint, body.lora_name, base.upstream_model)
    return PlainTextResponse(
        f"Success: LoRA adapter '{body.lora_name}' added successfully on {len(took)} "
        f"endpoint(s) of {backend.name}."
    )


async def unload_adapter(request: Request) -> Response:
    body = await _admin_body(request, UnloadAdapter)
    settings: Settings = request.app.state.settings
    _, backend = _lora_backend(request, body.model)
    _not_configured(settings, body.lora_name, "unload")
    holding = [e for e in backend.pool.live() if body.lora_name in e.adapters]
    if not holding:
        raise InvalidRequest(
            f"The LoRA adapter '{body.lora_name}' is not loaded on {backend.name}.",
            param="lora_name",
            code="model_not_found",
            status=404,
        )
    message = {"lora_name": body.lora_name}
    results = await asyncio.gather(*(_admin(e, UNLOAD, message) for e in holding))
    for endpoint, (status, _) in zip(holding, results, strict=True):
        if status in (200, 404):  # 404: the engine had already dropped it
            backend.pool.loaded(endpoint, body.lora_name, "")
    failed = [(e, t) for e, (s, t) in zip(holding, results, strict=True) if s not in (200, 404)]
    if failed:
        endpoint, reason = failed[0]
        raise InvalidRequest(
            f"Unloading '{body.lora_name}' failed on {backend.name} at {endpoint.key}: {reason}",
            param="lora_name",
        )
    return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")


async def _admin_body(request: Request, schema: type[T]) -> T:
    """The body, once the caller is known to hold an admin key (404 without auth: off)."""
    ctx = context(request)
    if ctx.key is None:
        raise InvalidRequest(
            f"No route {request.url.path}: run-time LoRA updates need API keys "
            "(auth.keys, one with admin: true).",
            status=404,
            code="not_found",
        )
    if not ctx.key.admin:
        raise PermissionDenied(
            f"The API key '{ctx.key.name}' may not load or unload LoRA adapters "
            "(a key with admin: true may).",
            param=None,
        )
    body = await read_json_object(request, limit=1024 * 1024)
    ctx.model = str(body.get("lora_name") or "") or None  # the access log's and metrics' model
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"{field}: {first['msg']}", param=field or None) from None


def _lora_backend(request: Request, model: str | None) -> tuple[ModelRoute, Backend]:
    """The base model's route and its backend, which must serve LoRA adapters."""
    router, settings = router_of(request), request.app.state.settings
    name = model or settings.bundled_models()[0]
    route = router.registry.get(name)
    if route is None or route.kind != "llm" or route.parent is not None:
        raise InvalidRequest(f"'{name}' is not a base LLM of this gateway.", param="model")
    backend = router.backends[route.backend]
    if not backend.pool.lora:
        raise InvalidRequest(
            f"The backend '{backend.name}' of '{name}' serves no LoRA adapters "
            "(llm.lora for the bundled engine, lora: true for a remote one).",
            param="model",
        )
    lora = settings.llm.lora
    if route.backend == LLM and not (lora and lora.runtime_updates):
        raise InvalidRequest(
            "The bundled engine takes no adapters at run time: set llm.lora.runtime_updates.",
            param="model",
        )
    return route, backend


def _not_configured(settings: Settings, name: str, what: str) -> None:
    if name in settings.llm.adapters():
        raise InvalidRequest(
            f"'{name}' is an adapter of llm.lora.adapters, served from the start; "
            f"it cannot be {what}ed at run time.",
            param="lora_name",
        )


def engine_path(settings: Settings, backend: str, lora_path: str) -> str:
    """The directory the engines load `lora_path` from: a model-store tag's (checked against
    the bundled base model and max_rank, AdapterMismatch as a 400), else `lora_path` itself."""
    from models import store
    from models.lora import AdapterMismatch, check_adapter, is_adapter

    stored = _stored(lora_path)
    if stored is not None and not is_adapter(stored):
        raise InvalidRequest(f"{stored.tag} is a {stored.format} model, not a LoRA adapter.",
                             param="lora_path")  # fmt: skip
    local = stored.path if stored is not None else Path(lora_path)
    if backend == LLM and local.is_dir():  # the bundled engine's disk is this host's
        lora = settings.llm.lora
        try:
            base = store.resolve(settings.llm.model).path
            check_adapter(local, base, max_rank=lora.max_rank if lora else 16)
        except AdapterMismatch as exc:
            raise InvalidRequest(str(exc), param="lora_path", code="lora_load_failed") from None
    return str(local)


def _stored(tag: str) -> StoredModel | None:
    from models import store

    if tag.startswith(("/", ".")):
        return None
    try:
        return store.resolve(tag)
    except (store.ModelNotFoundError, ValueError):
        return None


async def _admin(endpoint: Endpoint, path: str, body: Mapping[str, object]) -> tuple[int, str]:
    call = getattr(endpoint.adapter, "lora_admin", None)
    if call is None:
        return 400, "this endpoint is not an OpenAI-compatible engine"
    try:
        status, text = await call(path, body)
    except Exception as exc:  # unreachable: a refusal like any other, named
        return 503, str(exc)
    return int(status), str(text)


routes = [
    Route(LOAD, load_adapter, methods=["POST"]),
    Route(UNLOAD, unload_adapter, methods=["POST"]),
]
