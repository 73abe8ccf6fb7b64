"""LoRA adapters in PEFT format (``adapter_config.json`` + ``adapter_model.safetensors``), checked
against the base model they are served on, as vLLM serves them (``--lora-modules``).

    check_adapter(Path("my-lora"), base, max_rank=16)   # AdapterMismatch naming what is wrong
    import_lora("my-org/sql-lora", base="demo-llm")     # into the model store, checked first

An adapter's store metadata says which base it belongs to (``base``: the base's store name,
``base_tag``: the exact tag it was checked against), its ``rank`` and ``target_modules``; its
``format`` is ``peft-lora`` and its task the base's (``text-generation``).

The demo adapter ``demo-llm-sql`` is rank 8 on demo-llm's attention projections with random A
and B (B != 0, unlike a freshly initialised PEFT adapter), so it changes what the model writes.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import store

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
DEFAULT_MAX_RANK = 16
LORA_FILES = [CONFIG, WEIGHTS, "*.json"]

# base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight -> (module path, A|B)
_TENSOR = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.weight)?$")


class AdapterMismatch(ValueError):
    """The adapter cannot be served on this base: missing files, a module the base lacks, a
    tensor of the wrong shape, or a rank above the engine's ``max_rank``."""


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    target_modules: tuple[str, ...]
    base_model_name_or_path: str

    def metadata(self, base: store.StoredModel, source: str) -> dict[str, Any]:
        return store.make_metadata(
            "text-generation",
            source,
            "peft-lora",
            base=base.tag.split(":", 1)[0],
            base_tag=base.tag,
            rank=self.rank,
            target_modules=list(self.target_modules),
        )


def base_shapes(base: Path) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of each linear module of a Llama-like base, by module path
    (``model.layers.0.self_attn.q_proj``), from its config.json alone."""
    config = json.loads((base / "config.json").read_text())
    config = config.get("text_config") or config
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or hidden // heads)
    kv = int(config.get("num_key_value_heads") or heads) * head_dim
    inter = int(config["intermediate_size"])
    per_layer = {
        "self_attn.q_proj": (hidden, heads * head_dim),
        "self_attn.k_proj": (hidden, kv),
        "self_attn.v_proj": (hidden, kv),
        "self_attn.o_proj": (heads * head_dim, hidden),
        "mlp.gate_proj": (hidden, inter),
        "mlp.up_proj": (hidden, inter),
        "mlp.down_proj": (inter, hidden),
    }
    return {
        f"model.layers.{layer}.{module}": shape
        for layer in range(int(config["num_hidden_layers"]))
        for module, shape in per_layer.items()
    }


def check_adapter(adapter: Path, base: Path, *, max_rank: int = DEFAULT_MAX_RANK) -> AdapterInfo:
    """The adapter's rank and targets, or AdapterMismatch saying which file, module or tensor
    does not fit ``base`` (a directory with the base's config.json)."""
    from safetensors import safe_open

    for name in (CONFIG, WEIGHTS):
        if not (adapter / name).is_file():
            raise AdapterMismatch(f"{adapter} has no {name}: not a PEFT LoRA adapter")
    config = json.loads((adapter / CONFIG).read_text())
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterMismatch(f"{adapter}: peft_type is {config.get('peft_type')!r}, not LORA")
    rank = int(config.get("r") or 0)
    if not 0 < rank <= max_rank:
        raise AdapterMismatch(
            f"{adapter}: rank {rank} is above the engine's max_rank {max_rank} "
            "(raise llm.lora.max_rank, a cost in memory for every adapter slot)"
            if rank > max_rank
            else f"{adapter}: adapter_config.json has no rank 'r'"
        )
    shapes = base_shapes(base)
    with safe_open(str(adapter / WEIGHTS), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118  # safe_open is not a mapping
            _check_tensor(key, tuple(weights.get_slice(key).get_shape()), rank, shapes)
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    return AdapterInfo(rank, tuple(targets), str(config.get("base_model_name_or_path") or ""))


def _check_tensor(
    key: str, shape: tuple[int, ...], rank: int, shapes: Mapping[str, tuple[int, int]]
) -> None:
    found = _TENSOR.match(key)
    if found is None:
        return  # e.g. modules_to_save, which vLLM reports itself
    module, ab = found["module"], found["ab"]
    if module not in shapes:
        raise AdapterMismatch(f"tensor {key}: the base model has no module {module}")
    fan_in, fan_out = shapes[module]
    expected = (rank, fan_in) if ab == "A" else (fan_out, rank)
    if shape != expected:
        raise AdapterMismatch(
            f"tensor {key} has shape {list(shape)}, the base's {module} ({fan_in} -> {fan_out}) "
            f"at rank {rank} needs {list(expected)}: the adapter was trained for another base"
        )


def write_random_adapter(
    path: Path, base: Path, *, rank: int = 8, seed: int = 0, scale: float = 0.5
) -> None:
    """A PEFT adapter on the base's attention projections with random A and B (B != 0)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for module, (fan_in, fan_out) in base_shapes(base).items():
        if module.rsplit(".", 1)[-1] not in ATTENTION:
            continue
        prefix = f"base_model.model.{module}"
        a = torch.randn(rank, fan_in, generator=generator) / fan_in**0.5
        b = torch.randn(fan_out, rank, generator=generator) * scale / rank**0.5
        tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = a, b
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / WEIGHTS))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "target_modules": list(ATTENTION),
        "base_model_name_or_path": str(base),
        "modules_to_save": None,
    }
    (path / CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def import_lora(
    source: str,
    base: str,
    *,
    name: str | None = None,
    max_rank: int = DEFAULT_MAX_RANK,
    revision: str | None = None,
) -> store.StoredModel:
    """A PEFT LoRA from a directory or the Hugging Face Hub, checked against the stored ``base``
    before anything is stored (AdapterMismatch otherwise)."""
    base_model = store.resolve(base)
    if base_model.format != "transformers" or base_model.task != "text-generation":
        raise AdapterMismatch(f"{base_model.tag} is not a text-generation model to adapt")
    local = Path(source)
    info = check_adapter(local, base_model.path, max_rank=max_rank) if local.is_dir() else None

    def write(path: Path) -> dict[str, Any]:
        if local.is_dir():
            for file in local.iterdir():
                if file.is_file() and file.name != "README.md":
                    shutil.copy2(file, path / file.name)
        else:
            from models.hub import download

            download(source, path, LORA_FILES, revision)
        found = check_adapter(path, base_model.path, max_rank=max_rank)
        return found.metadata(base_model, _source(source, local))

    metadata = (info or AdapterInfo(0, (), "")).metadata(base_model, _source(source, local))
    return store.save(name or store.tag_name(source), metadata, write)


def _source(source: str, local: Path) -> str:
    return f"dir:{local.resolve()}" if local.is_dir() else f"huggingface:{source}"


def is_adapter(model: store.StoredModel) -> bool:
    return model.format == "peft-lora"
