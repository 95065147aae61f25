"""Image decoding and transforms: checked against per-pixel loops and hand-worked boxes."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vsekit.data.images import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    crop_box,
    hflip,
    image_format,
    load_image,
    random_resized_crop,
    resize,
    to_tensor,
    transform,
)
from vsekit.errors import VsekitError


def random_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ------------------------------------------------------------------ load_image


def test_load_image_converts_grayscale_and_rgba_to_rgb(tmp_path):
    gray = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4), mode="L")
    gray.save(tmp_path / "g.png")
    rgba = Image.new("RGBA", (5, 2), (10, 20, 30, 40))
    rgba.save(tmp_path / "a.png")
    g, a = load_image(tmp_path / "g.png"), load_image(tmp_path / "a.png")
    assert g.mode == "RGB" and g.size == (4, 3)
    assert np.array_equal(np.asarray(g)[..., 1], np.arange(12).reshape(3, 4))
    assert a.mode == "RGB" and np.asarray(a)[0, 0].tolist() == [10, 20, 30]


def test_load_image_jpeg_round_trip(tmp_path):
    ramp = np.linspace(0, 255, 16 * 8 * 3).reshape(8, 16, 3).astype(np.uint8)
    Image.fromarray(ramp).save(tmp_path / "x.jpg", quality=95)
    out = load_image(tmp_path / "x.jpg")
    assert out.size == (16, 8)
    diff = np.abs(np.asarray(out, dtype=int) - ramp.astype(int))
    assert diff.mean() < 8  # lossy, but the same picture


def test_load_image_missing_file_names_it(tmp_path):
    with pytest.raises(VsekitError, match="nope.jpg.*not found"):
        load_image(tmp_path / "nope.jpg")


@pytest.mark.parametrize("payload", [b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 40])
def test_load_image_corrupt_file_names_it(tmp_path, payload):
    path = tmp_path / "bad.jpg"
    path.write_bytes(payload)
    with pytest.raises(VsekitError, match="bad.jpg.*cannot be decoded"):
        load_image(path)


def test_load_image_truncated_jpeg(tmp_path):
    random_image(64, 64).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(VsekitError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")


def test_load_image_directory_is_an_error(tmp_path):
    with pytest.raises(VsekitError, match="cannot be decoded|not found"):
        load_image(tmp_path)


# ------------------------------------------------------------------ pixel transforms


def test_to_tensor_matches_per_pixel_loop():
    img = random_image(5, 3, seed=1)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = to_tensor(img, mean, std)
    assert out.shape == (3, 3, 5) and out.dtype == torch.float32
    pixels = np.asarray(img)
    for c in range(3):
        for y in range(3):
            for x in range(5):
                expected = (pixels[y, x, c] / 255.0 - mean[c]) / std[c]
                assert math.isclose(float(out[c, y, x]), expected, rel_tol=1e-5, abs_tol=1e-6)


def test_hflip_matches_loop():
    img = random_image(7, 4, seed=2)
    flipped, pixels = np.asarray(hflip(img)), np.asarray(img)
    for y in range(4):
        for x in range(7):
            assert (flipped[y, x] == pixels[y, 6 - x]).all()


def test_resize_square_and_pair_and_noop():
    img = random_image(10, 6)
    assert resize(img, 4).size == (4, 4)
    assert resize(img, (3, 5)).size == (3, 5)
    assert resize(img, (10, 6)) is img
    # Same as PIL's default resize, which the Flickr8k pack's features were computed with.
    assert np.array_equal(np.asarray(resize(img, 8)), np.asarray(img.resize((8, 8))))


# ------------------------------------------------------------------ random crops


@settings(max_examples=60, deadline=None)
@given(width=st.integers(1, 300), height=st.integers(1, 300), seed=st.integers(0, 10_000),
       low=st.floats(0.05, 1.0), span=st.floats(0.0, 1.0))
def test_crop_box_lies_inside_the_image(width, height, seed, low, span):
    scale = (low, min(1.0, low + span))
    g = torch.Generator().manual_seed(seed)
    left, top, w, h = crop_box(width, height, scale, (3 / 4, 4 / 3), g)
    assert left >= 0 and top >= 0 and w >= 1 and h >= 1
    assert left + w <= width and top + h <= height


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_crop_box_area_and_ratio_within_range_on_a_roomy_image(seed):
    # 400x400 with scale (0.25, 0.5) and ratio (3/4, 4/3): the first draw always fits.
    g = torch.Generator().manual_seed(seed)
    _, _, w, h = crop_box(400, 400, (0.25, 0.5), (3 / 4, 4 / 3), g)
    area = w * h / 400**2
    assert 0.25 - 0.01 <= area <= 0.5 + 0.01
    assert 3 / 4 - 0.02 <= w / h <= 4 / 3 + 0.02


def test_crop_box_fallback_is_the_centred_box_worked_by_hand():
    # A 100x10 image, full area with ratio exactly 1 → a 32x32 box never fits;
    # the fallback clips the ratio to 1: a 10x10 box centred at x = (100 - 10) / 2 = 45.
    g = torch.Generator().manual_seed(0)
    assert crop_box(100, 10, (1.0, 1.0), (1.0, 1.0), g) == (45, 0, 10, 10)
    assert crop_box(10, 100, (1.0, 1.0), (1.0, 1.0), g) == (0, 45, 10, 10)
    # Aspect 1.5 within the ratio range: the whole image; above it: clipped to 20x20.
    assert crop_box(30, 20, (1.0, 1.0), (0.5, 2.0), g, attempts=0) == (0, 0, 30, 20)
    assert crop_box(30, 20, (1.0, 1.0), (1.0, 1.0), g, attempts=0) == (5, 0, 20, 20)


def test_random_resized_crop_is_crop_box_then_resize():
    img = random_image(40, 30, seed=3)
    out = random_resized_crop(img, 16, torch.Generator().manual_seed(5), scale=(0.3, 0.9))
    left, top, w, h = crop_box(40, 30, (0.3, 0.9), (3 / 4, 4 / 3),
                               torch.Generator().manual_seed(5))
    expected = img.crop((left, top, left + w, top + h)).resize((16, 16), Image.Resampling.BICUBIC)
    assert out.size == (16, 16)
    assert np.array_equal(np.asarray(out), np.asarray(expected))


def test_transform_without_augment_is_resize_then_normalise():
    img = random_image(20, 12, seed=4)
    out = transform(img, 8, IMAGENET_MEAN, IMAGENET_STD)
    assert torch.equal(out, to_tensor(img.resize((8, 8)), IMAGENET_MEAN, IMAGENET_STD))


def test_transform_augment_is_deterministic_per_seed_and_varies_across_seeds():
    img = random_image(48, 48, seed=5)

    def run(seed):
        return transform(img, 24, IMAGENET_MEAN, IMAGENET_STD, augment=True,
                         generator=torch.Generator().manual_seed(seed))

    assert run(7).shape == (3, 24, 24)
    assert torch.equal(run(7), run(7))
    assert not all(torch.equal(run(7), run(s)) for s in range(8, 12))


def test_transform_augment_needs_a_generator():
    with pytest.raises(ValueError, match="Generator"):
        transform(random_image(8, 8), 4, IMAGENET_MEAN, IMAGENET_STD, augment=True)


@pytest.mark.parametrize(("pil_format", "name"), [
    ("JPEG", "JPEG"), ("PNG", "PNG"), ("GIF", "GIF"), ("BMP", "BMP"), ("TIFF", "TIFF"),
    ("WEBP", "WebP")])
def test_image_format_recognises_what_pil_writes(pil_format: str, name: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 200, 30)).save(buffer, format=pil_format)
    assert image_format(buffer.getvalue()[:12]) == name


@pytest.mark.parametrize("head", [b"", b"<!DOCTYPE html>", b"\x00" * 12, b"RIFF\x00\x00\x00\x00WAVE",
                                  b"\xff\xd8", b"PK\x03\x04", b"GIF87"])
def test_image_format_rejects_other_bytes(head: bytes) -> None:
    assert image_format(head) is None
