"""A simulated vLLM replica: OpenAI-compatible, timed by a stated cost model (sim_engine.py).

For benchmarks of routing across replicas (bench/fleet.py): each replica has its own prefix cache
and its own prefill queue, so where a request lands changes how long it waits, as on real vLLM,
while costing this machine only sleeps. It shares tests/servers/upstream.py's HTTP handling and
imports nothing from the gateway.

    python -m tests.servers.sim_vllm --host 127.0.0.2 --port 8301 --cache-blocks 1024 \\
        --prefill-tokens-per-s 5000 --token-ms 20 --batch-k 8 --max-tokens 64

    POST /v1/chat/completions, /v1/completions   stream or not; `max_tokens` (else --max-tokens),
                                                  `stream_options.include_usage`; usage has
                                                  `prompt_tokens_details.cached_tokens`
    GET  /health, /v1/models
    GET  /metrics   Prometheus text, vLLM's names: vllm:num_requests_running, _waiting,
                    vllm:kv_cache_usage_perc, vllm:prefix_cache_queries_total, _hits_total (tokens)
    GET  /stats     JSON since the last reset: requests, prompt/queried/hit/output tokens,
                    prefill busy seconds, the cache's size, LoRA adapter loads
    POST /reset     once idle: empty the prefix cache and the adapter slots, zero /stats

With `--adapters N` it also serves N LoRA adapters, `<model>-lora<i>` (listed on /v1/models with
`parent`, as vLLM lists them): `--max-loras` of them fit its adapter slots at once (least
recently used evicted), and a request for one that is not in a slot first waits `--lora-load-ms`
for it to be loaded, one load at a time (vLLM loads an adapter into its slots in the engine's
step). vLLM's `vllm:lora_requests_info` gauge shows `max_lora` and the adapters with requests.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.servers.sim_engine import CostModel, Engine, render_chat, tokenize
from tests.servers.upstream import RawHTTP, send, serve

if TYPE_CHECKING:
    from tests.servers.process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]
TOKEN_TEXT = "tok "


class AdapterSlots:
    """`max_loras` LoRA slots, least recently used evicted; a missing adapter costs `load_s`,
    one load at a time."""

    def __init__(self, names: Sequence[str], *, max_loras: int, load_s: float) -> None:
        from collections import OrderedDict

        self.names = list(names)
        self.max_loras = max_loras
        self.load_s = load_s
        self.slots: OrderedDict[str, None] = OrderedDict()
        self.active: dict[str, int] = {}
        self.loads = 0
        self._lock = asyncio.Lock()

    async def ensure(self, name: str) -> None:
        if name not in self.slots:
            async with self._lock:
                if name not in self.slots:
                    await asyncio.sleep(self.load_s)
                    self.loads += 1
                    self.slots[name] = None
                    while len(self.slots) > self.max_loras:
                        self.slots.popitem(last=False)
        self.slots.move_to_end(name)

    def reset(self) -> None:
        self.slots.clear()
        self.loads = 0


class SimVLLM(RawHTTP):
    def __init__(
        self,
        engine: Engine,
        *,
        model: str,
        max_tokens: int,
        adapters: AdapterSlots | None = None,
    ) -> None:
        self.engine = engine
        self.model = model
        self.max_tokens = max_tokens
        self.adapters = adapters
        self.served = 0

    async def route(
        self, method: str, path: str, body: bytes, writer: asyncio.StreamWriter
    ) -> None:
        if method == "GET" and path == "/health":
            return send(writer, 200, b"")
        if method == "GET" and path == "/v1/models":
            cards = [{"id": self.model, "object": "model", "parent": None}]
            for name in self.adapters.names if self.adapters else ():
                cards.append({"id": name, "object": "model", "parent": self.model})
            return send(writer, 200, json.dumps({"object": "list", "data": cards}).encode())
        if method == "GET" and path == "/metrics":
            return send(writer, 200, self.metrics().encode(), "text/plain; version=0.0.4")
        if method == "GET" and path == "/stats":
            return send(writer, 200, json.dumps(self.stats()).encode())
        if method == "POST" and path == "/reset":
            await self.engine.reset()
            if self.adapters is not None:
                self.adapters.reset()
            return send(writer, 200, json.dumps(self.stats()).encode())
        if method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            return await self.complete(body, path.endswith("chat/completions"), writer)
        return send(writer, 404, _error("no route", "not_found"))

    async def complete(self, body: bytes, chat: bool, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(body or b"{}")
            text = _prompt_text(request, chat)
        except (ValueError, TypeError) as exc:
            return send(writer, 400, _error(str(exc), "BadRequestError"))
        model = request.get("model", self.model)
        adapter = model if self.adapters and model in self.adapters.names else None
        if model != self.model and adapter is None:
            message = f"The model `{request.get('model')}` does not exist."
            return send(writer, 404, _error(message, "NotFoundError"))
        if adapter is not None and self.adapters is not None:
            self.adapters.active[adapter] = self.adapters.active.get(adapter, 0) + 1
            try:
                await self.adapters.ensure(adapter)
                return await self._generate(request, text, chat, writer)
            finally:
                self.adapters.active[adapter] -= 1
        return await self._generate(request, text, chat, writer)

    async def _generate(
        self, request: dict[str, Any], text: str, chat: bool, writer: asyncio.StreamWriter
    ) -> None:
        n = int(request.get("max_tokens") or request.get("max_completion_tokens") or 0)
        n = n or self.max_tokens
        tokens = tokenize(text)
        self.served += 1
        rid = f"cmpl-{self.served}"
        async with self.engine.admit(tokens, max_tokens=n) as run:
            if not request.get("stream"):
                await run.prefill()
                async for _ in run.decode():
                    pass
                answer = _answer(rid, self.model, chat, n, _usage(len(tokens), n, run.hit_tokens))
                return send(writer, 200, json.dumps(answer).encode())
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            await writer.drain()  # vLLM answers its headers before the first token
            await run.prefill()
            kind = "chat.completion.chunk" if chat else "text_completion"
            async for i in run.decode():
                finish = "length" if i == n - 1 else None
                event = _event(rid, kind, self.model, _choice(chat, i == 0, finish))
                writer.write(_chunk(event))
                await writer.drain()
            tail = b""
            if (request.get("stream_options") or {}).get("include_usage"):
                usage = _usage(len(tokens), n, run.hit_tokens)
                tail += _event(rid, kind, self.model, None, usage)
            tail += b"data: [DONE]\n\n"
            writer.write(_chunk(tail) + b"0\r\n\r\n")
            await writer.drain()

    def stats(self) -> dict[str, Any]:
        c, engine = self.engine.counters, self.engine
        return {
            "model": self.model,
            "requests": c.requests,
            "prompt_tokens": c.prompt_tokens,
            "prefix_cache_queried_tokens": c.queried_tokens,
            "prefix_cache_hit_tokens": c.hit_tokens,
            "output_tokens": c.output_tokens,
            "prefill_busy_s": round(c.prefill_busy_s, 6),
            "seconds": round(engine.clock() - c.started, 6),
            "waiting": engine.waiting,
            "running": engine.prefilling + engine.decoding,
            "cache_blocks": len(engine.cache),
            "cache_capacity_blocks": engine.cache.capacity,
            "lora_loads": self.adapters.loads if self.adapters else 0,
        }

    def metrics(self) -> str:
        engine, t = self.engine, self.engine.totals
        labels = f'{{engine="0",model_name="{self.model}"}}'
        rows = [
            ("num_requests_running", "gauge", "Requests in the running batch (prefill included).",
             engine.prefilling + engine.decoding),
            ("num_requests_waiting", "gauge", "Requests waiting for their prefill.",
             engine.waiting),
            ("kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.",
             engine.kv_usage),
            ("prefix_cache_queries", "counter", "Prefix cache queries, in tokens.",
             t.queried_tokens),
            ("prefix_cache_hits", "counter", "Prefix cache hits, in tokens.", t.hit_tokens),
            ("prompt_tokens", "counter", "Prefill tokens processed.", t.prompt_tokens),
            ("generation_tokens", "counter", "Generation tokens processed.", t.output_tokens),
        ]  # fmt: skip
        lines = []
        for name, kind, help_text, value in rows:
            sample = f"vllm:{name}_total" if kind == "counter" else f"vllm:{name}"
            lines += [
                f"# HELP vllm:{name} {help_text}",
                f"# TYPE vllm:{name} {kind}",
                f"{sample}{labels} {float(value)}",
            ]
        if self.adapters is not None:
            active = ",".join(n for n, k in self.adapters.active.items() if k > 0)
            lines.append(
                f'vllm:lora_requests_info{{max_lora="{self.adapters.max_loras}",'
                f'running_lora_adapters="{active}",waiting_lora_adapters=""}} {time.time()}'
            )
        return "\n".join(lines) + "\n"


def _prompt_text(request: dict[str, Any], chat: bool) -> str:
    if chat:
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        return render_chat(messages)
    prompt = request.get("prompt")
    if isinstance(prompt, list):  # a batch of prompts or token ids: one prompt here
        return " ".join(map(str, prompt))
    if not isinstance(prompt, str):
        raise ValueError("'prompt' must be a string or a list")
    return prompt


def _error(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": kind}}).encode()


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _choice(chat: bool, first: bool, finish: str | None) -> dict[str, Any]:
    if chat:
        delta = {"role": "assistant", "content": TOKEN_TEXT} if first else {"content": TOKEN_TEXT}
        return {"index": 0, "delta": delta, "finish_reason": finish}
    return {"index": 0, "text": TOKEN_TEXT, "finish_reason": finish}


def _event(
    rid: str, kind: str, model: str, choice: dict[str, Any] | None, usage: Any = None
) -> bytes:
    event: dict[str, Any] = {"id": rid, "object": kind, "created": int(time.time()),
                             "model": model, "choices": [choice] if choice else []}  # fmt: skip
    if usage is not None:
        event["usage"] = usage
    return b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _answer(rid: str, model: str, chat: bool, n: int, usage: dict[str, Any]) -> dict[str, Any]:
    text = TOKEN_TEXT * n
    choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, **choice, "finish_reason": "length"}],
        "usage": usage,
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.servers.sim_vllm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="any 127.0.0.x on loopback")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="fleet-llm")
    p.add_argument("--cache-blocks", type=int, default=1024, help="prefix cache, 16-token blocks")
    p.add_argument("--prefill-tokens-per-s", type=float, default=5000.0)
    p.add_argument("--token-ms", type=float, default=20.0, help="a decode step, batch of one")
    p.add_argument("--batch-k", type=float, default=8.0, help="step = token_ms * (1 + batch / k)")
    p.add_argument("--max-tokens", type=int, default=64, help="when a request gives none")
    p.add_argument("--adapters", type=int, default=0, help="LoRA adapters served, <model>-lora<i>")
    p.add_argument("--max-loras", type=int, default=4, help="adapter slots")
    p.add_argument("--lora-load-ms", type=float, default=200.0, help="loading a missing adapter")
    return p


def main() -> None:
    args = parser().parse_args()
    cost = CostModel(prefill_tokens_per_s=args.prefill_tokens_per_s,
                     token_s=args.token_ms / 1000, batch_k=args.batch_k)  # fmt: skip

    async def run() -> None:  # the engine's lock and event belong to this loop
        engine = Engine(cost, capacity_blocks=args.cache_blocks)
        names = [f"{args.model}-lora{i}" for i in range(args.adapters)]
        slots = AdapterSlots(names, max_loras=args.max_loras, load_s=args.lora_load_ms / 1000)
        server = SimVLLM(engine, model=args.model, max_tokens=args.max_tokens,
                         adapters=slots if names else None)  # fmt: skip
        await serve(server, args.host, args.port)

    gc.collect()  # as lifecycle.tune_gc does, without importing the bundle's settings
    gc.freeze()
    gc.set_threshold(50_000, 10, 10)
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(run())
    else:
        uvloop.run(run())


if __name__ == "__main__":
    main()


def sim_vllm_processes(
    n: int, options: Sequence[str] = (), *, first_host: int = 2
) -> list[ServerProcess]:
    """`n` replicas, not started yet, replica i on 127.0.0.(first_host + i) at a free port;
    `options` are more command-line flags (--cache-blocks 992 ...) for each. Start them with
    tests.servers.process.start_together."""
    from tests.servers.process import ServerProcess, free_port, http_ok

    servers = []
    for i in range(n):
        host, port = f"127.0.0.{first_host + i}", free_port()
        url = f"http://{host}:{port}"
        command = [sys.executable, "-m", "tests.servers.sim_vllm", "--host", host,
                   "--port", str(port), *options]  # fmt: skip
        ready = http_ok(f"{url}/health")
        servers.append(
            ServerProcess(f"sim-vllm-{i}", command, ready=ready, url=url, cwd=ROOT, timeout_s=60)
        )
    return servers
