"""Audio decoding for speech recognition: any file soundfile reads, as mono 16 kHz float32.

Pure functions over soundfile (libsndfile: WAV, FLAC, OGG/Vorbis/Opus, MP3) and numpy/torch::

    samples = decode(data, max_seconds=600)        # mono, 16 kHz, float32 in [-1, 1]
    for start, piece in chunks(samples):           # 30 s windows, Whisper's input size
        ...
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

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
    kernel, width = _sinc_kernel(orig, new)
    wave = torch.from_numpy(np.ascontiguousarray(samples))[None, None]
    wave = F.pad(wave, (width, width + orig))
    out = F.conv1d(wave, kernel, stride=orig)  # (1, new, frames): one phase per channel
    out = out.transpose(1, 2).reshape(-1)
    return out[: math.ceil(new * samples.size / orig)].numpy()


def _sinc_kernel(
    orig: int, new: int, *, zeros: int = 6, rolloff: float = 0.99
) -> tuple[torch.Tensor, int]:
    """Hann-windowed sinc filters, one per output phase, cut off below the lower Nyquist rate."""
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx) * base
    t = t.clamp(-zeros, zeros)
    window = torch.cos(t * math.pi / zeros / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / torch.where(t == 0, 1.0, t))
    return (sinc * window * base / orig).to(torch.float32), width


def chunks(
    samples: np.ndarray, *, seconds: float = CHUNK_SECONDS, sample_rate: int = SAMPLE_RATE
) -> Iterator[tuple[float, np.ndarray]]:
    """Consecutive windows of at most `seconds`, each with its start time in seconds."""
    size = int(seconds * sample_rate)
    for start in range(0, len(samples), size):
        yield start / sample_rate, samples[start : start + size]


def duration(samples: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> float:
    return len(samples) / sample_rate
