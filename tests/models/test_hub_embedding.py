"""The embedding importer's metadata, derived from model directories laid out as on the Hub.

The directories are written here (no download): sentence-transformers layouts (modules.json,
1_Pooling/config.json, sentence_bert_config.json) and plain transformers encoders.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from models import hub
from models.__main__ import build_parser

ST = "sentence_transformers.models"
ST_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": f"{ST}.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": f"{ST}.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": f"{ST}.Normalize"},
]


def pooling_config(mode: str, dimension: int = 384) -> dict[str, Any]:
    """As sentence-transformers writes 1_Pooling/config.json: one flag per mode."""
    flags = {
        "cls": "pooling_mode_cls_token",
        "mean": "pooling_mode_mean_tokens",
        "max": "pooling_mode_max_tokens",
        "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
        "weightedmean": "pooling_mode_weightedmean_tokens",
        "last": "pooling_mode_lasttoken",
    }
    return {"word_embedding_dimension": dimension, **{f: f == flags[mode] for f in flags.values()}}


def model_dir(
    root: Path,
    *,
    config: dict[str, Any] | None = None,
    modules: list[dict[str, Any]] | None = None,
    pooling: dict[str, Any] | None = None,
    sbert: dict[str, Any] | None = None,
    tokenizer: dict[str, Any] | None = None,
) -> Path:
    files = {
        "config.json": config
        or {"model_type": "bert", "hidden_size": 384, "max_position_embeddings": 512},
        "modules.json": modules,
        "1_Pooling/config.json": pooling,
        "sentence_bert_config.json": sbert,
        "tokenizer_config.json": tokenizer,
    }
    for name, content in files.items():
        if content is not None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(json.dumps(content))
    return root


def test_bge_small_as_on_the_hub(tmp_path: Path) -> None:
    """BAAI/bge-small-en-v1.5: CLS pooling, normalized, 384 dimensions, 512 tokens."""
    path = model_dir(
        tmp_path,
        modules=ST_MODULES,
        pooling=pooling_config("cls"),
        sbert={"max_seq_length": 512, "do_lower_case": True},
        tokenizer={"model_max_length": 512},
    )
    assert hub.embedding_metadata(path, "BAAI/bge-small-en-v1.5") == {
        "pooling": "cls",
        "normalize": True,
        "dimensions": 384,
        "max_length": 512,
    }


def test_minilm_as_on_the_hub(tmp_path: Path) -> None:
    """sentence-transformers/all-MiniLM-L6-v2: mean pooling, normalized, 256 tokens."""
    path = model_dir(
        tmp_path,
        modules=ST_MODULES,
        pooling=pooling_config("mean"),
        sbert={"max_seq_length": 256},
        tokenizer={"model_max_length": 512},
    )
    meta = hub.embedding_metadata(path, "sentence-transformers/all-MiniLM-L6-v2")
    assert meta == {"pooling": "mean", "normalize": True, "dimensions": 384, "max_length": 256}


def test_without_a_normalize_module_vectors_are_not_normalized(tmp_path: Path) -> None:
    path = model_dir(tmp_path, modules=ST_MODULES[:2], pooling=pooling_config("max", 768))
    meta = hub.embedding_metadata(path, "org/max-pooled")
    assert (meta["pooling"], meta["normalize"], meta["dimensions"]) == ("max", False, 768)


def test_the_pooling_module_may_live_in_another_folder(tmp_path: Path) -> None:
    modules = [*ST_MODULES]
    modules[1] = {**modules[1], "path": "pooling"}
    path = model_dir(tmp_path, modules=modules)
    (tmp_path / "pooling").mkdir()
    (tmp_path / "pooling" / "config.json").write_text(json.dumps(pooling_config("last")))
    assert hub.embedding_metadata(path, "org/decoder-embedder")["pooling"] == "last"


def test_newer_sentence_transformers_name_the_mode(tmp_path: Path) -> None:
    path = model_dir(tmp_path, modules=ST_MODULES, pooling={"pooling_mode": "lasttoken"})
    assert hub.embedding_metadata(path, "org/qwen-embedder")["pooling"] == "last"


@pytest.mark.parametrize(
    ("model_id", "pooling"),
    [("BAAI/bge-base-en-v1.5", "cls"), ("BAAI/BGE-M3", "cls"), ("intfloat/e5-small-v2", "mean")],
)
def test_a_plain_transformers_encoder_gets_cls_for_bge_and_mean_otherwise(
    tmp_path: Path, model_id: str, pooling: str
) -> None:
    meta = hub.embedding_metadata(model_dir(tmp_path), model_id)
    assert meta == {"pooling": pooling, "normalize": True, "dimensions": 384, "max_length": 512}


def test_roberta_positions_start_after_the_padding(tmp_path: Path) -> None:
    config = {
        "model_type": "xlm-roberta",
        "hidden_size": 1024,
        "max_position_embeddings": 514,
        "pad_token_id": 1,
    }
    path = model_dir(tmp_path, config=config, tokenizer={"model_max_length": 1000000000000})
    assert hub.embedding_metadata(path, "org/xlmr-embedder")["max_length"] == 512


def test_a_config_with_text_config_reads_the_text_part(tmp_path: Path) -> None:
    config = {"text_config": {"hidden_size": 256, "max_position_embeddings": 128}}
    meta = hub.embedding_metadata(model_dir(tmp_path, config=config), "org/multimodal")
    assert (meta["dimensions"], meta["max_length"]) == (256, 128)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"modules": ST_MODULES, "pooling": pooling_config("weightedmean")}, "weightedmean"),
        ({"modules": ST_MODULES, "pooling": pooling_config("mean_sqrt_len")}, "mean_sqrt_len"),
        (
            {
                "modules": [
                    *ST_MODULES[:2],
                    {"idx": 2, "path": "2_Dense", "type": f"{ST}.Dense"},
                ],
                "pooling": pooling_config("mean"),
            },
            "Dense",
        ),
        ({"config": {"hidden_size": 8}}, "no maximum input length"),
    ],
)
def test_what_the_runner_cannot_serve_is_refused_at_import(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(RuntimeError, match=message):
        hub.embedding_metadata(model_dir(tmp_path, **kwargs), "org/model")


def test_two_pooling_modes_at_once_are_refused(tmp_path: Path) -> None:
    both = {**pooling_config("mean"), "pooling_mode_cls_token": True}
    with pytest.raises(RuntimeError, match="cls \\+ mean"):
        hub.embedding_metadata(model_dir(tmp_path, modules=ST_MODULES, pooling=both), "org/m")


def test_the_cli_imports_embedding_models(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["import", "embedding", "BAAI/bge-small-en-v1.5"])
    assert (args.kind, args.model_id) == ("embedding", "BAAI/bge-small-en-v1.5")
    seen: list[tuple[Any, ...]] = []

    def fake_import(*args: Any) -> None:
        seen.append(args)

    monkeypatch.setattr(hub, "import_embedding", fake_import)
    from models.__main__ import _import

    _import(args)
    assert seen == [("BAAI/bge-small-en-v1.5", None, None)]
    assert "import embedding" in build_parser().format_help()


def test_the_download_takes_the_pooling_config_and_the_tokenizer() -> None:
    from fnmatch import fnmatch

    for name in ("1_Pooling/config.json", "modules.json", "vocab.txt", "model.safetensors"):
        assert any(fnmatch(name, pattern) for pattern in hub.EMBEDDING_FILES), name
