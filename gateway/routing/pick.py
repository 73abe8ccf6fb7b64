"""Picking one endpoint of a pool for one request: policy objects that own their state.

    picker = make_picker("prefix")
    choice = picker.pick(candidates, request)    # Choice(endpoint, reason, uncached_blocks)
    picker.sent(choice, request)                 # record what the chosen endpoint now holds

A candidate is anything with the `Load` fields: the gateway's own requests in flight to it
(always fresh), the requests others (other gateway workers and replicas, other clients) have on
the engine, read from its /metrics (its running + waiting less this worker's in flight then;
seconds old at most), and the prompt blocks the gateway sent it that the engine has not started
answering yet.

- `round_robin`: each eligible endpoint in turn.
- `least_load`: fewest requests on the engine (this worker's in flight + others'); ties at random.
  (In flight plus the engine's raw waiting count would count this worker's queued requests twice,
  once of them stale.)
- `prefix`: approximate prefix-cache affinity, as the Gateway API Inference Extension's prefix
  plugin and SGLang's cache-aware router do. The prompt (chat messages in order, or the
  completion prompt) is hashed in blocks of `BLOCK_CHARS` characters as a hash chain; each
  endpoint has an LRU of the block hashes sent to it, and its match is the number of leading
  blocks it holds. The choice minimises a cost in prompt blocks, as NVIDIA Dynamo's KV router
  does: the blocks this endpoint would have to prefill, plus the blocks it has been sent and not
  yet started answering (its prefill queue, as this gateway knows it), plus `LOAD_BLOCKS` per
  request it is running or queueing. So a warm replica wins while its queue is short, and
  affinity never piles onto a hot one: once its queue is longer than the prompt, a cold one wins.
- `session`: the same endpoint for the same caller (`routing.caller_header`, else the body's
  `user`), by consistent hashing with bounded load (an endpoint past `SESSION_SLACK` times the
  mean load passes the caller on to the next one on the ring); a Responses API request with
  `previous_response_id` goes where that response was made (vLLM keeps it in one engine's
  memory). Without either it picks as `prefix` does.

Hashing is in large blocks, not per token: a 32 KB prompt is 64 blocks, a few microseconds to
hash, and the match walks one index for all endpoints at once (bench/request_cost.py, pick rows).
Each gateway worker keeps its own picture; what that costs is measured by bench/fleet.py.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import random
import re
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from settings import Balance

BALANCES: tuple[Balance, ...] = ("round_robin", "least_load", "prefix", "session")

BLOCK_CHARS = 512  # ~128 tokens of English text: vLLM's CPU KV block is 128 tokens
LRU_BLOCKS = 16_384  # per endpoint: 8 MB of prompt text, far more than one engine's KV cache
LOAD_BLOCKS = 1.0  # what one request running or queued on an endpoint costs, in prompt blocks
SESSION_SLACK = 1.25  # bounded-load consistent hashing: at most this times the mean load
RING_POINTS = 64  # virtual points per endpoint on the session ring
RESPONSES_KEPT = 10_000  # previous_response_id -> endpoint, most recent


class Load(Protocol):
    key: str  # the endpoint's address
    inflight: int  # the gateway's requests to it now (this worker's)
    others: int  # requests on the engine that are not this worker's, from its /metrics
    pending_blocks: float  # prompt blocks sent and not yet answered with a first byte


@dataclass(frozen=True)
class Choice:
    endpoint: Any  # one of the candidates
    reason: str  # prefix, least_load, session, round_robin (metrics: gateway_pick_total)
    uncached_blocks: float = 0.0  # the prompt blocks it likely has to prefill


class Picker(Protocol):
    def pick(self, candidates: Sequence[Load], request: Any) -> Choice: ...

    def sent(self, choice: Choice, request: Any) -> None: ...

    def answered(self, endpoint: Load, request: Any, body: Any) -> None: ...

    def forget(self, key: str) -> None: ...


def make_picker(balance: Balance, *, rng: random.Random | None = None) -> Picker:
    rng = rng or random.Random()
    if balance == "round_robin":
        return RoundRobin()
    if balance == "least_load":
        return LeastLoad(rng)
    if balance == "prefix":
        return PrefixAffinity(rng)
    if balance == "session":
        return SessionAffinity(PrefixAffinity(rng))
    raise ValueError(f"unknown balance {balance!r}: one of {', '.join(BALANCES)}")


class _Stateless:
    def sent(self, choice: Choice, request: Any) -> None:
        pass

    def answered(self, endpoint: Load, request: Any, body: Any) -> None:
        pass

    def forget(self, key: str) -> None:
        pass


class RoundRobin(_Stateless):
    def __init__(self) -> None:
        self._turn = itertools.count()

    def pick(self, candidates: Sequence[Load], request: Any) -> Choice:
        return Choice(candidates[next(self._turn) % len(candidates)], "round_robin")


class LeastLoad(_Stateless):
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def pick(self, candidates: Sequence[Load], request: Any) -> Choice:
        return Choice(least_loaded(candidates, self._rng), "least_load")


def load_of(endpoint: Load) -> int:
    return endpoint.inflight + endpoint.others


def least_loaded(candidates: Sequence[Load], rng: random.Random) -> Load:
    low = min(load_of(c) for c in candidates)
    return rng.choice([c for c in candidates if load_of(c) == low])


# -- prefix affinity ---------------------------------------------------------------------------


def prompt_text(request: Any) -> str:
    """What an engine's prefix cache keys on, as text in order: the chat messages (role and
    content), or the completion prompt, or the Responses API's instructions and input."""
    body = getattr(request, "payload", request)
    if not isinstance(body, dict):
        return ""
    if "messages" in body:
        parts = []
        for message in body["messages"] or ():
            if isinstance(message, dict):
                content = message.get("content")
                text = content if isinstance(content, str) else json.dumps(content)
                parts.append(f"{message.get('role')}\x1f{text}\x1e")
        return "".join(parts)
    prompt = body.get("prompt", body.get("input"))
    text = prompt if isinstance(prompt, str) else json.dumps(prompt)
    instructions = body.get("instructions")
    return f"{instructions}\x1e{text}" if isinstance(instructions, str) else text


