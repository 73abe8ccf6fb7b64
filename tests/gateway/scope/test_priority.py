"""Priority and fairness in admission: classes, the reserved share, preemption, ageing, and
fairness across keys by tokens; and how a request's class is decided."""

from __future__ import annotations

import asyncio

import pytest

from gateway.errors import BackendOverloaded, InvalidRequest
from gateway.scope.admission import Admission, Ticket
from gateway.scope.context import RequestContext
from gateway.scope.keys import ApiKey


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def admission(inflight: int = 1, queue: int = 16, **kwargs: object) -> Admission:
    return Admission(
        "llm",
        max_inflight=inflight,
        max_queue=queue,
        queue_timeout_s=60,
        **kwargs,  # type: ignore[arg-type]
    )


class Holders:
    """Tasks that take a slot with a ticket and hold it until released, in admission order."""

    def __init__(self, adm: Admission) -> None:
        self.adm = adm
        self.order: list[str] = []
        self.refused: list[str] = []
        self.tasks: list[asyncio.Task[None]] = []
        self._release: dict[str, asyncio.Event] = {}

    def start(self, name: str, ticket: Ticket) -> None:
        self._release[name] = asyncio.Event()
        self.tasks.append(asyncio.create_task(self._hold(name, ticket)))

    async def _hold(self, name: str, ticket: Ticket) -> None:
        try:
            async with self.adm.slot(ticket):
                self.order.append(name)
                await self._release[name].wait()
        except BackendOverloaded:
            self.refused.append(name)

    async def release(self, name: str) -> None:
        self._release[name].set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    async def close(self) -> None:
        for event in self._release.values():
            event.set()
        await asyncio.gather(*self.tasks)


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


async def test_higher_classes_go_first_and_arrival_order_within_a_class() -> None:
    h = Holders(admission(inflight=1))
    h.start("first", Ticket())
    await settle()
    for name, priority in [("low", "low"), ("normal-1", "normal"), ("high", "high"),
                           ("normal-2", "normal")]:  # fmt: skip
        h.start(name, Ticket(priority=priority))  # type: ignore[arg-type]
    await settle()
    for name in ["first", "high", "normal-1", "normal-2"]:
        await h.release(name)
    assert h.order == ["first", "high", "normal-1", "normal-2", "low"]
    await h.close()


async def test_low_may_fill_every_slot_and_normal_borrows_the_reserve_above_it() -> None:
    adm = admission(inflight=10, reserved_fraction=0.1)  # one slot above the ten
    h = Holders(adm)
    for i in range(11):
        h.start(f"low-{i}", Ticket(priority="low"))
    await settle()
    assert adm.inflight == 10 and adm.queued == 1  # work-conserving: low takes all ten
    h.start("normal", Ticket())
    await settle()
    assert h.order[-1] == "normal" and adm.inflight == 11  # lent the reserve, at once
    h.start("normal-2", Ticket())
    await settle()
    assert adm.queued == 2  # the reserve is one slot: the next normal waits
    await h.release("low-0")
    assert h.order[-1] == "normal-2"  # a freed slot goes to the higher class first
    await h.close()


async def test_no_reserve_is_lent_while_no_low_request_holds_a_slot() -> None:
    adm = admission(inflight=2)
    h = Holders(adm)
    for name in ("a", "b", "c"):
        h.start(name, Ticket())
    await settle()
    assert adm.inflight == 2 and adm.queued == 1
    await h.close()


async def test_a_full_queue_preempts_its_newest_lower_request_for_a_higher_one() -> None:
    adm = admission(inflight=1, queue=2)
    h = Holders(adm)
    h.start("running", Ticket())
    await settle()
    h.start("low-old", Ticket(priority="low"))
    h.start("low-new", Ticket(priority="low"))
    await settle()
    h.start("high", Ticket(priority="high"))
    await settle()
    assert h.refused == ["low-new"] and adm.queued == 2
    h.start("low-late", Ticket(priority="low"))  # nothing lower to preempt: refused itself
    await settle()
    assert h.refused == ["low-new", "low-late"]
    await h.release("running")
    await h.release("high")
    assert h.order == ["running", "high", "low-old"]
    await h.close()


