"""Audio decoding for speech recognition: any file soundfile reads, as mono 16 kHz float32.

Pure functions over soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3) and numpy::

    samples = decode(data, max_seconds=600)        # mono, 16 kHz, float32 in [-1, 1]
    for start, piece in chunks(samples):           # 30 s windows, Whisper's input size
        ...
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SAMPLE_RATE = 16_000
CHUNK_SECONDS = 30.0


class AudioError(ValueError):
    """The bytes are not audio this service can transcribe (empty, corrupt, unsupported)."""


class AudioTooLong(AudioError):
    """The audio lasts longer than allowed."""


def decode(data: bytes, *, max_seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples at `sample_rate`, refusing files over `max_seconds` before decoding."""
    if not data:
        raise AudioError("The audio file is empty.")
    import soundfile as sf  # libsndfile loads on first use, not with the gateway

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            source_rate = f.samplerate
            _check_duration(f.frames / source_rate, max_seconds)
            frames = f.read(dtype="float32", always_2d=True)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        detail = (getattr(exc, "error_string", None) or str(exc)).strip().rstrip(".")
        raise AudioError(
            f"The file is not WAV, FLAC, OGG or MP3 audio, or it is corrupt ({detail})."
        ) from None
    if frames.shape[0] == 0:
        raise AudioError("The audio file has no samples.")
    _check_duration(frames.shape[0] / source_rate, max_seconds)  # MP3 headers can understate
    return resample(frames.mean(axis=1), source_rate, sample_rate)


def _check_duration(seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise AudioTooLong(f"The audio lasts {seconds:.1f} s; the limit is {max_seconds:g} s.")


def resample(samples: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling (windowed sinc, polyphase), as torchaudio's `resample` does it."""
    if source_rate <= 0 or target_rate <= 0:
        raise ValueError("sample rates must be positive")
    samples = np.asarray(samples, dtype=np.float32)
    if source_rate == target_rate or samples.size == 0:
        return samples
    gcd = math.gcd(source_rate, target_rate)
    orig, new = source_rate // gcd, target_rate // gcd
    kernel, width = _sinc_kernel(orig, new)  # (new, taps): one filter per output phase
    wave = np.pad(samples, (width, width + orig))
    frames = sliding_window_view(wave, kernel.shape[1])[::orig]  # a view: no copy
    out = np.empty((frames.shape[0], new), dtype=np.float32)
    for i in range(0, frames.shape[0], RESAMPLE_BLOCK):  # bounded scratch memory
        np.matmul(frames[i : i + RESAMPLE_BLOCK], kernel.T, out=out[i : i + RESAMPLE_BLOCK])
    return out.reshape(-1)[: math.ceil(new * samples.size / orig)]


RESAMPLE_BLOCK = 4096  # input frames per matrix product


def _sinc_kernel(
    orig: int, new: int, *, zeros: int = 6, rolloff: float = 0.99
) -> tuple[np.ndarray, int]:
    """Hann-windowed sinc filters, one per output phase, cut off below the lower Nyquist rate."""
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    t = (np.arange(0, -new, -1, dtype=np.float64)[:, None] / new + idx) * base
    t = np.clip(t, -zeros, zeros)
    window = np.cos(t * math.pi / zeros / 2) ** 2
    sinc = np.sinc(t)  # sin(pi t) / (pi t), 1 at 0
    return (sinc * window * base / orig).astype(np.float32), width


def chunks(
    samples: np.ndarray, *, seconds: float = CHUNK_SECONDS, sample_rate: int = SAMPLE_RATE
) -> Iterator[tuple[float, np.ndarray]]:
    """Consecutive windows of at most `seconds`, each with its start time in seconds."""
    size = int(seconds * sample_rate)
    for start in range(0, len(samples), size):
        yield start / sample_rate, samples[start : start + size]


def duration(samples: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> float:
    return len(samples) / sample_rate
