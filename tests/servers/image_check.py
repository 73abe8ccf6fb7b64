"""One request per modality against a running bundle (the container image's check).

python -m tests.servers.image_check http://127.0.0.1:3000
"""

from __future__ import annotations

import sys
import time

import httpx

from tests.media import audio_bytes, image_bytes, noise_image, tone


def check(url: str) -> list[str]:
    lines = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, send in [
            ("models", lambda: client.get("/v1/models")),
            ("chat", lambda: client.post("/v1/chat/completions", json={
                "model": "demo-llm", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 8})),
            ("classify", lambda: client.post(
                "/v1/images/classifications", data={"model": "demo-resnet"},
                files={"file": ("x.png", image_bytes(noise_image(1)), "image/png")})),
            ("transcribe", lambda: client.post(
                "/v1/audio/transcriptions", data={"model": "demo-whisper"},
                files={"file": ("x.wav", audio_bytes(tone(2.0, 440, 16_000), 16_000),
                                "audio/wav")})),
            ("embed", lambda: client.post("/v1/embeddings", json={
                "model": "demo-embed", "input": ["a cat", "a dog"]})),
        ]:  # fmt: skip
            started = time.perf_counter()
            r = send()
            r.raise_for_status()
            lines.append(
                f"{name}: {r.status_code} in {(time.perf_counter() - started) * 1e3:.0f} ms"
            )
    return lines


if __name__ == "__main__":
    for line in check(sys.argv[1]):
        print(f"image: {line}")
