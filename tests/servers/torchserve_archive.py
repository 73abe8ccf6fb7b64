"""Pack the routing tests' TorchServe models into a model store, at test time.

    .venv/bin/python -m tests.servers.torchserve_archive STORE [--vision-model demo-resnet]

Runs in the bundle's venv (it reads the demo ResNet from the BentoML model store with the
runner's own loader and exports it to TorchScript), then calls torch-model-archiver from
.venv-torchserve. Writes two archives into STORE:

- `resnet.mar`: the ResNet as TorchScript, its labels and preprocessing (`labels.json`), the
  bundle's contract/imaging.py, and tests/servers/torchserve_handler.py with task `classify`;
- `upper.mar`: the same handler with task `upper` (bytes in, the same upper-cased out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ARCHIVER = ROOT / ".venv-torchserve" / "bin" / "torch-model-archiver"
HANDLER = Path(__file__).resolve().with_name("torchserve_handler.py")
# TorchServe's per-model YAML: one worker each (2 cores), and its own batching for the images.
CONFIGS = {
    "resnet": "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 10\n"
    "responseTimeout: 30\nhandler:\n  task: classify\n",
    "upper": "minWorkers: 1\nmaxWorkers: 1\nresponseTimeout: 30\nhandler:\n  task: upper\n",
}


def export_resnet(tag: str, work: Path) -> Path:
    """The stored classifier traced to TorchScript (`model.pt`) beside its `labels.json`."""
    import torch

    from contract import imaging
    from models.store import resolve
    from runners.classifier import _load_module

    stored = resolve(tag)
    module, labels = _load_module(stored.path, stored.format, torch.device("cpu"))
    pp = imaging.Preprocessing.from_metadata(stored.metadata.get("preprocessing"))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks fixed by pp
        traced = torch.jit.trace(module.eval(), torch.randn(2, *pp.input_shape))
    torch.jit.save(traced, str(work / "model.pt"))
    meta = {"labels": list(stored.metadata.get("labels") or labels), "preprocessing": pp.metadata()}
    (work / "labels.json").write_text(json.dumps(meta))
    return work / "model.pt"


def contract_package(work: Path) -> Path:
    """A folder holding `contract/` with imaging.py, for the archive's extra files (the archiver
    copies a folder's contents to the archive's top, where the handler imports from)."""
    package = work / "code" / "contract"
    package.mkdir(parents=True)
    for name in ("__init__.py", "imaging.py"):
        shutil.copy2(ROOT / "contract" / name, package / name)
    return package.parent


def archive(
    name: str, store: Path, work: Path, *extra: str, serialized: Path | None = None
) -> None:
    config = work / f"{name}.yaml"
    config.write_text(CONFIGS[name])
    command = [
        str(ARCHIVER),
        "--model-name", name,
        "--version", "1.0",
        "--handler", str(HANDLER),
        "--config-file", str(config),
        "--extra-files", ",".join(extra),
        "--export-path", str(store),
        "--force",
    ]  # fmt: skip
    if serialized is not None:
        command += ["--serialized-file", str(serialized)]
    subprocess.run(command, check=True, capture_output=True)


def build(store: Path, vision_model: str) -> None:
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="torchserve-archive-") as tmp:
        work = Path(tmp)
        code = str(contract_package(work))
        model = export_resnet(vision_model, work)
        archive("resnet", store, work, code, str(work / "labels.json"), serialized=model)
        archive("upper", store, work, code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--vision-model", default="demo-resnet")
    args = parser.parse_args()
    build(args.store, args.vision_model)


if __name__ == "__main__":
    main()
