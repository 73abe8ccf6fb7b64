"""Benchmark models: the full ResNet-50 and Whisper-tiny architectures with random weights.

Written into whatever BentoML store BENTOML_HOME names (the benchmark uses a temporary one).
Random weights cost the same FLOPs as trained ones; Whisper-tiny keeps its 51,865-token vocabulary
(the LM head is a real share of decoding cost) over the demo tokenizer, whose tokens come first.
"""

from __future__ import annotations

from pathlib import Path

from models import preprocessing, store

RESNET50 = "bench-resnet50"
WHISPER_TINY = "bench-whisper-tiny"
IMAGENET_CLASSES = 1000


def create_resnet50() -> store.StoredModel:
    """transformers' ResNetConfig() defaults are ResNet-50 (bottleneck, depths 3-4-6-3)."""
    labels = [f"class {i}" for i in range(IMAGENET_CLASSES)]

    def write(path: Path) -> None:
        import torch
        from transformers import ResNetConfig, ResNetForImageClassification

        torch.manual_seed(0)
        config = ResNetConfig(id2label=dict(enumerate(labels)))  # 1000 classes
        ResNetForImageClassification(config).eval().save_pretrained(path)

    metadata = store.make_metadata(
        "image-classification",
        "bench",
        "transformers",
        labels=labels,
        preprocessing=preprocessing.imagenet(),
    )
    return store.save(RESNET50, metadata, write)


def create_whisper_tiny() -> store.StoredModel:
    def write(path: Path) -> None:
        import torch
        from transformers import WhisperConfig, WhisperForConditionalGeneration

        from models import demo_whisper

        tokenizer = demo_whisper.build_tokenizer()
        vocab = tokenizer.get_vocab()
        eot = vocab[demo_whisper.EOT]
        config = WhisperConfig(  # openai/whisper-tiny's config.json
            vocab_size=51865,
            num_mel_bins=80,
            d_model=384,
            encoder_layers=4,
            decoder_layers=4,
            encoder_attention_heads=6,
            decoder_attention_heads=6,
            encoder_ffn_dim=1536,
            decoder_ffn_dim=1536,
            max_source_positions=1500,
            max_target_positions=448,
            pad_token_id=eot,
            bos_token_id=eot,
            eos_token_id=eot,
            decoder_start_token_id=vocab[demo_whisper.SOT],
        )
        torch.manual_seed(0)
        model = WhisperForConditionalGeneration(config).eval()
        model.generation_config = demo_whisper.build_generation_config(tokenizer)
        model.save_pretrained(path)
        demo_whisper.build_processor(tokenizer).save_pretrained(path)

    metadata = store.make_metadata(
        "speech-recognition", "bench", "transformers", sampling_rate=16000
    )
    return store.save(WHISPER_TINY, metadata, write)
