"""What vLLM's priority scheduling costs when every request is the same class.

    .venv/bin/python -m bench.scheduling                    # fcfs, priority, fcfs, priority
    .venv/bin/python -m bench.scheduling --rounds 1 --concurrency 8   # a smoke run

The bundle starts its engine with `--scheduling-policy priority` (llm.scheduling_policy) so that
the gateway's classes reach the engine (gateway/scope/admission.py). This measures the price of
that when nobody asks for a class: vLLM's own OpenAI server on the demo model, started with each
policy in turn (rounds alternate the order), streaming completions of a fixed length at each
concurrency with `priority` 0 on every request (what the gateway sends for `normal`). It prints
output tokens/s and TTFT per policy with the priority/fcfs ratio. The engines run one at a time
(two would share the two cores), so the comparison is across starts: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio

from bench.llm import Run, measure, merge
from tests.servers.vllm import vllm_process

POLICIES = ("fcfs", "priority")


async def measure_all(url: str, concurrency: list[int], max_tokens: int) -> dict[int, Run]:
    return {c: await measure(url, "demo-llm", c, max(24, 4 * c), max_tokens) for c in concurrency}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scheduling", description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    runs: dict[str, dict[int, list[Run]]] = {p: {c: [] for c in args.concurrency} for p in POLICIES}
    for round_ in range(args.rounds):
        for policy in POLICIES if round_ % 2 == 0 else POLICIES[::-1]:
            extra = ("--max-model-len", "1024", "--scheduling-policy", policy)
            engine = vllm_process(served_name="demo-llm", extra_args=extra).start()
            try:
                for c, run in asyncio.run(
                    measure_all(engine.url, args.concurrency, args.max_tokens)
                ).items():
                    runs[policy][c].append(run)
            finally:
                engine.stop()
            print(f"  round {round_ + 1}: {policy} done", flush=True)
    print(f"\nvLLM scheduling policy, every request priority 0, {args.max_tokens} output tokens "
          f"per request, {args.rounds} rounds\n")  # fmt: skip
    print("| conc | fcfs tok/s | priority tok/s | ratio | TTFT p50 fcfs / priority (ms) "
          "| TTFT p99 fcfs / priority (ms) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for c in args.concurrency:
        f, p = merge(runs["fcfs"][c]), merge(runs["priority"][c])
        print(f"| {c} | {f.tok_s:,.0f} | {p.tok_s:,.0f} | {p.tok_s / f.tok_s:.3f} "
              f"| {f.ttft_ms(0.5):.1f} / {p.ttft_ms(0.5):.1f} "
              f"| {f.ttft_ms(0.99):.1f} / {p.ttft_ms(0.99):.1f} |")  # fmt: skip


if __name__ == "__main__":
    main()
