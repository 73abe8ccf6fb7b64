"""The TorchServe handler of the routing tests' models, run by TorchServe's Python worker in
.venv-torchserve (not the bundle's venv), archived by tests/servers/torchserve.py.

One module-level entry point, `handle`, serves two tasks, chosen by the archive's model config
(`handler: {task: ...}`, TorchServe's own per-model YAML):

- `classify`: image file bytes -> `{label: score}` for every class, in class order, from a
  TorchScript export of the demo ResNet. TorchServe's stock image_classifier imports
  torchvision, which cannot load beside the +cpu torch; this one applies the bundle's own
  preprocessing (contract/imaging.py, packed into the archive with the model's `preprocessing`
  metadata), so the same image gets the same pixels here as in the bundled runner.
- `upper`: any bytes -> the same bytes upper-cased (ASCII): a model whose answer is raw bytes.

Each request's `X-Request-Id` header is logged (TorchServe puts the worker's log in its own), so a
test can see that the gateway passed it on. A file that is not an image gets a 400 of its own,
not a failure of the batch it came in with.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
import torch

from contract import imaging

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000
_state: dict[str, Any] = {}


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[Any] | None:
    if data is None:  # TorchServe's load call
        _initialize(context)
        return None
    for i in range(len(data)):
        log.info("request %s: X-Request-Id %s", i, context.get_request_header(i, "X-Request-Id"))
    bodies = [bytes(item.get("data") or item.get("body") or b"") for item in data]
    if _state["task"] == "upper":
        return [body.upper() for body in bodies]
    return _classify(bodies, context)


def _initialize(context: Any) -> None:
    task = (context.model_yaml_config.get("handler") or {}).get("task")
    if task not in ("classify", "upper"):
        raise ValueError(f"handler.task must be classify or upper, not {task!r}")
    _state["task"] = task
    if task != "classify":
        return
    model_dir = context.system_properties["model_dir"]
    with open(os.path.join(model_dir, "labels.json")) as f:
        meta = json.load(f)
    _state["labels"] = meta["labels"]
    _state["preprocessing"] = imaging.Preprocessing.from_metadata(meta["preprocessing"])
    serialized = context.manifest["model"]["serializedFile"]
    _state["model"] = torch.jit.load(os.path.join(model_dir, serialized)).eval()
    torch.set_num_threads(1)  # 2 cores shared with the bundle and the other servers


def _classify(bodies: list[bytes], context: Any) -> list[Any]:
    """Every image of the batch through one forward pass; a bad file answers its own 400."""
    pixels, good = [], []
    answers: list[Any] = [None] * len(bodies)
    for i, body in enumerate(bodies):
        try:
            pixels.append(imaging.prepare(body, _state["preprocessing"], max_pixels=MAX_PIXELS))
            good.append(i)
        except imaging.ImageError as exc:
            context.set_response_status(400, str(exc), idx=i)
            answers[i] = json.dumps({"code": 400, "message": str(exc)})
    if good:
        with torch.inference_mode():
            logits = _state["model"](torch.from_numpy(np.stack(pixels)))
            probabilities = torch.softmax(logits.float(), dim=-1).tolist()
        for i, row in zip(good, probabilities, strict=True):
            answers[i] = dict(zip(_state["labels"], row, strict=True))
    return answers
