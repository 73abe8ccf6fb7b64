"""Image decoding and preprocessing: formats, EXIF, modes, limits, resize/crop/normalize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from contract import imaging
from contract.imaging import ImageError, ImageTooLarge, Preprocessing
from tests.media import forged_png, image_bytes, noise_image, solid, two_frame_gif

LIMIT = 10_000_000


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_every_supported_format_decodes_to_rgb_of_the_same_size(fmt: str) -> None:
    image = imaging.decode(image_bytes(noise_image(1, (40, 30)), fmt), max_pixels=LIMIT)
    assert image.mode == "RGB" and image.size == (40, 30)


def test_gif_gives_its_first_frame() -> None:
    image = imaging.decode(two_frame_gif((255, 0, 0), (0, 0, 255)), max_pixels=LIMIT)
    assert image.getpixel((8, 8)) == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    source = Image.new("RGB", (40, 20), (0, 0, 255))
    source.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    image = imaging.decode(image_bytes(source, "PNG", exif=exif), max_pixels=LIMIT)
    assert image.size == (20, 40)
    assert image.getpixel((10, 5)) == (255, 0, 0)  # the red half is now on top
    assert image.getpixel((10, 35)) == (0, 0, 255)


@pytest.mark.parametrize(
    ("mode", "fmt"), [("L", "PNG"), ("1", "PNG"), ("CMYK", "JPEG"), ("P", "GIF"), ("LA", "PNG")]
)
def test_any_mode_becomes_rgb(mode: str, fmt: str) -> None:
    data = image_bytes(noise_image(2, (16, 16)).convert(mode), fmt)
    assert imaging.decode(data, max_pixels=LIMIT).mode == "RGB"


def test_transparent_pixels_become_white() -> None:
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    image = imaging.decode(image_bytes(rgba, "PNG"), max_pixels=LIMIT)
    assert image.getpixel((4, 4)) == (255, 255, 255)
    assert image.getpixel((0, 0)) == (255, 0, 0)


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    wide = Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16))  # half of 65535
    image = imaging.decode(image_bytes(wide, "PNG"), max_pixels=LIMIT)
    assert image.getpixel((0, 0)) == (128, 128, 128)


def test_more_pixels_than_allowed_is_refused() -> None:
    with pytest.raises(ImageTooLarge, match="limit is 100"):
        imaging.decode(image_bytes(solid((1, 2, 3), (20, 20))), max_pixels=100)


@pytest.mark.parametrize("side", [5_000, 10_000, 100_000])  # ours, Pillow's warning, its error
def test_a_decompression_bomb_is_refused_from_its_header(side: int) -> None:
    with pytest.raises(ImageTooLarge):
        imaging.decode(forged_png(side, side), max_pixels=LIMIT)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"hello, not an image", "not a JPEG"),
        (image_bytes(noise_image(3), "JPEG")[:300], "corrupt or truncated"),
        (image_bytes(noise_image(3), "PNG")[:-40], "corrupt or truncated"),
    ],
)
def test_bad_bytes_raise_image_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        imaging.decode(data, max_pixels=LIMIT)


def test_preprocess_gives_normalized_chw_float32() -> None:
    pp = Preprocessing(resize=256, crop_size=224, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    pixels = imaging.preprocess(solid((255, 0, 255), (640, 480)), pp)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels[:, 100, 100], [2.0, -1.0, 0.5], atol=1e-6)


def test_uint8_crops_normalize_to_the_same_model_input() -> None:
    """crop + normalize (a batch of 8-bit crops, a quarter of the bytes) == preprocess."""
    pp = Preprocessing(resize=64, crop_size=56)
    images = [noise_image(seed, (90, 70)) for seed in range(3)]
    crops = np.stack([imaging.crop(image, pp) for image in images])
    assert crops.shape == (3, 56, 56, 3) and crops.dtype == np.uint8
    batch = imaging.normalize(crops, pp)
    assert batch.shape == (3, 3, 56, 56) and batch.flags.c_contiguous
    for image, pixels in zip(images, batch, strict=True):
        np.testing.assert_array_equal(pixels, imaging.preprocess(image, pp))


def test_center_crop_keeps_the_middle_after_shortest_edge_resize() -> None:
    image = Image.new("RGB", (512, 256), (255, 0, 0))  # shortest edge 256: no resize needed
    image.paste((0, 0, 255), (16, 16, 496, 240))  # everything but a 16 px frame
    pp = Preprocessing(resize=256, crop_size=224, mean=(0, 0, 0), std=(1, 1, 1))
    pixels = imaging.preprocess(image, pp)
    assert np.all(pixels[2] == 1.0) and np.all(pixels[0] == 0.0)  # only blue survives


@pytest.mark.parametrize("size", [(100, 300), (300, 100)])
def test_portrait_and_landscape_are_resized_by_their_shortest_edge(size: tuple[int, int]) -> None:
    pixels = imaging.preprocess(noise_image(4, size), Preprocessing(resize=64, crop_size=56))
    assert pixels.shape == (3, 56, 56)


def test_preprocessing_reads_model_metadata() -> None:
    meta = {
        "resize": 232,
        "crop_size": 224,
        "mean": [0.1, 0.2, 0.3],
        "std": [1, 1, 1],
        "resample": "bicubic",
        "rescale_factor": 0.5,
        "unknown_key": "ignored",
    }
    pp = Preprocessing.from_metadata(meta)
    assert (pp.resize, pp.crop_size, pp.resample, pp.rescale_factor) == (232, 224, "bicubic", 0.5)
    assert pp.mean == (0.1, 0.2, 0.3) and pp.input_shape == (3, 224, 224)
    assert Preprocessing.from_metadata(None) == Preprocessing()


@pytest.mark.parametrize("bad", [{"resample": "fancy"}, {"resize": 200, "crop_size": 224}])
def test_bad_preprocessing_metadata_fails_loudly(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Preprocessing.from_metadata(bad)


def photo(size: tuple[int, int]) -> Image.Image:
    """Smooth content, like a photo: noise upscaled (pure noise has no low frequencies)."""
    return noise_image(3, (size[0] // 10, size[1] // 10)).resize(size, Image.Resampling.BICUBIC)


def test_a_large_jpeg_decodes_at_a_reduced_scale_no_smaller_than_asked() -> None:
    data = image_bytes(photo((2400, 1800)), "JPEG", quality=92)
    assert imaging.decode(data, max_pixels=LIMIT).size == (2400, 1800)
    assert imaging.decode(data, max_pixels=LIMIT, min_edge=512).size == (1200, 900)
    assert imaging.decode(data, max_pixels=LIMIT, min_edge=200).size == (300, 225)  # 1/8
    png = image_bytes(photo((800, 600)))  # only JPEG has DCT scaling
    assert imaging.decode(png, max_pixels=LIMIT, min_edge=100).size == (800, 600)


def test_prepare_matches_a_full_decode_within_a_level() -> None:
    pp = Preprocessing()
    data = image_bytes(photo((2400, 1800)), "JPEG", quality=92)
    full = imaging.preprocess(imaging.decode(data, max_pixels=LIMIT), pp)
    fast = imaging.prepare(data, pp, max_pixels=LIMIT)
    # in 8-bit levels: the normalized difference times std times 255
    levels = np.abs(fast - full) * np.asarray(pp.std, np.float32).reshape(3, 1, 1) * 255
    assert fast.shape == full.shape == (3, 224, 224)
    assert levels.mean() < 1.0


def test_the_size_limit_applies_to_the_full_image_even_when_decoding_a_draft() -> None:
    data = image_bytes(photo((2400, 1800)), "JPEG")
    with pytest.raises(ImageTooLarge, match="2400x1800"):
        imaging.decode(data, max_pixels=2400 * 1800 - 1, min_edge=224)
