"""Audio decoding, resampling and chunking."""

from __future__ import annotations

import numpy as np
import pytest

from contract import audio
from contract.audio import AudioError, AudioTooLong
from tests.media import audio_bytes, peak_hz, tone


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_every_format_decodes_to_mono_16k_keeping_the_pitch(fmt: str) -> None:
    left = tone(2.0, 440, 44_100)
    stereo = np.stack([left, left], axis=1)
    samples = audio.decode(audio_bytes(stereo, 44_100, fmt), max_seconds=10)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert len(samples) == pytest.approx(32_000, abs=1200)  # MP3 adds encoder padding
    assert peak_hz(samples[4000:20000], 16_000) == pytest.approx(440, abs=2)
    assert 0.3 < np.abs(samples).max() < 0.5


def test_channels_are_averaged() -> None:
    stereo = np.stack([tone(1.0, 300, 16_000), np.zeros(16_000, np.float32)], axis=1)
    samples = audio.decode(audio_bytes(stereo, 16_000, "FLAC"), max_seconds=10)
    assert np.abs(samples).max() == pytest.approx(0.2, abs=0.01)


def test_upsampling_keeps_the_pitch() -> None:
    samples = audio.resample(tone(1.0, 1000, 8000), 8000, 16_000)
    assert len(samples) == 16_000
    assert peak_hz(samples, 16_000) == pytest.approx(1000, abs=2)


def test_the_same_rate_passes_samples_through() -> None:
    samples = tone(0.5, 440, 16_000)
    np.testing.assert_array_equal(audio.resample(samples, 16_000, 16_000), samples)


def test_frequencies_above_the_new_nyquist_are_filtered_out() -> None:
    kept = audio.resample(tone(1.0, 6000, 44_100), 44_100, 16_000)
    aliased = audio.resample(tone(1.0, 12_000, 44_100), 44_100, 16_000)
    assert np.sqrt(np.mean(kept[1000:-1000] ** 2)) > 0.27  # 0.28 in: passband
    assert np.sqrt(np.mean(aliased[1000:-1000] ** 2)) < 0.01  # no alias at 4 kHz


@pytest.mark.parametrize(("rate", "n"), [(44_100, 44_100), (22_050, 1), (48_000, 12_345)])
def test_resampled_length_is_the_ceiling_of_the_ratio(rate: int, n: int) -> None:
    out = audio.resample(np.zeros(n, np.float32), rate, 16_000)
    assert len(out) == -(-n * 16_000 // rate)


def test_audio_over_the_limit_is_refused() -> None:
    with pytest.raises(AudioTooLong, match="limit is 2 s"):
        audio.decode(audio_bytes(tone(3.0, 440, 8000), 8000), max_seconds=2)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"RIFF....WAVEfmt this is not audio" * 10, "not WAV, FLAC, OGG or MP3"),
        (audio_bytes(tone(1.0, 440, 16_000), 16_000, "FLAC")[:2000], "corrupt"),
        (audio_bytes(np.zeros(0, np.float32), 16_000), "no samples"),
    ],
)
def test_bad_audio_raises_audio_error(data: bytes, message: str) -> None:
    with pytest.raises(AudioError, match=message):
        audio.decode(data, max_seconds=10)


def test_long_audio_is_split_into_30_second_chunks_with_start_times() -> None:
    samples = np.zeros(65 * 16_000, np.float32)
    pieces = list(audio.chunks(samples))
    assert [start for start, _ in pieces] == [0.0, 30.0, 60.0]
    assert [len(piece) for _, piece in pieces] == [480_000, 480_000, 80_000]
    np.testing.assert_array_equal(np.concatenate([p for _, p in pieces]), samples)


@pytest.mark.parametrize(("seconds", "count"), [(0.5, 1), (30.0, 1), (60.0, 2), (60.01, 3)])
def test_chunk_count(seconds: float, count: int) -> None:
    assert len(list(audio.chunks(np.zeros(int(seconds * 16_000), np.float32)))) == count
