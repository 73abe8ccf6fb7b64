"""Chains of models: one public model name whose request runs several routed models in order.

    chains = Chains.from_settings(settings.chains, router.registry)   # checked at start
    chain = chains.get("voice-chat")
    ran = await chain.complete(router, ctx, ChainInput(audio=wav), body)   # a chat completion
    opened = await chain.open_stream(router, ctx, ChainInput(audio=wav), body)  # the last step's

Every step is a call through the router, as if the client had made it: the step's model is
resolved for the request's key (its allow-list applies to every step), and the step goes through
that model's breaker, fallbacks, admission and response cache, with the request's id. A step's
failure fails the chain with the same status and a message that names the step.

Steps run as soon as the steps their input names have finished: transcribe and classify steps
read the request's own audio or image and depend on nothing, so such steps of one chain run in
parallel (an ensemble: `[transcribe, classify, chat "{text} / {labels}"]` runs the first two at
once). A chat step depends on the latest earlier step producing each field its template names.
The last step, the answer, waits for every other one, so the `chain` field it carries is whole.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import string
import time
from collections.abc import Awaitable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

from gateway.adapters.base import OpenedStream, Transcript
from gateway.errors import GatewayError
from gateway.routing.registry import Kind, Registry, Route
from gateway.routing.router import Router
from gateway.scope.context import RequestContext
from gateway.scope.keys import check_model
from settings import CHAIN_FIELDS, ChainSettings, ChainStep, SettingsError, template_fields

KINDS: dict[str, Kind] = {"transcribe": "speech", "classify": "image", "chat": "llm"}
MEDIA = {"transcribe": "audio", "classify": "image"}  # what a step reads from the request
REQUEST = 0  # the step number of the request itself, as a producer of fields

CHAIN_SECONDS = Histogram(
    "gateway_chain_duration_seconds",
    "Chain requests, from their first step to their answer's end, by chain and outcome.",
    ["chain", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
STEP_SECONDS = Histogram(
    "gateway_chain_step_duration_seconds",
    "Each step of a chain, by chain, step number and model (a streamed last step: to its end).",
    ["chain", "step", "model"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STEP_ERRORS = Counter(
    "gateway_chain_step_errors",
    "Failed steps of chains, by chain, step number, model and HTTP status.",
    ["chain", "step", "model", "status"],
)


class StepFailed(GatewayError):
    """A step's error, with its status, type, code and headers, and a message naming the step."""

    def __init__(self, chain: str, step: Step, cause: GatewayError) -> None:
        super().__init__(
            f"Chain '{chain}' failed at step {step.number} ({step.settings.task} on "
            f"'{step.settings.model}'): {cause.message}",
            param=cause.param,
            code=cause.code,
            headers=cause.headers,
            status=cause.status,
        )
        self.type = cause.type


@dataclass(frozen=True)
class ChainInput:
    """What the request gives a chain: its text, and the audio or image its steps read."""

    text: str = ""
    audio: bytes | None = None
    image: bytes | None = None


@dataclass(frozen=True)
class Step:
    number: int  # 1-based, as errors, logs and metrics name it
    settings: ChainStep
    template: str  # the chat input, its default filled in ("" for other tasks)
    after: frozenset[int]  # the steps it waits for


@dataclass
class StepOutcome:
    step: Step
    fields: dict[str, str]  # what later templates may name
    output: str | None  # None: the streamed answer, which is the stream itself
    extra: dict[str, Any] = field(default_factory=dict)  # a classification's predictions
    record: dict[str, Any] = field(default_factory=dict)  # for the access log

    def public(self) -> dict[str, Any]:
        """The step as the answer's `chain` field lists it."""
        s = self.step.settings
        return {"step": self.step.number, "model": s.model, "task": s.task,
                "output": self.output, **self.extra}  # fmt: skip


