"""Load a stored text-generation model in vLLM and chat with it once (a manual smoke check).

    VLLM_CPU_KVCACHE_SPACE=1 python -m models.vllm_check [TAG] [--dtype float32]

Takes about 40 s on the 2-core CPU machine (engine start). Not run by the unit tests.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from models import store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.vllm_check", description=__doc__)
    parser.add_argument("tag", nargs="?", default="demo-llm")
    parser.add_argument("--dtype", default="float32", help="float32 | bfloat16 | auto")
    parser.add_argument("--max-model-len", type=int, default=512)
    args = parser.parse_args(argv)

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    model = store.resolve(args.tag)
    start = time.perf_counter()
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(model.path), dtype=args.dtype, max_model_len=args.max_model_len, seed=0)
    loaded = time.perf_counter() - start
    messages: Any = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Tell me about the weather."},
    ]
    params = SamplingParams(max_tokens=32, temperature=0.8, seed=0)
    outputs = llm.chat([messages, messages], params)
    for out in outputs:
        completion = out.outputs[0]
        print(
            f"prompt tokens={len(out.prompt_token_ids or [])} generated={len(completion.token_ids)}"
        )
        print(f"  text={completion.text!r}")
    print(f"{model.tag}: vLLM loaded in {loaded:.1f} s, chat ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
