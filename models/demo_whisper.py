"""``demo-whisper``: a tiny random Whisper with a locally built multilingual Whisper tokenizer.

The token layout follows OpenAI Whisper so transformers' generate() works unchanged::

    [byte-level BPE] <|endoftext|> <|startoftranscript|> <|en|> ... <|yue|> <|translate|>
    <|transcribe|> <|startoflm|> <|startofprev|> <|nospeech|> <|notimestamps|>
    <|0.00|> <|0.02|> ... <|30.00|>
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import store
from models.bpe import train_byte_level_bpe, vocab_and_merges
from models.corpus import corpus_sha
from models.spec import DemoModel

if TYPE_CHECKING:
    from transformers import (
        GenerationConfig,
        WhisperForConditionalGeneration,
        WhisperProcessor,
        WhisperTokenizer,
    )

# Whisper's language codes in token order (== transformers' whisper LANGUAGES keys, checked).
_CODES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no "
    "th ur hr bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw "
    "gl mr pa si km sn yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl "
    "mg as tt haw ln ha ba jw su yue"
)
LANGUAGE_CODES = _CODES.split()
EOT, SOT = "<|endoftext|>", "<|startoftranscript|>"
TASK_TOKENS = ("<|translate|>", "<|transcribe|>")
TAIL_TOKENS = ("<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>")
TIME_PRECISION = 0.02

SPEC: dict[str, Any] = {
    "seed": 0,
    "corpus": corpus_sha(),
    "bpe_vocab_size": 2048,
    "languages": LANGUAGE_CODES,
    "timestamps": 1501,  # <|0.00|> ... <|30.00|>
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "attention_heads": 2,
    "ffn_dim": 256,
    "num_mel_bins": 80,
    "max_source_positions": 1500,
    "max_target_positions": 448,
    "sampling_rate": 16000,
}


def special_tokens() -> list[str]:
    return [EOT, SOT, *(f"<|{c}|>" for c in LANGUAGE_CODES), *TASK_TOKENS, *TAIL_TOKENS]


def build_tokenizer() -> WhisperTokenizer:
    from tokenizers import AddedToken
    from transformers import WhisperTokenizer
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    if list(LANGUAGES) != LANGUAGE_CODES:
        raise RuntimeError("transformers' Whisper language list changed; update LANGUAGE_CODES")
    vocab, merges = vocab_and_merges(train_byte_level_bpe(SPEC["bpe_vocab_size"]))
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges)
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens()})
    timestamps = [f"<|{i * TIME_PRECISION:.2f}|>" for i in range(SPEC["timestamps"])]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])
    # Whisper relies on this order: timestamps start right after <|notimestamps|>.
    ids = tokenizer.convert_tokens_to_ids([EOT, "<|notimestamps|>", timestamps[0]])
    if ids != [
        len(vocab),
        len(vocab) + len(special_tokens()) - 1,
        len(vocab) + len(special_tokens()),
    ]:
        raise RuntimeError(f"unexpected Whisper token layout: {ids}")
    return tokenizer


def _token_id(tokenizer: WhisperTokenizer, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(token_id, int), token
    return token_id


def build_generation_config(tokenizer: WhisperTokenizer) -> GenerationConfig:
    from transformers import GenerationConfig

    def tid(token: str) -> int:
        return _token_id(tokenizer, token)

    lang_to_id = {f"<|{c}|>": tid(f"<|{c}|>") for c in LANGUAGE_CODES}
    # Random weights would happily emit control tokens; a trained Whisper never does.
    suppress = [tid(SOT), *lang_to_id.values(), *(tid(t) for t in TASK_TOKENS + TAIL_TOKENS)]
    eot = tid(EOT)
    return GenerationConfig(
        decoder_start_token_id=tid(SOT),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=SPEC["max_target_positions"],
        is_multilingual=True,
        lang_to_id=lang_to_id,
        task_to_id={"translate": tid("<|translate|>"), "transcribe": tid("<|transcribe|>")},
        no_timestamps_token_id=tid("<|notimestamps|>"),
        prev_sot_token_id=tid("<|startofprev|>"),
        max_initial_timestamp_index=50,
        begin_suppress_tokens=[tid("Ġ"), eot],
        suppress_tokens=suppress,
        return_timestamps=False,
        alignment_heads=[[SPEC["decoder_layers"] - 1, h] for h in range(SPEC["attention_heads"])],
    )


def build_model(tokenizer: WhisperTokenizer) -> WhisperForConditionalGeneration:
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    eot = _token_id(tokenizer, EOT)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=SPEC["num_mel_bins"],
        d_model=SPEC["d_model"],
        encoder_layers=SPEC["encoder_layers"],
        decoder_layers=SPEC["decoder_layers"],
        encoder_attention_heads=SPEC["attention_heads"],
        decoder_attention_heads=SPEC["attention_heads"],
        encoder_ffn_dim=SPEC["ffn_dim"],
        decoder_ffn_dim=SPEC["ffn_dim"],
        max_source_positions=SPEC["max_source_positions"],
        max_target_positions=SPEC["max_target_positions"],
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=_token_id(tokenizer, SOT),
    )
    torch.manual_seed(SPEC["seed"])
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = build_generation_config(tokenizer)
    return model


def build_processor(tokenizer: WhisperTokenizer) -> WhisperProcessor:
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    features = WhisperFeatureExtractor(
        feature_size=SPEC["num_mel_bins"], sampling_rate=SPEC["sampling_rate"]
    )
    return WhisperProcessor(feature_extractor=features, tokenizer=tokenizer)


def write(path: Path) -> None:
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(path)
    build_processor(tokenizer).save_pretrained(path)


DEMO = DemoModel(
    name="demo-whisper",
    spec=SPEC,
    metadata=store.make_metadata(
        "speech-recognition",
        "demo",
        "transformers",
        sampling_rate=SPEC["sampling_rate"],
        seed=SPEC["seed"],
    ),
    write=write,
)
