"""models.store helpers, preprocessing derivation and the importers (with the Hub faked)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from models import hub, preprocessing, store
from tests.models.conftest import DemoStore


def test_resolve_missing_tag_explains_what_to_do(demo_store: DemoStore) -> None:
    with pytest.raises(store.ModelNotFoundError) as info:
        store.resolve("no-such-model:latest")
    message = str(info.value)
    assert "'no-such-model:latest'" in message
    assert "python -m models demo" in message
    assert str(demo_store.home) in message
    assert not store.exists("no-such-model")


def test_stored_model_is_frozen(demo_store: DemoStore) -> None:
    model = store.resolve("demo-llm")
    with pytest.raises(AttributeError):
        model.tag = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        model.metadata["task"] = "x"  # type: ignore[index]


@pytest.mark.parametrize(
    ("model_id", "name"),
    [
        ("Qwen/Qwen2.5-0.5B-Instruct", "qwen2.5-0.5b-instruct"),
        ("microsoft/resnet-50", "resnet-50"),
        ("openai/whisper-tiny", "whisper-tiny"),
        ("org/Some Model_v2!", "some-model_v2"),
        ("resnet50", "resnet50"),
    ],
)
def test_tag_name(model_id: str, name: str) -> None:
    assert store.tag_name(model_id) == name


def test_spec_version_is_deterministic() -> None:
    assert store.spec_version({"a": 1, "b": [1, 2]}) == store.spec_version({"b": [1, 2], "a": 1})
    assert store.spec_version({"a": 1}) != store.spec_version({"a": 2})


def test_preprocessing_from_resnet50_processor() -> None:
    # microsoft/resnet-50's preprocessor_config.json
    config = {
        "crop_pct": 0.875,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "resample": 3,
        "size": {"shortest_edge": 224},
    }
    prep = preprocessing.from_image_processor(config)
    assert prep == {**preprocessing.imagenet(), "resample": "bicubic"}


def test_preprocessing_from_vit_processor() -> None:
    config = {
        "size": {"height": 384, "width": 384},
        "image_mean": [0.5] * 3,
        "image_std": [0.5] * 3,
    }
    prep = preprocessing.from_image_processor(config)
    assert (prep["resize"], prep["crop_size"], prep["mean"]) == (384, 384, [0.5] * 3)


def _fake_download_from(src: Path) -> Callable[[str, Path, Sequence[str], str | None], None]:
    def download(model_id: str, dest: Path, patterns: Sequence[str], revision: str | None) -> None:
        for file in src.iterdir():
            if file.name != "model.yaml":
                shutil.copy(file, dest / file.name)

    return download


def test_import_llm_with_fake_hub(demo_store: DemoStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "download", _fake_download_from(store.resolve("demo-llm").path))
    model = hub.import_llm("Example/Tiny-LLM-Instruct")
    assert model.tag.startswith("tiny-llm-instruct:")
    assert dict(model.metadata) == {
        "task": "text-generation",
        "source": "huggingface:Example/Tiny-LLM-Instruct",
        "format": "transformers",
        "max_position_embeddings": 2048,
    }
    assert (model.path / "tokenizer.json").is_file()


def test_import_speech_with_fake_hub(
    demo_store: DemoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub, "download", _fake_download_from(store.resolve("demo-whisper").path))
    model = hub.import_speech("openai/whisper-tiny", name="whisper-fake")
    assert model.tag.startswith("whisper-fake:")
    assert model.metadata["sampling_rate"] == 16000
    assert model.metadata["task"] == "speech-recognition"


def test_import_embedding_with_fake_hub(
    demo_store: DemoStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """demo-embed's files laid out as a sentence-transformers repo with CLS pooling."""
    copy = _fake_download_from(store.resolve("demo-embed").path)

    def download(model_id: str, dest: Path, patterns: Sequence[str], revision: str | None) -> None:
        copy(model_id, dest, patterns, revision)
        modules = [
            {"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        ]
        (dest / "modules.json").write_text(json.dumps(modules))
        (dest / "1_Pooling").mkdir()
        pooling = {"word_embedding_dimension": 128, "pooling_mode_cls_token": True}
        (dest / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
        (dest / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256}))

    monkeypatch.setattr(hub, "download", download)
    model = hub.import_embedding("Example/tiny-bge", name="embed-fake")
    assert model.tag.startswith("embed-fake:")
    assert dict(model.metadata) == {
        "task": "feature-extraction",
        "source": "huggingface:Example/tiny-bge",
        "format": "transformers",
        "pooling": "cls",
        "normalize": False,  # modules.json has no Normalize module
        "dimensions": 128,
        "max_length": 256,
    }
    assert (model.path / "1_Pooling" / "config.json").is_file()


def test_import_image_from_local_dir(demo_store: DemoStore) -> None:
    demo = store.resolve("demo-resnet")
    model = hub.import_image(str(demo.path), name="resnet-local")
    assert model.metadata["labels"] == demo.metadata["labels"]
    assert model.metadata["preprocessing"] == demo.metadata["preprocessing"]
    assert model.metadata["source"] == f"huggingface:{demo.path}"


def test_import_torchvision_needs_torchvision(demo_store: DemoStore) -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("torchvision works here; the import would download weights")
    with pytest.raises(RuntimeError, match="torchvision is only needed for this import"):
        hub.import_torchvision("resnet50")
