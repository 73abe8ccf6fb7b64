"""``demo-embed``: a tiny random BERT encoder with a WordPiece tokenizer trained on the corpus.

Served by the embedding runner (runners/embed.py) with mean pooling over the non-padding tokens
and L2 normalization, as sentence-transformers models are. The tokenizer adds ``[CLS] ... [SEP]``
like BERT's, so token counts include those two.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import store
from models.corpus import corpus_lines, corpus_sha
from models.spec import DemoModel

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import BertModel, PreTrainedTokenizerFast

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)  # ids 0..4, as in BERT's own order of use

SPEC: dict[str, Any] = {
    "seed": 0,
    "corpus": corpus_sha(),
    "special_tokens": list(SPECIAL_TOKENS),
    "vocab_size": 2048,
    "lowercase": True,
    "hidden_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 256,
    "max_position_embeddings": 512,
    "pooling": "mean",
    "normalize": True,
}


def train_wordpiece(vocab_size: int) -> Tokenizer:
    """BERT's uncased WordPiece, trained on the built-in corpus (the vocabulary may stop short)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=SPEC["lowercase"])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus_lines(), trainer)
    return tokenizer


def build_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend = train_wordpiece(SPEC["vocab_size"])
    cls_id, sep_id = backend.token_to_id(CLS), backend.token_to_id(SEP)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token=UNK,
        pad_token=PAD,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
        model_max_length=SPEC["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> BertModel:
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=SPEC["hidden_size"],
        num_hidden_layers=SPEC["num_hidden_layers"],
        num_attention_heads=SPEC["num_attention_heads"],
        intermediate_size=SPEC["intermediate_size"],
        max_position_embeddings=SPEC["max_position_embeddings"],
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SPEC["seed"])
    return BertModel(config).eval()


def write(path: Path) -> None:
    tokenizer = build_tokenizer()
    build_model(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)


DEMO = DemoModel(
    name="demo-embed",
    spec=SPEC,
    metadata=store.make_metadata(
        "feature-extraction",
        "demo",
        "transformers",
        pooling=SPEC["pooling"],
        normalize=SPEC["normalize"],
        dimensions=SPEC["hidden_size"],
        max_length=SPEC["max_position_embeddings"],
        seed=SPEC["seed"],
    ),
    write=write,
)