async def test_a_waiting_low_request_moves_ahead_so_it_is_never_starved() -> None:
    clock = Clock()
    h = Holders(admission(inflight=1, promote_after_s=10, clock=clock))
    h.start("running", Ticket())
    await settle()
    h.start("old-low", Ticket(priority="low"))
    await settle()
    clock.now = 25  # promoted twice, but no further than normal: a high one still goes first
    h.start("new-normal", Ticket())
    h.start("new-high", Ticket(priority="high"))
    await settle()
    await h.release("running")
    await h.release("new-high")
    assert h.order == ["running", "new-high", "old-low"]  # older than new-normal
    await h.close()


async def fair_share(tickets: dict[str, Ticket], admissions: int) -> dict[str, float]:
    """Each key keeps four requests going (a flood) through one slot; the share of the
    admitted tokens each key got, of `admissions`."""
    adm = admission(inflight=1, queue=64)
    got = dict.fromkeys(tickets, 0.0)
    done = asyncio.Event()
    count = 0

    async def client(name: str) -> None:
        nonlocal count
        while not done.is_set():
            async with adm.slot(tickets[name]):
                got[name] += tickets[name].cost
                count += 1
                if count >= admissions:
                    done.set()
                await asyncio.sleep(0)

    await asyncio.gather(*(client(n) for n in tickets for _ in range(4)))
    total = sum(got.values())
    return {n: v / total for n, v in got.items()}


async def test_keys_share_a_full_backend_by_tokens_not_requests() -> None:
    shares = await fair_share(
        {"long": Ticket(key="long", cost=400), "short": Ticket(key="short", cost=100)}, 200
    )
    assert 0.45 <= shares["long"] <= 0.55, shares  # by requests it would be 0.8


async def test_a_keys_weight_is_its_share() -> None:
    shares = await fair_share(
        {"heavy": Ticket(key="heavy", cost=100, weight=2), "light": Ticket(key="light", cost=100)},
        300,
    )
    assert 0.62 <= shares["heavy"] <= 0.71, shares  # two thirds


async def test_fifo_is_arrival_order_whatever_the_class_and_holds_the_limit() -> None:
    adm = admission(inflight=1, policy="fifo")
    h = Holders(adm)
    h.start("first", Ticket())
    await settle()
    h.start("low", Ticket(priority="low"))
    h.start("high", Ticket(priority="high"))
    await settle()
    await h.release("first")
    assert adm.inflight == 1 and adm.queued == 1
    await h.release("low")
    assert h.order == ["first", "low", "high"]
    await h.close()


def context(key: ApiKey | None) -> RequestContext:
    return RequestContext("id", "POST", "/v1/chat/completions", key=key)


@pytest.mark.parametrize(
    ("ceiling", "asked", "got"),
    [
        (None, "priority", "high"),  # auth off: as asked
        (None, "flex", "low"),
        ("normal", "priority", "normal"),  # capped by the key
        ("normal", "flex", "low"),
        ("high", "high", "high"),
        ("low", "default", "low"),
        ("normal", None, "normal"),
    ],
)
def test_a_requests_class_is_what_it_asks_capped_by_its_key(
    ceiling: str | None, asked: str | None, got: str
) -> None:
    key = ApiKey("k", "0" * 64, max_priority=ceiling) if ceiling else None
    ctx = context(key)
    ctx.ask_priority(asked)
    assert ctx.priority == got


def test_an_unknown_priority_is_a_400_naming_the_choices() -> None:
    with pytest.raises(InvalidRequest, match="flex") as err:
        context(None).ask_priority("urgent")
    assert err.value.status == 400
