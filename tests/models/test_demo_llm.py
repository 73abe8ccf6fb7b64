"""demo-llm loads with transformers; tokenizer and chat template work."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models import store
from tests.models.conftest import DemoStore

MESSAGES = [
    {"role": "system", "content": "You are brief."},
    {"role": "user", "content": "What is an espresso?"},
    {"role": "assistant", "content": "A short, strong coffee."},
    {"role": "user", "content": "Thanks!"},
]


@pytest.fixture(scope="module")
def llm(demo_store: DemoStore) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = store.resolve("demo-llm").path
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def test_config_fits_vllm_cpu(llm: tuple[Any, Any]) -> None:
    _, model = llm
    config = model.config
    assert config.model_type == "llama"
    assert config.hidden_size // config.num_attention_heads == 64  # vLLM CPU kernels
    assert config.vocab_size >= 2048


def test_tokenizer_roundtrip_and_special_tokens(llm: tuple[Any, Any]) -> None:
    tok, _ = llm
    ids = tok("The golden retriever sleeps.").input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "The golden retriever sleeps."
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (
        "<|begin_of_text|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert 2000 <= len(tok) <= 4096


def test_chat_template_renders(llm: tuple[Any, Any]) -> None:
    tok, _ = llm
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|begin_of_text|><|im_start|>system\nYou are brief.<|im_end|>\n")
    assert "<|im_start|>assistant\nA short, strong coffee.<|im_end|>\n" in text
    assert text.endswith("<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n")
    plain = tok.apply_chat_template(MESSAGES[:2], tokenize=False)
    assert not plain.endswith("assistant\n")


def test_generates(llm: tuple[Any, Any]) -> None:
    tok, model = llm
    inputs = tok.apply_chat_template(
        MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1] :]
    assert 1 <= len(new) <= 8
    assert isinstance(tok.decode(new, skip_special_tokens=True), str)
