"""SubRip (.srt) and WebVTT (.vtt) renderings of timed transcript segments::

to_srt([(0.0, 2.5, "Hello.")])  ->  "1\\n00:00:00,000 --> 00:00:02,500\\nHello.\\n\\n"
"""

from __future__ import annotations

from collections.abc import Iterable

Cue = tuple[float, float, str]  # start s, end s, text


def timestamp(seconds: float, *, decimal: str) -> str:
    """HH:MM:SS followed by `decimal` and milliseconds; hours grow past 99 if needed."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def to_srt(cues: Iterable[Cue]) -> str:
    blocks = [
        f"{n}\n{timestamp(start, decimal=',')} --> {timestamp(end, decimal=',')}\n{_text(text)}\n"
        for n, (start, end, text) in enumerate(cues, start=1)
    ]
    return "\n".join(blocks) + ("\n" if blocks else "")


def to_vtt(cues: Iterable[Cue]) -> str:
    blocks = [
        f"{timestamp(start, decimal='.')} --> {timestamp(end, decimal='.')}\n{_text(text)}\n"
        for start, end, text in cues
    ]
    return "WEBVTT\n\n" + "\n".join(blocks) + ("\n" if blocks else "")


def _text(text: str) -> str:
    """Cue text without blank lines, which would end the cue early in both formats."""
    lines = [line.strip() for line in text.strip().splitlines()]
    return "\n".join(line for line in lines if line).replace("-->", "->")
