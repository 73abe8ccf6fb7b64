"""The Encoder behind the embedding runner, on the locally built tiny demo BERT (demo-embed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from contract.embedding import EmbedInput
from runners.encoder import Encoder, pool

TEXTS = [
    "Hello! How are you today?",
    "A red fox crossed the field at dawn, and a great white shark swam far out in the sea.",
    "coffee",
    "The weather report said that it would rain in the afternoon, so she took an umbrella.",
]


@pytest.fixture(scope="module")
def demo_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from models import demo_embed

    path = tmp_path_factory.mktemp("demo-embed")
    demo_embed.write(path)
    return path


@pytest.fixture(scope="module")
def encoder(demo_path: Path) -> Encoder:
    from models import demo_embed

    return Encoder.load(demo_path, demo_embed.DEMO.metadata, device=torch.device("cpu"))


def vectors(encoder: Encoder, items: list[EmbedInput]) -> np.ndarray:
    results = encoder.embed(items)
    assert all(r.error is None for r in results), [r.error for r in results]
    return np.stack([r.embedding for r in results])


def test_the_demo_serves_what_its_metadata_says(encoder: Encoder) -> None:
    from models import demo_embed

    meta = demo_embed.DEMO.metadata
    assert meta["task"] == "feature-extraction"
    assert (encoder.pooling, encoder.normalize) == (meta["pooling"], meta["normalize"])
    assert (encoder.pooling, encoder.normalize) == ("mean", True)
    assert encoder.dimensions == meta["dimensions"] == 128
    assert encoder.max_tokens == meta["max_length"] == 512
    assert encoder.vocab_size == len(encoder.tokenizer)


def test_a_batch_gives_what_each_input_gives_alone(encoder: Encoder) -> None:
    together = vectors(encoder, [EmbedInput(text=t) for t in TEXTS])
    alone = np.stack([vectors(encoder, [EmbedInput(text=t)])[0] for t in TEXTS])
    assert together.shape == (len(TEXTS), 128) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert not np.allclose(together[0], together[1])  # different texts, different vectors


def test_small_forward_groups_give_the_same_vectors(encoder: Encoder, demo_path: Path) -> None:
    from models import demo_embed

    small = Encoder.load(
        demo_path, demo_embed.DEMO.metadata, device=torch.device("cpu"), batch_size=3
    )
    items = [EmbedInput(text=t) for t in TEXTS * 2]
    np.testing.assert_allclose(vectors(small, items), vectors(encoder, items), atol=1e-5)


def test_vectors_have_unit_length(encoder: Encoder) -> None:
    norms = np.linalg.norm(vectors(encoder, [EmbedInput(text=t) for t in TEXTS]), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_mean_pooling_is_over_the_inputs_own_tokens_only(encoder: Encoder) -> None:
    """By hand: the mean of the unpadded sequence's token states, normalized."""
    ids = encoder.tokenizer(TEXTS[2])["input_ids"]
    with torch.inference_mode():
        states = encoder.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    by_hand = torch.nn.functional.normalize(states.mean(dim=0), dim=0).numpy()
    # batched with a much longer text, so this one is padded
    padded = vectors(encoder, [EmbedInput(text=TEXTS[1]), EmbedInput(text=TEXTS[2])])[1]
    np.testing.assert_allclose(padded, by_hand, atol=1e-5)


def test_token_ids_embed_like_their_text_and_tokens_count_the_special_ones(
    encoder: Encoder,
) -> None:
    ids = encoder.tokenizer(TEXTS[0])["input_ids"]
    assert ids[0] == encoder.tokenizer.cls_token_id and ids[-1] == encoder.tokenizer.sep_token_id
    by_text, by_ids = encoder.embed([EmbedInput(text=TEXTS[0]), EmbedInput(ids=ids)])
    assert by_text.tokens == by_ids.tokens == len(ids)
    np.testing.assert_allclose(by_text.embedding, by_ids.embedding, atol=1e-6)


def test_bad_inputs_are_refused_one_by_one(encoder: Encoder) -> None:
    long_text = " ".join(["coffee"] * 600)
    good, too_long, out_of_vocab, empty, good_again = encoder.embed(
        [
            EmbedInput(text=TEXTS[0]),
            EmbedInput(text=long_text),
            EmbedInput(ids=[2, encoder.vocab_size, 3]),
            EmbedInput(ids=[]),
            EmbedInput(text=TEXTS[2]),
        ]
    )
    assert too_long.code == "context_length_exceeded" and too_long.tokens == 602
    assert "602 tokens" in (too_long.error or "") and too_long.embedding.size == 0
    assert out_of_vocab.code == "invalid_input" and empty.code == "invalid_input"
    assert good.error is None and good_again.error is None
    np.testing.assert_allclose(
        good.embedding, vectors(encoder, [EmbedInput(text=TEXTS[0])])[0], atol=1e-5
    )


def test_max_tokens_lowers_the_models_limit_never_raises_it(demo_path: Path) -> None:
    from models import demo_embed

    meta = demo_embed.DEMO.metadata
    cpu = torch.device("cpu")
    assert Encoder.load(demo_path, meta, device=cpu, max_tokens=8).max_tokens == 8
    assert Encoder.load(demo_path, meta, device=cpu, max_tokens=4096).max_tokens == 512
    short = Encoder.load(demo_path, meta, device=cpu, max_tokens=8)
    (refused,) = short.embed([EmbedInput(text=TEXTS[1])])
    assert refused.code == "context_length_exceeded"


def test_a_failing_forward_fails_its_group_with_an_error(
    encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(rows: object) -> np.ndarray:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(encoder, "vectors", boom)
    results = encoder.embed([EmbedInput(text="a"), EmbedInput(text="b")])
    assert all(r.error == "RuntimeError: out of memory" and r.code is None for r in results)


def test_pool_ignores_padding_for_every_mode() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # last token is padding
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "max").tolist() == [[3.0, 4.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]
    assert pool(hidden, mask, "last").tolist() == [[3.0, 4.0]]


def test_unknown_pooling_fails_loudly(encoder: Encoder) -> None:
    with pytest.raises(ValueError, match="pooling"):
        Encoder(
            encoder.model,
            encoder.tokenizer,
            pooling="weightedmean",  # type: ignore[arg-type]
            normalize=True,
            max_tokens=8,
            device=torch.device("cpu"),
        )
