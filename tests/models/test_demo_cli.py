"""`python -m models demo` / `list`: tags, metadata, idempotence."""

from __future__ import annotations

import re

import pytest

from models import store
from models.__main__ import build_parser, main
from models.demo import registry
from tests.models.conftest import DemoStore

EXPECTED = {
    "demo-llm": ("text-generation", "max_position_embeddings"),
    "demo-resnet": ("image-classification", "preprocessing"),
    "demo-whisper": ("speech-recognition", "sampling_rate"),
    "demo-embed": ("feature-extraction", "pooling"),
}


def test_demo_creates_every_tag_with_metadata(demo_store: DemoStore) -> None:
    created = re.findall(r"^created (\S+) in", demo_store.first_run.stdout, re.M)
    assert sorted(tag.split(":")[0] for tag in created) == sorted([*EXPECTED, "demo-llm-sql"])
    for name, (task, key) in EXPECTED.items():
        model = store.resolve(name)
        assert model.metadata["task"] == task
        assert model.metadata["source"] == "demo"
        assert model.metadata["format"] == "transformers"
        assert key in model.metadata
        assert (model.path / "config.json").is_file()
        assert (model.path / "model.safetensors").is_file()


def test_versions_are_spec_hashes(demo_store: DemoStore) -> None:
    for demo in registry().values():
        assert store.resolve(demo.name).tag == demo.tag
        assert store.resolve(f"{demo.name}:latest").tag == demo.tag


def test_rerun_is_idempotent_and_fast(demo_store: DemoStore) -> None:
    before = {m.tag for m in store.list_models()}
    second = demo_store.cli("demo")
    assert {m.tag for m in store.list_models()} == before
    skipped = re.findall(r"^exists  (\S+) .*skipped$", second.stdout, re.M)
    assert sorted(skipped) == sorted(d.tag for d in registry().values())  # imports aside
    assert second.seconds < 10, second.stdout


def test_only_selects_models(demo_store: DemoStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--only", "resnet", "--only", "resnet"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "demo-resnet:" in out


def test_list_prints_tag_task_source(
    demo_store: DemoStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name, (task, _) in EXPECTED.items():
        assert re.search(rf"^{name}:\w+\s+{task}\s+demo$", out, re.M), out


def test_metadata_specifics(demo_store: DemoStore) -> None:
    assert store.resolve("demo-llm").metadata["max_position_embeddings"] == 2048
    assert store.resolve("demo-whisper").metadata["sampling_rate"] == 16000
    embed = store.resolve("demo-embed").metadata
    assert (embed["pooling"], embed["normalize"]) == ("mean", True)
    assert (embed["dimensions"], embed["max_length"]) == (128, 512)
    prep = store.resolve("demo-resnet").metadata["preprocessing"]
    assert prep == {
        "resize": 256,
        "crop_size": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "resample": "bilinear",
        "rescale_factor": pytest.approx(1 / 255),
    }


def test_help_documents_importers() -> None:
    text = build_parser().format_help()
    words = ("demo", "import llm", "import image", "import speech", "import embedding")
    for word in (*words, "torchvision", "list"):
        assert word in text