def block_chain(text: str, block: int = BLOCK_CHARS) -> list[int]:
    """Hashes of the whole blocks of `text`, each chained to the one before (a block's hash
    stands for the whole prefix up to it). A trailing partial block is not cached by an
    engine either, so it is left out."""
    chain, previous = [], 0
    for start in range(0, len(text) - block + 1, block):
        previous = hash((previous, text[start : start + block]))
        chain.append(previous)
    return chain


class PrefixIndex:
    """Which endpoints were sent which prompt blocks: one LRU of block hashes per endpoint, and
    one index from a block hash to the endpoints holding it, so a match walks the chain once."""

    def __init__(self, capacity: int = LRU_BLOCKS) -> None:
        self.capacity = capacity
        self._lru: dict[str, OrderedDict[int, None]] = {}
        self._owners: dict[int, set[str]] = {}

    def matches(self, chain: Sequence[int], keys: Iterable[str]) -> dict[str, int]:
        """For each endpoint key, how many leading blocks of `chain` it holds."""
        matched = dict.fromkeys(keys, 0)
        alive = set(matched)
        for depth, block in enumerate(chain, 1):
            owners = self._owners.get(block)
            if not owners:
                break
            alive &= owners
            if not alive:
                break
            for key in alive:
                matched[key] = depth
        return matched

    def add(self, key: str, chain: Sequence[int]) -> None:
        lru = self._lru.setdefault(key, OrderedDict())
        for block in chain:
            if block in lru:
                lru.move_to_end(block)
                continue
            lru[block] = None
            self._owners.setdefault(block, set()).add(key)
        while len(lru) > self.capacity:
            old, _ = lru.popitem(last=False)
            self._drop(old, key)

    def forget(self, key: str) -> None:
        for block in self._lru.pop(key, ()):
            self._drop(block, key)

    def _drop(self, block: int, key: str) -> None:
        owners = self._owners.get(block)
        if owners is not None:
            owners.discard(key)
            if not owners:
                del self._owners[block]


