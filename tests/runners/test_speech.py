"""The Whisper wrapper behind the speech runner, on the locally built tiny demo Whisper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contract.speech import Clip
from runners.whisper import Whisper, group_by_options
from tests.media import tone


@pytest.fixture(scope="module")
def whisper(tmp_path_factory: pytest.TempPathFactory) -> Whisper:
    from models import demo_whisper

    path = tmp_path_factory.mktemp("demo-whisper")
    demo_whisper.write(path)
    return Whisper.load(path, device=torch.device("cpu"), max_new_tokens=12)


def noise(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)


CLIPS = [tone(2.0, 440, 16_000), noise(3.0, 1), tone(1.0, 200, 16_000)]


def test_group_by_options_keeps_first_seen_order() -> None:
    clips = [
        Clip(audio=CLIPS[0]),
        Clip(audio=CLIPS[1], language="de"),
        Clip(audio=CLIPS[2]),
        Clip(audio=CLIPS[0], prompt="", temperature=0.0),  # an empty prompt is no prompt
        Clip(audio=CLIPS[1], task="translate"),
    ]
    assert list(group_by_options(clips).items()) == [
        ((None, None, 0.0, "transcribe"), [0, 2, 3]),
        (("de", None, 0.0, "transcribe"), [1]),
        ((None, None, 0.0, "translate"), [4]),
    ]


def test_one_result_per_clip_and_each_equals_the_clip_alone(whisper: Whisper) -> None:
    together = whisper.transcribe([Clip(audio=a) for a in CLIPS])
    alone = [whisper.transcribe([Clip(audio=a)])[0] for a in CLIPS]
    exact = {"text", "tokens", "language", "error"}  # the floats differ in the last bits by batch
    assert [r.model_dump(include=exact) for r in together] == [
        r.model_dump(include=exact) for r in alone
    ]
    for t, a in zip(together, alone, strict=True):
        assert t.avg_logprob == pytest.approx(a.avg_logprob, rel=1e-4)
        assert t.no_speech_prob == pytest.approx(a.no_speech_prob, rel=1e-3)
    assert all(r.error is None and r.text and r.tokens for r in together)


def test_quality_signals_are_a_log_probability_and_a_probability(whisper: Whisper) -> None:
    for result in whisper.transcribe([Clip(audio=a) for a in CLIPS]):
        assert result.avg_logprob is not None and result.no_speech_prob is not None
        assert result.avg_logprob < 0 and 0 < result.no_speech_prob < 1


def test_avg_logprob_stops_at_the_first_end_of_text(whisper: Whisper) -> None:
    eos = int(whisper._eos[0])
    # after the start token 7: row 0 decodes 5, eos, then padding; row 1 decodes 5, 6, 6
    sequences = torch.tensor([[7, 5, eos, eos], [7, 5, 6, 6]])
    chosen_probs = [[0.5, 0.25, 0.001], [0.5, 0.5, 0.125]]
    vocab = whisper.model.config.vocab_size
    scores = []
    for step in range(3):
        probs = torch.zeros(2, vocab)
        for row in range(2):
            probs[row, 0] = 1 - chosen_probs[row][step]  # the rest of the mass elsewhere
            probs[row, sequences[row, step + 1]] = chosen_probs[row][step]
        scores.append(probs.log())
    averages = whisper._avg_logprobs(sequences, tuple(scores)).tolist()
    assert averages == pytest.approx(
        [np.log([0.5, 0.25]).mean(), np.log([0.5, 0.5, 0.125]).mean()], rel=1e-5
    )


def test_detected_or_requested_language_is_reported(whisper: Whisper) -> None:
    detected, requested = whisper.transcribe(
        [Clip(audio=CLIPS[0]), Clip(audio=CLIPS[0], language="de")]
    )
    assert detected.language in whisper.languages
    assert requested.language == "de"


def test_the_prompt_conditions_but_is_not_part_of_the_text(whisper: Whisper) -> None:
    (prompted,) = whisper.transcribe([Clip(audio=CLIPS[1], prompt="zebra zebra zebra")])
    assert prompted.error is None and prompted.text
    assert "zebra" not in prompted.text


def test_a_failing_options_group_fails_only_its_own_clips(whisper: Whisper) -> None:
    good, bad, good_again = whisper.transcribe(
        [Clip(audio=CLIPS[0]), Clip(audio=CLIPS[1], language="xx"), Clip(audio=CLIPS[2])]
    )
    assert bad.error and "xx" in bad.error
    assert good.error is None and good_again.error is None and good.text


def test_sampling_with_temperature_runs(whisper: Whisper) -> None:
    (result,) = whisper.transcribe([Clip(audio=CLIPS[0], temperature=0.8)])
    assert result.error is None and len(result.tokens) <= 12


def test_info_lists_language_codes(whisper: Whisper) -> None:
    assert {"en", "de", "fr"} <= set(whisper.languages)
    assert whisper.sampling_rate == 16_000


def test_translate_runs_whispers_translate_task(whisper: Whisper) -> None:
    transcribed, translated = whisper.transcribe(
        [Clip(audio=CLIPS[1], language="de"), Clip(audio=CLIPS[1], language="de", task="translate")]
    )
    assert transcribed.error is None and translated.error is None
    assert translated.tokens != transcribed.tokens  # the task token changes what is decoded
    alone = whisper.transcribe([Clip(audio=CLIPS[1], language="de", task="translate")])[0]
    assert alone.tokens == translated.tokens  # batching did not mix the two tasks up