def fill(template: str, fields: Mapping[str, str]) -> str:
    """The template with each `{name}` replaced by its field (checked at load: all are there)."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            parts.append(fields[name])
    return "".join(parts)


class Chain:
    def __init__(self, name: str, settings: ChainSettings) -> None:
        self.name = name
        self.steps = _plan(settings.steps)
        self.media = {MEDIA[s.settings.task] for s in self.steps if s.settings.task in MEDIA}

    @property
    def models(self) -> list[str]:
        return [s.settings.model for s in self.steps]

    async def complete(
        self, router: Router, ctx: RequestContext, given: ChainInput, body: dict[str, Any]
    ) -> dict[str, Any]:
        """The last step's chat completion, with a `chain` field listing every step."""
        started = time.perf_counter()
        try:
            routes = self._resolve(router, ctx)
            done = await self._before_last(router, ctx, routes, given)
            last = await self._step(router, ctx, routes, given, done, self.steps[-1], body)
        except GatewayError:
            CHAIN_SECONDS.labels(self.name, "error").observe(time.perf_counter() - started)
            raise
        CHAIN_SECONDS.labels(self.name, "ok").observe(time.perf_counter() - started)
        answer: dict[str, Any] = last.extra.pop("completion")
        return {**answer, "chain": [o.public() for o in [*done.values(), last]]}

    async def open_stream(
        self, router: Router, ctx: RequestContext, given: ChainInput, body: dict[str, Any]
    ) -> OpenedStream:
        """The last step's stream once its first chunk has come, that chunk carrying the
        `chain` field (the last step's output is the stream itself)."""
        started = time.perf_counter()
        try:
            routes = self._resolve(router, ctx)
            done = await self._before_last(router, ctx, routes, given)
            step, step_started = self.steps[-1], time.perf_counter()
            opened, record = await self._open_last(router, ctx, routes, given, done, body)
        except GatewayError:
            CHAIN_SECONDS.labels(self.name, "error").observe(time.perf_counter() - started)
            raise
        last = StepOutcome(step, {}, None)
        opened.first = _with_chain(opened.first, [o.public() for o in [*done.values(), last]])
        earlier = (ctx.prompt_tokens or 0, ctx.completion_tokens or 0)
        ctx.prompt_tokens = ctx.completion_tokens = None  # the stream's usage is counted apart

        def closed() -> None:
            now = time.perf_counter()
            record["ms"] = round((now - step_started) * 1000, 3)  # until the stream's end
            STEP_SECONDS.labels(self.name, str(step.number), step.settings.model).observe(
                now - step_started
            )
            CHAIN_SECONDS.labels(self.name, "ok").observe(now - started)
            ctx.prompt_tokens = earlier[0] + (ctx.prompt_tokens or 0)
            ctx.completion_tokens = earlier[1] + (ctx.completion_tokens or 0)

        return opened.on_close(closed)

    def _resolve(self, router: Router, ctx: RequestContext) -> dict[int, Route]:
        """Every step's route for the request's key and caller, before any step runs: a model
        the key may not use is a 403 naming it and the step, and no work is done."""
        check_model(ctx.key, self.name)
        routes = {}
        for step in self.steps:
            try:
                routes[step.number] = router.resolve(
                    step.settings.model, (KINDS[step.settings.task],), _scope(ctx)
                )
            except GatewayError as err:
                raise StepFailed(self.name, step, err) from None
        ctx.model = self.name
        return routes

    async def _before_last(
        self, router: Router, ctx: RequestContext, routes: Mapping[int, Route], given: ChainInput
    ) -> dict[int, StepOutcome]:
        """Every step but the last, each wave of steps whose inputs are ready at once."""
        done: dict[int, StepOutcome] = {}
        pending = list(self.steps[:-1])
        while pending:
            wave = [s for s in pending if s.after <= done.keys()]
            outcomes = await _all(
                self._step(router, ctx, routes, given, done, s, None) for s in wave
            )
            done.update((o.step.number, o) for o in outcomes)
            pending = [s for s in pending if s not in wave]
        return dict(sorted(done.items()))

    async def _step(
        self,
        router: Router,
        ctx: RequestContext,
        routes: Mapping[int, Route],
        given: ChainInput,
        done: Mapping[int, StepOutcome],
        step: Step,
        body: dict[str, Any] | None,
    ) -> StepOutcome:
        """One step, timed, counted and logged; `body` is the request's, for the answer step."""
        route, scope = routes[step.number], _scope(ctx)
        started = time.perf_counter()
        try:
            outcome = await self._call(router, scope, route, given, done, step, body)
        except GatewayError as err:
            STEP_ERRORS.labels(self.name, str(step.number), route.name, str(err.status)).inc()
            _log_step(ctx, step, scope, started, status=err.status)
            raise StepFailed(self.name, step, err) from None
        STEP_SECONDS.labels(self.name, str(step.number), route.name).observe(
            time.perf_counter() - started
        )
        outcome.record = _log_step(ctx, step, scope, started, status=200)
        _add_usage(ctx, scope)
        ctx.backend = scope.backend
        return outcome

    async def _call(
        self,
        router: Router,
        scope: RequestContext,
        route: Route,
        given: ChainInput,
        done: Mapping[int, StepOutcome],
        step: Step,
        body: dict[str, Any] | None,
    ) -> StepOutcome:
        s = step.settings
        if s.task == "transcribe":
            result = await router.predict(
                route, "transcribe", given.audio, scope, language=s.language, temperature=0.0
            )
            transcript: Transcript = result.body
            text = transcript.text.strip()
            return StepOutcome(step, {"text": text}, text)
        if s.task == "classify":
            result = await router.predict(route, "classify", given.image, scope, top_k=s.top_k)
            labels = ", ".join(p.label for p in result.body)
            predictions = [p.model_dump() for p in result.body]
            return StepOutcome(step, {"labels": labels}, labels, {"predictions": predictions})
        chat = self._chat_body(step, given, done, body)
        result = await router.predict(route, "chat", chat, scope)
        scope.count_usage(result.body.get("usage"))
        text = _answer_text(result.body)
        extra = {"completion": result.body} if body is not None else {}
        return StepOutcome(step, {"text": text}, text, extra)

    async def _open_last(
        self,
        router: Router,
        ctx: RequestContext,
        routes: Mapping[int, Route],
        given: ChainInput,
        done: Mapping[int, StepOutcome],
        body: dict[str, Any],
    ) -> tuple[OpenedStream, dict[str, Any]]:
        step = self.steps[-1]
        route, scope = routes[step.number], _scope(ctx)
        started = time.perf_counter()
        chat = self._chat_body(step, given, done, body)
        try:
            opened = await router.open_stream(route, "chat", chat, scope)
        except GatewayError as err:
            STEP_ERRORS.labels(self.name, str(step.number), route.name, str(err.status)).inc()
            _log_step(ctx, step, scope, started, status=err.status)
            raise StepFailed(self.name, step, err) from None
        ctx.backend = scope.backend
        return opened, _log_step(ctx, step, scope, started, status=200)

    def _chat_body(
        self,
        step: Step,
        given: ChainInput,
        done: Mapping[int, StepOutcome],
        body: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The step's chat request: its system message and filled template as the user's; the
        answer step takes the request's own options (stream, max_tokens, temperature, ...)."""
        fields = {"text": given.text, "prompt": given.text}
        for number, outcome in sorted(done.items()):
            if number < step.number:
                fields.update(outcome.fields)
        s = step.settings
        messages = [{"role": "system", "content": s.system}] if s.system else []
        messages.append({"role": "user", "content": fill(step.template, fields)})
        options = {k: v for k, v in (body or {}).items() if k not in ("model", "messages")}
        if s.max_tokens is not None and body is None:
            options["max_tokens"] = s.max_tokens
        return {**options, "model": s.model, "messages": messages}


class Chains:
    """The configured chains by name, checked against the router's registry."""

    def __init__(self, chains: Iterable[Chain] = ()) -> None:
        self._chains = {c.name: c for c in chains}

    @classmethod
    def from_settings(cls, chains: Mapping[str, ChainSettings], registry: Registry) -> Chains:
        """A SettingsError, naming the chain and step, for a name that is taken, a model that
        does not exist, or a task its model's kind cannot do."""
        for name, chain in chains.items():
            if registry.kind_of(name) is not None:
                raise SettingsError(f"chains.{name}: the name is a model's already")
            for number, step in enumerate(chain.steps, 1):
                _check_step(f"chains.{name}.steps[{number}]", step, registry)
        return cls(Chain(name, chain) for name, chain in chains.items())

    def get(self, name: object) -> Chain | None:
        return self._chains.get(name) if isinstance(name, str) else None

    def __iter__(self) -> Iterator[Chain]:
        return iter(self._chains.values())


def _check_step(where: str, step: ChainStep, registry: Registry) -> None:
    kind = registry.kind_of(step.model)
    if kind is None:
        known = ", ".join(registry.names())
        raise SettingsError(f"{where}: '{step.model}' is not a model (models: {known})")
    if kind != KINDS[step.task]:
        able = ", ".join(registry.names((KINDS[step.task],))) or "none"
        raise SettingsError(
            f"{where}: '{step.model}' is {kind} model and cannot {step.task} "
            f"(models that can: {able})"
        )


def _plan(steps: list[ChainStep]) -> tuple[Step, ...]:
    """Each step with its template's default and the earlier steps it waits for."""
    planned: list[Step] = []
    producer = dict.fromkeys(CHAIN_FIELDS["request"], REQUEST)  # field -> latest step making it
    last = len(steps)
    for number, s in enumerate(steps, 1):
        template = ""
        if s.task == "chat":
            previous = steps[number - 2].task if number > 1 else "request"
            template = s.input if s.input is not None else f"{{{CHAIN_FIELDS[previous][0]}}}"
        needs = {producer[name] for name in template_fields(template)} - {REQUEST}
        after = frozenset(range(1, last)) if number == last else frozenset(needs)
        planned.append(Step(number, s, template, after))
        producer.update(dict.fromkeys(CHAIN_FIELDS[s.task], number))
    return tuple(planned)


def _scope(ctx: RequestContext) -> RequestContext:
    """A step's own view of the request: the same id, key, caller and class, with its own
    model, backend, endpoint, cache verdict and tokens for the router to record."""
    return dataclasses.replace(ctx, prompt_tokens=None, completion_tokens=None, cache=None)


def _log_step(
    ctx: RequestContext, step: Step, scope: RequestContext, started: float, *, status: int
) -> dict[str, Any]:
    record = {"step": step.number, "model": step.settings.model, "backend": scope.backend,
              "status": status, "ms": round((time.perf_counter() - started) * 1000, 3)}  # fmt: skip
    if scope.cache:
        record["cache"] = scope.cache
    ctx.steps = sorted([*(ctx.steps or []), record], key=lambda r: r["step"])
    return record


def _add_usage(ctx: RequestContext, scope: RequestContext) -> None:
    if scope.prompt_tokens is not None or scope.completion_tokens is not None:
        ctx.prompt_tokens = (ctx.prompt_tokens or 0) + (scope.prompt_tokens or 0)
        ctx.completion_tokens = (ctx.completion_tokens or 0) + (scope.completion_tokens or 0)


def _answer_text(completion: Any) -> str:
    try:
        return str(completion["choices"][0]["message"]["content"] or "").strip()
    except (KeyError, IndexError, TypeError):
        return ""


async def _all(calls: Iterable[Awaitable[StepOutcome]]) -> list[StepOutcome]:
    """Every call at once; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _with_chain(first: bytes | None, chain: list[dict[str, Any]]) -> bytes | None:
    """The stream's first event with the `chain` field added (engines write whole events)."""
    if first is None or not first.startswith(b"data: {"):
        return first
    end = first.find(b"\n\n")
    if end < 0:
        return first
    try:
        event = json.loads(first[6:end])
    except ValueError:
        return first
    event["chain"] = chain
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + first[end:]