class PrefixAffinity:
    def __init__(self, rng: random.Random, *, index: PrefixIndex | None = None) -> None:
        self._rng = rng
        self.index = index or PrefixIndex()
        self._last: tuple[Any, list[int]] = (None, [])  # the chain of the request just picked

    def chain(self, request: Any) -> list[int]:
        """The request's block chain, hashed once for its `pick` and its `sent`."""
        if self._last[0] is not request:
            self._last = (request, block_chain(prompt_text(request)))
        return self._last[1]

    def pick(self, candidates: Sequence[Load], request: Any) -> Choice:
        chain = self.chain(request)
        if not chain:
            return Choice(least_loaded(candidates, self._rng), "least_load")
        matched = self.index.matches(chain, (c.key for c in candidates))
        best: list[Load] = []
        best_cost = float("inf")
        for c in candidates:
            cost = len(chain) - matched[c.key] + c.pending_blocks + LOAD_BLOCKS * load_of(c)
            if cost < best_cost:
                best, best_cost = [c], cost
            elif cost == best_cost:
                best.append(c)
        chosen = best[0] if len(best) == 1 else self._rng.choice(best)
        hit = matched[chosen.key]
        return Choice(chosen, "prefix" if hit else "least_load", float(len(chain) - hit))

    def sent(self, choice: Choice, request: Any) -> None:
        chain = self.chain(request)
        self._last = (None, [])
        if chain:
            self.index.add(choice.endpoint.key, chain)

    def answered(self, endpoint: Load, request: Any, body: Any) -> None:
        pass

    def forget(self, key: str) -> None:
        self.index.forget(key)


# -- session affinity --------------------------------------------------------------------------


def session_key(request: Any) -> str | None:
    """The request's caller (`routing.caller_header`, on its context), else the body's `user`."""
    caller = getattr(getattr(request, "context", None), "caller", None)
    if isinstance(caller, str) and caller:
        return caller
    body = getattr(request, "payload", None)
    user = body.get("user") if isinstance(body, dict) else None
    return user if isinstance(user, str) and user else None


