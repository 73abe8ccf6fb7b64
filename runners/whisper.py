"""Whisper through `transformers`: a loaded model and processor, usable without a server."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.speech import Clip, ClipText, Options

log = logging.getLogger("runners.speech")


class Whisper:
    """A loaded Whisper model and processor; a plain class, usable without a server."""

    def __init__(
        self, model: Any, processor: Any, *, device: torch.device, max_new_tokens: int
    ) -> None:
        self.model = model
        self.processor = processor
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.sampling_rate = int(processor.feature_extractor.sampling_rate)
        lang_to_id: Mapping[str, int] = getattr(model.generation_config, "lang_to_id", None) or {}
        self._lang_codes = {token.strip("<|>"): token_id for token, token_id in lang_to_id.items()}
        self._id_to_lang = {token_id: code for code, token_id in self._lang_codes.items()}
        # Whisper's special and timestamp tokens all come after the text vocabulary
        self._first_special = min(processor.tokenizer.all_special_ids)
        no_timestamps = getattr(model.generation_config, "no_timestamps_token_id", None)
        self._text_only = None if no_timestamps is None else TextOnly(no_timestamps + 1)
        vocab = processor.tokenizer.get_vocab()  # older checkpoints name it <|nocaptions|>
        self._no_speech = vocab.get("<|nospeech|>", vocab.get("<|nocaptions|>"))
        eos = model.generation_config.eos_token_id
        self._eos = torch.tensor(eos if isinstance(eos, list) else [eos])

    @classmethod
    def load(cls, path: str | Path, *, device: torch.device, max_new_tokens: int) -> Whisper:
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        processor = WhisperProcessor.from_pretrained(path)
        model = WhisperForConditionalGeneration.from_pretrained(path)
        model = model.to(device).eval()  # type: ignore[arg-type]  # transformers' stub is off
        return cls(model, processor, device=device, max_new_tokens=max_new_tokens)

    @property
    def languages(self) -> dict[str, str]:
        """The language codes this model takes, with OpenAI's names for them ("de": "german")."""
        from transformers.models.whisper.tokenization_whisper import LANGUAGES

        return {code: LANGUAGES.get(code, code) for code in sorted(self._lang_codes)}

    def transcribe(self, clips: Sequence[Clip]) -> list[ClipText]:
        """One result per clip, in order; a failing options group fails only its own items."""
        results = [ClipText() for _ in clips]
        for options, indices in group_by_options(clips).items():
            try:
                texts = self._generate([clips[i].audio for i in indices], *options)
            except Exception as exc:
                log.exception("transcription failed for %d clip(s)", len(indices))
                texts = [ClipText(error=f"{type(exc).__name__}: {exc}")] * len(indices)
            for i, text in zip(indices, texts, strict=True):
                results[i] = text
        return results

    def _generate(
        self,
        audios: list[np.ndarray],
        language: str | None,
        prompt: str | None,
        temperature: float,
        task: str = "transcribe",
    ) -> list[ClipText]:
        features = self.processor.feature_extractor(
            audios, sampling_rate=self.sampling_rate, return_tensors="pt"
        ).input_features.to(self.device)
        kwargs = self._generate_kwargs(language, prompt, temperature, task)
        with torch.inference_mode():
            encoded = self.model.get_encoder()(features)  # once, for both uses below
            no_speech = self._no_speech_probs(encoded, kwargs.get("prompt_ids"))
            # the dict's sequences keep Whisper's start tokens, which name the detected language
            out = self.model.generate(
                encoder_outputs=encoded, return_dict_in_generate=True, output_scores=True, **kwargs
            )
            avg_logprobs = self._avg_logprobs(out.sequences, out.scores)
        rows = [self._after_prompt(row) for row in out.sequences.tolist()]
        texts = self.processor.batch_decode(rows, skip_special_tokens=True)
        return [
            ClipText(
                text=text.strip(),
                tokens=[t for t in row if t < self._first_special],
                language=language or self._detected(row),
                avg_logprob=avg_logprob,
                no_speech_prob=None if no_speech is None else no_speech[i],
            )
            for i, (text, row, avg_logprob) in enumerate(
                zip(texts, rows, avg_logprobs.tolist(), strict=True)
            )
        ]

    def _no_speech_probs(self, encoded: Any, prompt_ids: torch.Tensor | None) -> list[float] | None:
        """P(<|nospeech|>) after <|startoftranscript|> (and the prompt), as OpenAI's Whisper
        computes it: one decoder step over the encoder output that `generate` reuses."""
        if self._no_speech is None:
            return None
        start = torch.tensor([self.model.generation_config.decoder_start_token_id])
        prefix = start if prompt_ids is None else torch.cat([prompt_ids.cpu(), start])
        batch = encoded.last_hidden_state.shape[0]
        ids = prefix.to(self.device).expand(batch, -1)
        logits = self.model(encoder_outputs=encoded, decoder_input_ids=ids).logits[:, -1]
        return torch.softmax(logits.float(), dim=-1)[:, self._no_speech].tolist()

    def _avg_logprobs(
        self, sequences: torch.Tensor, scores: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """Mean log-probability of each row's generated tokens through its first end-of-text."""
        logprobs = self.model.compute_transition_scores(sequences, scores, normalize_logits=True)
        generated = sequences[:, -logprobs.shape[1] :].cpu()
        eos = torch.isin(generated, self._eos).int()
        after_eos = (eos.cumsum(dim=1) - eos) > 0  # padding once a row has ended
        total = logprobs.cpu().float().masked_fill(after_eos, 0.0).sum(dim=1)
        return total / (~after_eos).sum(dim=1).clamp(min=1)

    def _generate_kwargs(
        self, language: str | None, prompt: str | None, temperature: float, task: str = "transcribe"
    ) -> dict[str, Any]:
        # Whisper reads max_length as tokens after its own start tokens and prompt, capped at
        # max_target_positions (max_new_tokens would log a clash with the saved max_length).
        kwargs: dict[str, Any] = {"max_length": self.max_new_tokens}
        if self._text_only is not None:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList([self._text_only])
        if self._lang_codes:
            kwargs["task"] = task  # translate: Whisper's own task, into English
        elif task != "transcribe":
            raise ValueError("this Whisper model is English-only: it cannot translate")
        if language:
            kwargs["language"] = language
        if prompt:
            kwargs["prompt_ids"] = self._prompt_ids(prompt)
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature)
        else:
            kwargs["do_sample"] = False
        return kwargs

    def _prompt_ids(self, prompt: str) -> torch.Tensor:
        """Whisper's prompt: <|startofprev|> and at most the last half-context of tokens."""
        ids = self.processor.get_prompt_ids(prompt, return_tensors="pt")
        keep = self.model.config.max_target_positions // 2 - 1
        if len(ids) > keep + 1:
            ids = torch.cat([ids[:1], ids[-keep:]])
        return ids.to(self.device)

    def _after_prompt(self, row: list[int]) -> list[int]:
        """The tokens from <|startoftranscript|> on: a prompt before it is not transcript."""
        start = self.model.generation_config.decoder_start_token_id
        return row[row.index(start) :] if start in row else row

    def _detected(self, row: list[int]) -> str | None:
        return next((self._id_to_lang[t] for t in row[:4] if t in self._id_to_lang), None)


class TextOnly:
    """A logits processor that masks every token from the first timestamp on.

    The prompt holds <|notimestamps|>, so a trained Whisper emits no timestamp tokens anyway; one
    that does (random weights) would decode to an empty string. A slice costs nothing per step,
    where `suppress_tokens` with ~1,500 ids runs `torch.isin` over the vocabulary every step.
    """

    def __init__(self, first_timestamp: int) -> None:
        self.first_timestamp = first_timestamp

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, self.first_timestamp :] = float("-inf")
        return scores


def group_by_options(clips: Sequence[Clip]) -> dict[Options, list[int]]:
    """Item indices by decoding options, in first-seen order."""
    groups: dict[Options, list[int]] = {}
    for i, clip in enumerate(clips):
        groups.setdefault(clip.options(), []).append(i)
    return groups
