"""The pickers as policy objects: what each one chooses, given loads and what it was sent."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.adapters.base import InferRequest
from gateway.routing.pick import (
    BLOCK_CHARS,
    LeastLoad,
    PrefixAffinity,
    PrefixIndex,
    RoundRobin,
    SessionAffinity,
    block_chain,
    make_picker,
    prompt_text,
    response_id_in,
)
from gateway.scope.context import RequestContext


@dataclass
class Replica:
    key: str
    inflight: int = 0
    others: int = 0
    pending_blocks: float = 0.0


def replicas(n: int = 4) -> list[Replica]:
    return [Replica(f"http://10.0.0.{i}:8000") for i in range(n)]


def chat(system: str, question: str = "hi", **extra: Any) -> InferRequest:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return InferRequest("chat", "m", {"messages": messages, **extra})


def tenant_prompt(tenant: int) -> str:
    return f"You are the assistant of tenant {tenant}. " * 200  # 7 KB: 13 whole blocks


def send(picker: Any, fleet: list[Replica], request: InferRequest) -> Replica:
    choice = picker.pick(fleet, request)
    picker.sent(choice, request)
    endpoint: Replica = choice.endpoint
    return endpoint


def test_the_prompt_is_hashed_in_whole_blocks_as_a_chain() -> None:
    text = "x" * (3 * BLOCK_CHARS + 10)
    chain = block_chain(text)
    assert len(chain) == 3  # the partial block is not cached by an engine either
    assert block_chain(text[: 2 * BLOCK_CHARS]) == chain[:2]  # a prefix shares its blocks
    other = "y" + text[1:]
    assert not set(block_chain(other)) & set(chain)  # a change early changes every later block
    assert prompt_text(chat("sys", "u")) != prompt_text(chat("sy", "su"))  # roles delimit


def test_one_tenants_requests_stay_on_one_replica_and_tenants_spread() -> None:
    fleet = replicas()
    picker = PrefixAffinity(random.Random(0))
    homes = {}
    for t in range(8):  # arriving together: each waits for its prefill where it was sent
        choice = picker.pick(fleet, chat(tenant_prompt(t)))
        picker.sent(choice, chat(tenant_prompt(t)))
        choice.endpoint.pending_blocks += choice.uncached_blocks
        homes[t] = choice.endpoint.key
    assert sorted(list(homes.values()).count(r.key) for r in fleet) == [2, 2, 2, 2]
    for r in fleet:
        r.pending_blocks = 0  # answered
    for t in range(8):
        for turn in range(3):
            assert send(picker, fleet, chat(tenant_prompt(t), f"q{turn}")).key == homes[t]


def test_affinity_gives_way_when_the_warm_replica_is_queued_up() -> None:
    fleet = replicas(2)
    picker = PrefixAffinity(random.Random(0))
    home = send(picker, fleet, chat(tenant_prompt(1)))
    other = next(r for r in fleet if r is not home)
    home.pending_blocks = 5  # a short queue: still cheaper than prefilling 16 blocks
    assert picker.pick(fleet, chat(tenant_prompt(1))).endpoint is home
    home.pending_blocks, home.inflight = 40, 8  # its queue is longer than the prompt
    choice = picker.pick(fleet, chat(tenant_prompt(1)))
    assert choice.endpoint is other and choice.uncached_blocks == 13


def test_a_short_prompt_is_least_load() -> None:
    fleet = replicas(3)
    fleet[0].inflight, fleet[1].others = 2, 1
    choice = PrefixAffinity(random.Random(0)).pick(fleet, chat("s", "u"))
    assert choice.endpoint is fleet[2] and choice.reason == "least_load"


def test_least_load_counts_the_engines_queue_and_round_robin_cycles() -> None:
    fleet = replicas(3)
    fleet[0].inflight, fleet[1].others, fleet[2].inflight = 1, 3, 2
    assert LeastLoad(random.Random(0)).pick(fleet, chat("s")).endpoint is fleet[0]
    rr = RoundRobin()
    assert [rr.pick(fleet, chat("s")).endpoint for _ in range(4)] == [*fleet, fleet[0]]


def test_the_index_evicts_least_recently_sent_blocks_and_forgets_a_gone_endpoint() -> None:
    index = PrefixIndex(capacity=4)
    a, b = block_chain("a" * 3 * BLOCK_CHARS), block_chain("b" * 3 * BLOCK_CHARS)
    index.add("e1", a)
    index.add("e1", b)  # 6 blocks into 4: a's first two go
    assert index.matches(a, ["e1"]) == {"e1": 0}
    assert index.matches(b, ["e1"]) == {"e1": 3}
    index.add("e2", b)
    index.forget("e1")
    assert index.matches(b, ["e1", "e2"]) == {"e1": 0, "e2": 3}


def test_a_session_sticks_to_its_replica_until_it_is_overloaded() -> None:
    fleet = replicas()
    picker = SessionAffinity(PrefixAffinity(random.Random(0)))
    ctx = RequestContext("id", "POST", "/v1/chat/completions", caller="team-a")
    by_caller = InferRequest("chat", "m", {"messages": []}, context=ctx)
    home = picker.pick(fleet, by_caller).endpoint
    assert all(picker.pick(fleet, by_caller).endpoint is home for _ in range(5))
    by_user = chat("s", "u", user="conversation-7")
    assert picker.pick(fleet, by_user).endpoint is picker.pick(fleet, by_user).endpoint
    home.inflight = 20  # far past 1.25x the mean load: the caller moves on
    assert picker.pick(fleet, by_caller).endpoint is not home


def test_a_response_is_continued_where_it_was_made() -> None:
    fleet = replicas()
    picker = SessionAffinity(PrefixAffinity(random.Random(0)))
    picker.answered(fleet[2], InferRequest("responses", "m", {}), {"id": "resp_1"})
    follow = InferRequest(
        "responses", "m", {"input": "and then?", "previous_response_id": "resp_1"}
    )
    assert picker.pick(fleet, follow).endpoint is fleet[2]
    created = (
        b"event: response.created\n"
        b'data: {"type": "response.created", "response": {"id": "resp_9"}}\n\n'
    )
    assert response_id_in(created) == "resp_9"
    assert response_id_in(b'data: {"type": "x"}\n\n') is None


def test_unknown_balance_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown balance"):
        make_picker("random")  # type: ignore[arg-type]
