"""``demo-llm``: a tiny random Llama with a locally trained byte-level BPE and a ChatML template.

head_dim is 64 (hidden 256 / 4 heads) because vLLM's CPU attention kernels need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import store
from models.bpe import train_byte_level_bpe
from models.corpus import corpus_sha
from models.demo import DemoModel

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

PAD, BOS, IM_START, IM_END = "<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, BOS, IM_START, IM_END)  # ids 0..3

# ChatML turns; the system/user/assistant roles are checked so mistakes fail loudly.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('Unsupported role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

SPEC: dict[str, Any] = {
    "seed": 0,
    "corpus": corpus_sha(),
    "chat_template": CHAT_TEMPLATE,
    "special_tokens": list(SPECIAL_TOKENS),
    "vocab_size": 2048,
    "hidden_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "intermediate_size": 512,
    "max_position_embeddings": 2048,
    "rope_theta": 10000.0,
    "tie_word_embeddings": True,
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = train_byte_level_bpe(SPEC["vocab_size"], SPECIAL_TOKENS)
    bos_id = backend.token_to_id(BOS)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[IM_START],
        model_max_length=SPEC["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    ids: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        assert isinstance(token_id, int), token
        ids[token] = token_id
    eos_ids = [ids[IM_END], ids[PAD]]
    config = LlamaConfig(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=SPEC["hidden_size"],
        num_attention_heads=SPEC["num_attention_heads"],
        num_key_value_heads=SPEC["num_key_value_heads"],
        num_hidden_layers=SPEC["num_hidden_layers"],
        intermediate_size=SPEC["intermediate_size"],
        max_position_embeddings=SPEC["max_position_embeddings"],
        rope_parameters={"rope_type": "default", "rope_theta": SPEC["rope_theta"]},
        tie_word_embeddings=SPEC["tie_word_embeddings"],
        bos_token_id=ids[BOS],
        eos_token_id=eos_ids,
        pad_token_id=ids[PAD],
        dtype="float32",
    )
    torch.manual_seed(SPEC["seed"])
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS], eos_token_id=eos_ids, pad_token_id=ids[PAD]
    )
    return model


def write(path: Path) -> None:
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)


DEMO = DemoModel(
    name="demo-llm",
    spec=SPEC,
    metadata=store.make_metadata(
        "text-generation",
        "demo",
        "transformers",
        max_position_embeddings=SPEC["max_position_embeddings"],
        seed=SPEC["seed"],
    ),
    write=write,
)
