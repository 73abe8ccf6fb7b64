"""bench/fleet.py's workloads: who sends what, when, and at what rate.

A workload is a list of sessions, each a run of chat turns sent one after another by one caller
(`user`): a single turn for (a) and (c), a conversation for (b). Session starts are a seeded
Poisson process; every path of a run replays the same sessions.

    (a) tenants       `tenants` tenants, each with its own system prompt of `system_bytes` or more;
                      each request is one tenant's system prompt + a short user turn, from one of
                      the tenant's `users_per_tenant` users (`user` = "t<tenant>-u<k>")
    (b) conversations each conversation opens with a document of `doc_bytes` and a question, then
                      `turns - 1` short follow-ups, each sent `think_s` (exponential) after the
                      last reply, with the whole history each turn (the replies as received);
                      `user` = the conversation's id
    (c) random        one user turn of `random_bytes` of random words; nothing shared; `user` unique

The rate of each workload is fitted so that routing each request to a uniformly random replica
would use `load` of the fleet's prefill capacity: the sessions are replayed offline through
four copies of the replicas' prefix cache (tests/servers/sim_engine.py), picking at random, for the
mean uncached tokens per request U; then rate = load * fleet prefill tokens/s / U (iterated: more
requests, warmer caches).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass

from tests.servers.sim_engine import (
    BLOCK_TOKENS,
    PrefixCache,
    block_keys,
    render_chat,
    tokenize,
)
from tests.servers.sim_vllm import TOKEN_TEXT

WORKLOADS = ("a-tenants", "b-conversations", "c-random")


@dataclass(frozen=True)
class Shape:
    """Sizes of the workloads (the command line's)."""

    tenants: int = 32
    users_per_tenant: int = 8
    system_bytes: int = 4096
    turn_words: int = 12
    doc_bytes: int = 2048
    turns: int = 4
    think_s: float = 0.5
    random_bytes: int = 2048
    max_tokens: int = 16


@dataclass(frozen=True)
class Session:
    at: float  # seconds after the window opens
    user: str
    system: str | None  # sent first in every turn
    turns: tuple[str, ...]  # the user's messages, one request each
    thinks: tuple[float, ...]  # seconds from a reply to the next turn (one fewer than turns)


def messages(session: Session, turn: int, replies: list[str]) -> list[dict[str, str]]:
    """The history a turn sends: system, then each earlier turn and its reply, then this one."""
    out = [{"role": "system", "content": session.system}] if session.system else []
    for i in range(turn):
        out += [{"role": "user", "content": session.turns[i]},
                {"role": "assistant", "content": replies[i]}]  # fmt: skip
    return [*out, {"role": "user", "content": session.turns[turn]}]


class Words:
    """Random words from a fixed vocabulary: 2 to 10 letters, ~1.7 of the replicas' tokens each."""

    VOCABULARY = [
        "".join(random.Random(i).choices(string.ascii_lowercase, k=2 + i % 9)) for i in range(5000)
    ]

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def text(self, min_bytes: int) -> str:
        words: list[str] = []
        size = 0
        while size < min_bytes:
            words.append(self.rng.choice(self.VOCABULARY))
            size += len(words[-1]) + 1
        return " ".join(words)

    def words(self, n: int) -> str:
        return " ".join(self.rng.choices(self.VOCABULARY, k=n))


def poisson(rng: random.Random, rate: float, duration_s: float) -> list[float]:
    times, t = [], rng.expovariate(rate)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def tenant_prompts(shape: Shape, seed: int) -> list[str]:
    words = Words(random.Random(f"{seed}-tenants"))
    return [
        f"You are the assistant of tenant {t}. " + words.text(shape.system_bytes)
        for t in range(shape.tenants)
    ]


def tenants(shape: Shape, rate: float, duration_s: float, seed: int) -> list[Session]:
    rng, prompts = random.Random(f"{seed}-a"), tenant_prompts(shape, seed)
    words, out = Words(rng), []
    for at in poisson(rng, rate, duration_s):
        t = rng.randrange(shape.tenants)
        user = f"t{t}-u{rng.randrange(shape.users_per_tenant)}"
        out.append(Session(at, user, prompts[t], (words.words(shape.turn_words),), ()))
    return out


def conversations(shape: Shape, rate: float, duration_s: float, seed: int) -> list[Session]:
    """`rate` is of requests: conversations start at rate / turns."""
    rng = random.Random(f"{seed}-b")
    words, out = Words(rng), []
    for i, at in enumerate(poisson(rng, rate / shape.turns, duration_s)):
        first = words.text(shape.doc_bytes) + "\n\nQuestion: " + words.words(shape.turn_words)
        turns = (first, *(words.words(shape.turn_words) for _ in range(shape.turns - 1)))
        thinks = tuple(rng.expovariate(1 / shape.think_s) for _ in range(shape.turns - 1))
        out.append(Session(at, f"conv-{seed}-{i}", None, turns, thinks))
    return out


def random_prompts(shape: Shape, rate: float, duration_s: float, seed: int) -> list[Session]:
    rng = random.Random(f"{seed}-c")
    words = Words(rng)
    return [
        Session(at, f"anon-{seed}-{i}", None, (words.text(shape.random_bytes),), ())
        for i, at in enumerate(poisson(rng, rate, duration_s))
    ]


BUILDERS: dict[str, Callable[[Shape, float, float, int], list[Session]]] = {
    "a-tenants": tenants,
    "b-conversations": conversations,
    "c-random": random_prompts,
}


def cache_blocks_for(shape: Shape, seed: int) -> int:
    """Half of the full blocks of all tenants' system prompts: what each replica's cache holds."""
    total = sum(
        len(tokenize(render_chat([{"role": "system", "content": p}]))) // BLOCK_TOKENS
        for p in tenant_prompts(shape, seed)
    )
    return total // 2


@dataclass(frozen=True)
class Replay:
    requests: int
    prompt_tokens: float  # mean per request
    uncached_tokens: float  # mean per request, picking replicas at random

    @property
    def hit_ratio(self) -> float:
        return 1 - self.uncached_tokens / self.prompt_tokens


def replay_random(
    sessions: list[Session], *, replicas: int, cache_blocks: int, max_tokens: int, seed: int
) -> Replay:
    """Each request to a uniformly random replica, in the order they would be sent (a turn
    about half a second plus its think time after the last)."""
    rng = random.Random(seed)
    caches = [PrefixCache(capacity_blocks=cache_blocks) for _ in range(replicas)]
    reply = TOKEN_TEXT * max_tokens
    sends = []
    for s in sessions:
        at = s.at
        for turn in range(len(s.turns)):
            sends.append((at, s, turn))
            at += 0.5 + (s.thinks[turn] if turn < len(s.thinks) else 0.0)
    prompt = uncached = 0
    for _, s, turn in sorted(sends, key=lambda x: x[0]):
        tokens = tokenize(render_chat(messages(s, turn, [reply] * turn)))
        keys, cache = block_keys(tokens), rng.choice(caches)
        hit = cache.lookup(keys, max(0, len(tokens) - 1) // BLOCK_TOKENS) * BLOCK_TOKENS
        cache.insert(keys)
        prompt += len(tokens)
        uncached += max(1, len(tokens) - hit)
    n = max(1, len(sends))
    return Replay(len(sends), prompt / n, uncached / n)


def fit_rate(
    workload: str,
    shape: Shape,
    *,
    duration_s: float,
    capacity_tokens_s: float,
    load: float,
    replicas: int,
    cache_blocks: int,
    seed: int,
) -> tuple[float, Replay]:
    """The request rate at which random routing uses `load` of the fleet's prefill capacity."""
    build = BUILDERS[workload]
    rate = load * capacity_tokens_s / 1000  # a first guess: 1,000 uncached tokens a request
    replay = None
    for _ in range(4):
        replay = replay_random(
            build(shape, rate, duration_s, seed), replicas=replicas, cache_blocks=cache_blocks,
            max_tokens=shape.max_tokens, seed=seed,
        )  # fmt: skip
        rate = load * capacity_tokens_s / replay.uncached_tokens
    assert replay is not None
    return rate, replay
