"""LoRA adapters: the demo adapter of demo-llm, and `import lora` with its shape and rank checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors import safe_open

from models import store
from models.__main__ import main
from models.lora import AdapterMismatch, base_shapes, check_adapter, write_random_adapter
from tests.models.conftest import DemoStore


def test_the_demo_adapter_is_a_rank_8_peft_lora_of_demo_llm(demo_store: DemoStore) -> None:
    adapter, base = store.resolve("demo-llm-sql"), store.resolve("demo-llm")
    meta = adapter.metadata
    assert (meta["format"], meta["base"], meta["base_tag"], meta["rank"]) == (
        "peft-lora", "demo-llm", base.tag, 8,
    )  # fmt: skip
    config = json.loads((adapter.path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    info = check_adapter(adapter.path, base.path, max_rank=8)
    assert info.rank == 8


def test_the_demo_adapters_b_matrices_are_not_zero(demo_store: DemoStore) -> None:
    """A fresh PEFT adapter has B = 0 and changes nothing; the demo's must change the output."""
    path = store.resolve("demo-llm-sql").path / "adapter_model.safetensors"
    with safe_open(str(path), framework="pt") as weights:
        b_keys = [k for k in weights.keys() if ".lora_B." in k]  # noqa: SIM118
        assert len(b_keys) == 2 * 4  # two layers, four projections
        assert all(float(weights.get_tensor(k).abs().max()) > 0 for k in b_keys)


def test_an_adapter_above_max_rank_is_refused(demo_store: DemoStore, tmp_path: Path) -> None:
    write_random_adapter(tmp_path, store.resolve("demo-llm").path, rank=16)
    with pytest.raises(AdapterMismatch, match="rank 16 is above the engine's max_rank 8"):
        check_adapter(tmp_path, store.resolve("demo-llm").path, max_rank=8)


def test_an_adapter_of_another_base_names_the_tensor(demo_store: DemoStore, tmp_path: Path) -> None:
    other = tmp_path / "other-base"
    other.mkdir()
    config = json.loads((store.resolve("demo-llm").path / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "hidden_size": 128}))
    write_random_adapter(tmp_path / "lora", other)
    with pytest.raises(AdapterMismatch) as caught:
        check_adapter(tmp_path / "lora", store.resolve("demo-llm").path)
    message = str(caught.value)
    assert "self_attn.k_proj.lora_A.weight has shape [8, 128]" in message
    assert "needs [8, 256]" in message and "another base" in message


def test_a_directory_without_peft_files_is_refused(demo_store: DemoStore, tmp_path: Path) -> None:
    with pytest.raises(AdapterMismatch, match=r"no adapter_config\.json"):
        check_adapter(tmp_path, store.resolve("demo-llm").path)


def test_base_shapes_follow_grouped_query_attention(demo_store: DemoStore) -> None:
    shapes = base_shapes(store.resolve("demo-llm").path)
    assert shapes["model.layers.1.self_attn.q_proj"] == (256, 256)
    assert shapes["model.layers.1.self_attn.k_proj"] == (256, 128)  # 2 kv heads of 64
    assert shapes["model.layers.0.mlp.down_proj"] == (512, 256)


def test_import_lora_stores_a_checked_adapter(demo_store: DemoStore, tmp_path: Path) -> None:
    source = tmp_path / "my-sql-lora"
    write_random_adapter(source, store.resolve("demo-llm").path, seed=7)
    run = demo_store.cli("import", "lora", str(source), "--base", "demo-llm")
    assert run.stdout.startswith("created my-sql-lora:"), run.stdout
    stored = store.resolve("my-sql-lora")
    assert stored.format == "peft-lora" and stored.metadata["base"] == "demo-llm"
    assert stored.metadata["source"] == f"dir:{source.resolve()}"
    assert (stored.path / "adapter_model.safetensors").is_file()


def test_import_lora_refuses_a_mismatch_and_stores_nothing(
    demo_store: DemoStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "too-big"
    write_random_adapter(source, store.resolve("demo-llm").path, rank=32)
    code = main(["import", "lora", str(source), "--base", "demo-llm", "--max-rank", "16"])
    assert code == 1
    assert "rank 32 is above the engine's max_rank 16" in capsys.readouterr().err
    assert not store.exists("too-big")


def test_import_lora_needs_a_stored_base(
    demo_store: DemoStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_random_adapter(tmp_path, store.resolve("demo-llm").path)
    assert main(["import", "lora", str(tmp_path), "--base", "no-such-llm"]) == 1
    assert "'no-such-llm' is not in the BentoML model store" in capsys.readouterr().err
