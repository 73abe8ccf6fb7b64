"""demo-whisper: feature extraction -> generate -> batch_decode, with the real Whisper plumbing."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from models import store
from tests.models.conftest import DemoStore

SR = 16000


def tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.4 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture(scope="module")
def whisper(demo_store: DemoStore) -> tuple[Any, Any]:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    path = store.resolve("demo-whisper").path
    model = WhisperForConditionalGeneration.from_pretrained(path).eval()
    return WhisperProcessor.from_pretrained(path), model


def generate(whisper: tuple[Any, Any], audio: list[np.ndarray], **kwargs: Any) -> Any:
    processor, model = whisper
    features = processor(audio, sampling_rate=SR, return_tensors="pt").input_features
    assert features.shape == (len(audio), 80, 3000)
    with torch.inference_mode():
        return model.generate(features, max_new_tokens=24, **kwargs)


@pytest.mark.parametrize("clips", [[tone(1.0, 440)], [tone(1.0, 440), tone(0.5, 220)]])
def test_transcribes_to_strings(whisper: tuple[Any, Any], clips: list[np.ndarray]) -> None:
    ids = generate(whisper, clips, language="en", task="transcribe")
    texts = whisper[0].batch_decode(ids, skip_special_tokens=True)
    assert len(texts) == len(clips)
    assert all(isinstance(t, str) and "<|" not in t for t in texts)


def test_language_detection_and_translate(whisper: tuple[Any, Any]) -> None:
    ids = generate(whisper, [tone(1.0, 440)], task="translate")
    assert isinstance(whisper[0].batch_decode(ids, skip_special_tokens=True)[0], str)


def test_timestamps(whisper: tuple[Any, Any]) -> None:
    processor, _ = whisper
    ids = generate(whisper, [tone(1.0, 440)], language="en", return_timestamps=True)
    decoded = processor.tokenizer.decode(ids[0], output_offsets=True)
    assert isinstance(decoded["text"], str)
    for offset in decoded["offsets"]:
        start, end = offset["timestamp"]
        assert 0.0 <= start <= end  # past 30 s is fine: a timestamp going back opens a segment


def test_generation_config(whisper: tuple[Any, Any]) -> None:
    processor, model = whisper
    config = model.generation_config
    tok = processor.tokenizer
    assert config.decoder_start_token_id == tok.convert_tokens_to_ids("<|startoftranscript|>")
    assert config.lang_to_id["<|ko|>"] == tok.convert_tokens_to_ids("<|ko|>")
    assert config.task_to_id["transcribe"] == tok.convert_tokens_to_ids("<|transcribe|>")
    assert config.no_timestamps_token_id + 1 == tok.convert_tokens_to_ids("<|0.00|>")
    assert tok.convert_tokens_to_ids("<|30.00|>") == len(tok) - 1 == model.config.vocab_size - 1
    assert processor.feature_extractor.sampling_rate == SR
