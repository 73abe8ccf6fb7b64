"""Image preprocessing metadata (``metadata["preprocessing"]`` of image-classification models).

Keys, all required::

    resize:         int    resize so the SHORTEST edge has this length (aspect ratio kept)
    crop_size:      int    then center-crop a crop_size x crop_size square
    mean, std:      [r, g, b] normalisation applied after rescaling
    resample:       "nearest" | "bilinear" | "bicubic" | "lanczos" | "box" | "hamming"
    rescale_factor: float  multiply uint8 pixels by this (1/255) before normalising

The schema is `contract.imaging.Preprocessing`; this module derives it from, and turns it into,
transformers image processor configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from contract.imaging import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

KEYS = tuple(f.name for f in fields(Preprocessing))

# PIL.Image.Resampling codes, as stored in transformers image processor configs.
_PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PIL_RESAMPLE_CODE = {name: code for code, name in _PIL_RESAMPLE.items()}


def imagenet(resize: int = 256, crop_size: int = 224, resample: str = "bilinear") -> dict[str, Any]:
    """The classic ImageNet recipe: resize 256, center crop 224, ImageNet mean/std."""
    return Preprocessing(resize=resize, crop_size=crop_size, resample=resample).metadata()


def _side(size: Any) -> int:
    """A square side from a transformers size: int, {"height", "width"} or {"shortest_edge"}."""
    if isinstance(size, int):
        return size
    if "shortest_edge" in size:
        return int(size["shortest_edge"])
    return int(size["height"])


def from_image_processor(config: Mapping[str, Any]) -> dict[str, Any]:
    """Derive the metadata from a transformers image processor's ``to_dict()``.

    ConvNext/ResNet style (``shortest_edge`` + ``crop_pct``, e.g. microsoft/resnet-50):
    resize = shortest_edge / crop_pct, crop = shortest_edge. CLIP style: shortest_edge + crop_size.
    ViT style (``height``/``width`` without crop) squashes to a square; it is approximated here as
    resize + center crop of the same size.
    """
    size = config.get("size") or {"shortest_edge": 224}
    crop_pct = config.get("crop_pct")
    crop = config.get("crop_size") if config.get("do_center_crop", True) else None
    if isinstance(size, Mapping) and "shortest_edge" in size and crop_pct:
        edge = int(size["shortest_edge"])
        resize, crop_size = (int(edge / crop_pct), edge) if edge < 384 else (edge, edge)
    else:
        resize = _side(size)
        crop_size = _side(crop) if crop else resize
    resample = config.get("resample", 2)
    do_rescale = config.get("do_rescale", True)
    do_normalize = config.get("do_normalize", True)
    mean = config.get("image_mean", IMAGENET_MEAN) if do_normalize else (0.0,) * 3
    std = config.get("image_std", IMAGENET_STD) if do_normalize else (1.0,) * 3
    return Preprocessing(
        resize=resize,
        crop_size=crop_size,
        mean=tuple(float(x) for x in mean),  # type: ignore[arg-type]
        std=tuple(float(x) for x in std),  # type: ignore[arg-type]
        resample=_PIL_RESAMPLE.get(int(resample), "bilinear"),
        rescale_factor=float(config.get("rescale_factor", 1 / 255)) if do_rescale else 1.0,
    ).metadata()


def to_image_processor_config(prep: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse for ResNet-style models: ConvNextImageProcessor ``preprocessor_config.json``."""
    return {
        "image_processor_type": "ConvNextImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": prep["crop_size"]},
        "crop_pct": prep["crop_size"] / prep["resize"],
        "resample": PIL_RESAMPLE_CODE[prep["resample"]],
        "do_rescale": True,
        "rescale_factor": prep["rescale_factor"],
        "do_normalize": True,
        "image_mean": list(prep["mean"]),
        "image_std": list(prep["std"]),
    }