def _point(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class SessionAffinity:
    def __init__(self, fallback: PrefixAffinity) -> None:
        self.fallback = fallback
        self._ring: list[tuple[int, str]] = []
        self._ring_keys: frozenset[str] = frozenset()
        self._responses: OrderedDict[str, str] = OrderedDict()

    def pick(self, candidates: Sequence[Load], request: Any) -> Choice:
        by_key = {c.key: c for c in candidates}
        previous = _previous_response(request)
        if previous is not None and self._responses.get(previous) in by_key:
            return Choice(by_key[self._responses[previous]], "session")
        session = session_key(request)
        if session is None:
            return self.fallback.pick(candidates, request)
        self._build_ring(by_key)
        mean = (sum(load_of(c) for c in candidates) + 1) / len(candidates)
        bound = max(1.0, SESSION_SLACK * mean)
        start = bisect.bisect(self._ring, (_point(session), ""))
        for i in range(len(self._ring)):
            _, key = self._ring[(start + i) % len(self._ring)]
            if load_of(by_key[key]) < bound:
                return Choice(by_key[key], "session")
        return Choice(least_loaded(candidates, self.fallback._rng), "least_load")

    def sent(self, choice: Choice, request: Any) -> None:
        self.fallback.sent(choice, request)

    def answered(self, endpoint: Load, request: Any, body: Any) -> None:
        """Remember which endpoint made a Responses API response (its id in the answer)."""
        if getattr(request, "task", None) != "responses" or not isinstance(body, dict):
            return
        response_id = body.get("id")
        if isinstance(response_id, str):
            self._responses[response_id] = endpoint.key
            self._responses.move_to_end(response_id)
            while len(self._responses) > RESPONSES_KEPT:
                self._responses.popitem(last=False)

    def forget(self, key: str) -> None:
        self.fallback.forget(key)

    def _build_ring(self, by_key: dict[str, Load]) -> None:
        keys = frozenset(by_key)
        if keys != self._ring_keys:
            points = [(_point(f"{k}#{i}"), k) for k in keys for i in range(RING_POINTS)]
            self._ring, self._ring_keys = sorted(points), keys


def _previous_response(request: Any) -> str | None:
    body = getattr(request, "payload", None)
    previous = body.get("previous_response_id") if isinstance(body, dict) else None
    return previous if isinstance(previous, str) else None


def response_id_in(chunk: bytes) -> str | None:
    """The id of a Responses API stream's response, from its first event (`response.created`,
    whose `response` carries it); None when the chunk has no such event."""
    for event in chunk.split(b"\n\n"):
        at = event.find(b"data: {")
        if at < 0:
            continue
        try:
            data = json.loads(event[at + len(b"data: ") :])
        except ValueError:
            return None
        response = data.get("response") if isinstance(data, dict) else None
        found = response.get("id") if isinstance(response, dict) else None
        return found if isinstance(found, str) else None
    return None


# -- LoRA adapter affinity ---------------------------------------------------------------------


class Holder(Protocol):
    """What an endpoint is known to hold of the LoRA adapters (routing/pool.py's Endpoint)."""

    adapters: dict[str, str]  # registered on the engine (its /v1/models): name -> parent
    slots: OrderedDict[str, None]  # resident in its adapter slots, least recently used first
    max_loras: int  # its adapter slots (vLLM's max_loras)


def adapter_tier(candidates: Sequence[Any], adapter: str) -> list[Any]:
    """The candidates to pick `adapter`'s request among, as GIE's LoRA affinity orders them:
    those holding it in a slot, else those that have it and a free slot, else those that have
    it at all (its request evicts another adapter there), else every candidate (an engine that
    loads adapters by name on demand)."""
    resident = [c for c in candidates if adapter in c.slots]
    if resident:
        return resident
    registered = [c for c in candidates if adapter in c.adapters] or list(candidates)
    free = [c for c in registered if len(c.slots) < c.max_loras]
    return free or registered


def use_adapter(endpoint: Holder, adapter: str) -> None:
    """Record that `adapter` now holds a slot of `endpoint` (least recently used evicted)."""
    endpoint.slots[adapter] = None
    endpoint.slots.move_to_end(adapter)
    while len(endpoint.slots) > max(1, endpoint.max_loras):
        endpoint.slots.popitem(last=False)


def lora_info(text: str) -> tuple[int | None, set[str]]:
    """vLLM's `vllm:lora_requests_info` gauge on a /metrics page: (max_lora, the adapters with
    requests running or waiting), from its latest sample (the value is its time)."""
    latest = -1.0
    found: tuple[int | None, set[str]] = (None, set())
    for line in text.splitlines():
        if not line.startswith("vllm:lora_requests_info{"):
            continue
        labels, _, value = line.partition("} ")
        try:
            at = float(value)
        except ValueError:
            continue
        if at < latest:
            continue
        fields = dict(_LABEL.findall(labels))
        active = {
            name
            for key in ("running_lora_adapters", "waiting_lora_adapters")
            for name in fields.get(key, "").split(",")
            if name
        }
        max_lora = fields.get("max_lora", "")
        latest, found = at, (int(max_lora) if max_lora.isdigit() else None, active)
    return found


_LABEL = re.compile(r'(\w+)="([^"]*)"')
