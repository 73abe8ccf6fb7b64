"""``python -m models``: create, import and list the models in the BentoML model store."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from models import store

DESCRIPTION = """\
Write models into the BentoML model store (BENTOML_HOME, default ~/bentoml) with metadata the
runners read through models.store.resolve().

  demo                 tiny random demo-llm (+ its LoRA adapter demo-llm-sql), demo-resnet,
                       demo-whisper, demo-embed, made locally (no network); versions are a hash
                       of their spec, so a rerun skips what exists
  import llm ID        causal LM from the Hugging Face Hub for vLLM
                       (e.g. Qwen/Qwen2.5-0.5B-Instruct)
  import image ID      image classifier from the Hub (e.g. microsoft/resnet-50)
  import speech ID     Whisper-style speech model from the Hub (e.g. openai/whisper-tiny)
  import embedding ID  text embedding encoder from the Hub (e.g. BAAI/bge-small-en-v1.5 or a
                       sentence-transformers model; pooling from its 1_Pooling/config.json)
  import lora HF_ID|DIR --base TAG
                       a PEFT LoRA adapter of a stored LLM, checked against it (module shapes,
                       rank <= --max-rank) before it is stored
  import torchvision ARCH
                       torchvision classifier (e.g. resnet50) exported with torch.export;
                       needs torchvision (GPU build) to import, not to serve
  export TAG           a stored transformers image classifier -> torch-export (model.pt2)
  list                 tag, task, source of every stored model

Imports need network access to the Hub (HF_TOKEN for gated models; HF_ENDPOINT for a mirror).
"""


def _add_import_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("import", help="import a real model (needs network access)")
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    examples = {
        "llm": "Qwen/Qwen2.5-0.5B-Instruct",
        "image": "microsoft/resnet-50",
        "speech": "openai/whisper-tiny",
        "embedding": "BAAI/bge-small-en-v1.5",
    }
    for kind, example in examples.items():
        p = kinds.add_parser(kind, help=f"Hugging Face Hub id, e.g. {example}")
        p.add_argument("model_id", metavar="HF_ID", help=f"e.g. {example}")
        p.add_argument("--revision", help="branch, tag or commit on the Hub")
        p.add_argument("--name", help="store name (default: the id's last part, lowercased)")
    p = kinds.add_parser("lora", help="PEFT LoRA adapter (Hub id or directory) of a stored LLM")
    p.add_argument("model_id", metavar="HF_ID|DIR", help="a Hub id or a local adapter directory")
    p.add_argument("--base", required=True, help="the stored base model's tag, e.g. demo-llm")
    p.add_argument("--max-rank", type=int, default=16, help="the engine's llm.lora.max_rank")
    p.add_argument("--revision", help="branch, tag or commit on the Hub")
    p.add_argument("--name", help="store name (default: the id's or directory's last part)")
    p = kinds.add_parser("torchvision", help="torchvision architecture, e.g. resnet50")
    p.add_argument("arch", metavar="ARCH", help="e.g. resnet50 (DEFAULT weights)")
    p.add_argument("--name", help="store name (default: ARCH)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="create the tiny local demo models")
    demo.add_argument(
        "--only",
        nargs="+",
        action="extend",
        choices=["llm", "lora", "resnet", "whisper", "embed"],
        help="create only these (default: all of them)",
    )
    _add_import_parsers(sub)
    export = sub.add_parser("export", help="stored transformers image classifier -> torch-export")
    export.add_argument("tag", help="e.g. demo-resnet or resnet-50:latest")
    export.add_argument("--name", help="store name (default: <name>-export)")
    sub.add_parser("list", help="list the stored models")
    return parser


def _demo(only: Sequence[str] | None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # nothing is downloaded anyway
    from models.demo import ensure, registry

    demos = registry()
    for key in dict.fromkeys(only or demos):
        print(ensure(demos[key]).describe(), flush=True)
    return 0


def _import(args: argparse.Namespace) -> store.StoredModel:
    from models import hub

    if args.kind == "torchvision":
        return hub.import_torchvision(args.arch, args.name)
    if args.kind == "lora":
        from models.lora import import_lora

        return import_lora(
            args.model_id, args.base, name=args.name, max_rank=args.max_rank, revision=args.revision
        )
    importer = {
        "llm": hub.import_llm,
        "image": hub.import_image,
        "speech": hub.import_speech,
        "embedding": hub.import_embedding,
    }
    return importer[args.kind](args.model_id, args.name, args.revision)


def _list() -> int:
    models = store.list_models()
    if not models:
        print(f"no models in {store.store_dir()}; run `python -m models demo`")
    width = max((len(m.tag) for m in models), default=0)
    for m in models:
        print(f"{m.tag:<{width}}  {m.task:<20}  {m.source}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args.only)
        if args.command == "list":
            return _list()
        if args.command == "import":
            stored = _import(args)
        else:
            from models.export import export_stored_classifier

            stored = export_stored_classifier(args.tag, args.name)
    except (store.ModelNotFoundError, RuntimeError, ValueError, OSError) as exc:  # OSError: Hub
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"created {stored.tag} ({stored.format}, {store.dir_size(stored.path) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
