"""``demo-llm``: a tiny random Llama with a locally trained byte-level BPE and a ChatML template.

head_dim is 64 (hidden 256 / 4 heads) because vLLM's CPU attention kernels need it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import store
from models.bpe import train_byte_level_bpe
from models.corpus import corpus_sha
from models.spec import DemoModel

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

PAD, BOS, IM_START, IM_END = "<|endoftext|>", "<|begin_of_text|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, BOS, IM_START, IM_END)  # ids 0..3

TOOL_CALL, TOOL_CALL_END = "<tool_call>", "</tool_call>"  # Hermes-style, as vLLM's parser reads

# ChatML turns with Hermes-style tools (the format of Qwen2.5 and NousResearch's Hermes models,
# which vLLM's `hermes` tool parser reads): the tools' JSON schemas in the system turn, a call as
# <tool_call>{"name": ..., "arguments": {...}}</tool_call>, a result as a <tool_response> user turn.
# Roles are checked so mistakes fail loudly.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- (messages[0]['content'] or '') | trim + '\\n\\n' -}}"
    "{%- endif -%}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{"name": '
    '<function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n\' -}}'
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' and tools and loop.first -%}"
    "{%- elif message['role'] in ['system', 'user'] or "
    "(message['role'] == 'assistant' and not message.get('tool_calls')) -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') | trim"
    " + '<|im_end|>\\n' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant' -}}"
    "{%- if message['content'] -%}{{- '\\n' + message['content'] | trim -}}{%- endif -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set fn = call['function'] if call['function'] is defined else call -%}"
    "{%- set args = fn['arguments'] if fn['arguments'] is string else fn['arguments'] | tojson -%}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + fn['name'] + '\", \"arguments\": ' + args"
    " + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + (message['content'] or '') | trim"
    " + '\\n</tool_response><|im_end|>\\n' -}}"
    "{%- else -%}"
    "{{- raise_exception('Unsupported role: ' + message['role']) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

SPEC: dict[str, Any] = {
    "seed": 0,
    "corpus": corpus_sha(),
    "chat_template": CHAT_TEMPLATE,
    "special_tokens": list(SPECIAL_TOKENS),
    "added_tokens": [TOOL_CALL, TOOL_CALL_END],
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
    # Whole tokens, and not special ones: decoding skips special tokens, and vLLM's tool parser
    # reads these from the decoded text.
    tokenizer.add_tokens([TOOL_CALL, TOOL_CALL_END])
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
