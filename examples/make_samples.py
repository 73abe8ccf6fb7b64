"""Make the README's sample inputs: examples/cat.jpg and examples/speech.wav.

    .venv/bin/python examples/make_samples.py

Both are drawn here, not downloaded: a cartoon cat's face (a 224x224 JPEG) and a second and a
half of a voice-like sound (a 140 Hz buzz through the formants of "a", "i" and "u", 8 kHz mono
16-bit WAV). The demo models have random weights, so what they answer for these is arbitrary;
the files exercise every step of decoding and preprocessing. Deterministic: rerunning writes
the same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def cat() -> bytes:
    image = Image.new("RGB", (224, 224), (120, 170, 210))
    draw = ImageDraw.Draw(image)
    fur, ear, dark = (230, 150, 60), (240, 180, 170), (40, 30, 30)
    draw.polygon([(40, 110), (60, 30), (100, 80)], fill=fur)  # ears
    draw.polygon([(184, 110), (164, 30), (124, 80)], fill=fur)
    draw.polygon([(55, 95), (63, 50), (88, 82)], fill=ear)
    draw.polygon([(169, 95), (161, 50), (136, 82)], fill=ear)
    draw.ellipse((35, 60, 189, 200), fill=fur)  # head
    for x in (80, 144):  # eyes
        draw.ellipse((x - 14, 100, x + 14, 128), fill=(120, 200, 80))
        draw.ellipse((x - 4, 102, x + 4, 126), fill=dark)
    draw.polygon([(104, 140), (120, 140), (112, 150)], fill=(220, 100, 120))  # nose
    draw.line([(112, 150), (112, 160)], fill=dark, width=2)
    draw.arc((92, 150, 112, 170), 0, 180, fill=dark, width=2)
    draw.arc((112, 150, 132, 170), 0, 180, fill=dark, width=2)
    for dy in (-8, 0, 8):  # whiskers
        draw.line([(95, 150 + dy), (30, 145 + 2 * dy)], fill=dark, width=1)
        draw.line([(129, 150 + dy), (194, 145 + 2 * dy)], fill=dark, width=1)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


def speech(rate: int = 8000, seconds: float = 1.5) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    pitch = 140 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))  # a little intonation
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    buzz = np.sum([np.sin(k * phase) / k for k in range(1, 25)], axis=0)
    vowels = [(730, 1090), (270, 2290), (300, 870)]  # formants of "a", "i", "u"
    part = len(t) // len(vowels)
    voice = np.zeros_like(t)
    for i, formants in enumerate(vowels):
        span = slice(i * part, (i + 1) * part if i < len(vowels) - 1 else len(t))
        carrier = np.sum([np.sin(2 * np.pi * f * t[span]) for f in formants], axis=0)
        voice[span] = buzz[span] * (1 + carrier) * np.hanning(len(t[span]))
    voice = 0.6 * voice / np.abs(voice).max()
    out = io.BytesIO()
    sf.write(out, voice.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return out.getvalue()


def main() -> None:
    for name, data in (("cat.jpg", cat()), ("speech.wav", speech())):
        (HERE / name).write_bytes(data)
        print(f"examples/{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
