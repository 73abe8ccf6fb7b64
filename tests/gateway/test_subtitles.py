"""SRT and WebVTT rendering of transcript segments."""

from __future__ import annotations

import pytest

from gateway.api.subtitles import timestamp, to_srt, to_vtt


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0, "00:00:00,000", "00:00:00.000"),
        (1.5, "00:00:01,500", "00:00:01.500"),
        (59.9996, "00:01:00,000", "00:01:00.000"),  # rounds to the nearest millisecond
        (3661.042, "01:01:01,042", "01:01:01.042"),
        (-0.2, "00:00:00,000", "00:00:00.000"),
    ],
)
def test_timestamps(seconds: float, srt: str, vtt: str) -> None:
    assert timestamp(seconds, decimal=",") == srt
    assert timestamp(seconds, decimal=".") == vtt


CUES = [(0.0, 30.0, " Hello there. "), (30.0, 42.25, "General\n\nKenobi")]


def test_srt_numbers_cues_from_one_and_separates_them_by_blank_lines() -> None:
    assert to_srt(CUES) == (
        "1\n00:00:00,000 --> 00:00:30,000\nHello there.\n\n"
        "2\n00:00:30,000 --> 00:00:42,250\nGeneral\nKenobi\n\n"
    )


def test_vtt_has_its_header_and_dotted_milliseconds() -> None:
    assert to_vtt(CUES) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:30.000\nHello there.\n\n"
        "00:00:30.000 --> 00:00:42.250\nGeneral\nKenobi\n\n"
    )


def test_no_cues() -> None:
    assert to_srt([]) == ""
    assert to_vtt([]) == "WEBVTT\n\n"


def test_an_arrow_in_the_text_cannot_start_a_new_timing_line() -> None:
    assert "a -> b" in to_vtt([(0, 1, "a --> b")])
