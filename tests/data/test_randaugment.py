"""RandAugment (FNE/ALBEF pipeline): each operation against pixel loops, the op sampling
against a replay of the generator, and bad settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vsekit.data import randaugment
from vsekit.data.randaugment import FNE_OPS, GREY, RandAugment, apply_op
from vsekit.errors import VsekitError


def random_image(seed: int = 0, size: tuple[int, int] = (24, 20)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int64)


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("axis", ["x", "y"])
def test_translate_shifts_by_magnitude_pixels_with_grey_fill(sign, axis):
    img = random_image()
    src = pixels(img)
    out = pixels(apply_op(img, f"translate_{axis}", 7, sign))
    h, w, _ = src.shape
    shift = int(sign * 7)
    for y in range(h):
        for x in range(w):
            sx, sy = (x + shift, y) if axis == "x" else (x, y + shift)
            expected = src[sy, sx] if 0 <= sx < w and 0 <= sy < h else GREY
            assert tuple(out[y, x]) == tuple(expected), (y, x)


def test_shear_x_against_a_bilinear_pixel_loop():
    """PIL samples output pixel centres: input x = x + factor · (y + 1/2), interpolated."""
    img = random_image(1)
    src = pixels(img).astype(float)
    factor = 0.7 * 0.3
    out = pixels(apply_op(img, "shear_x", 7, 1.0))
    h, w, _ = src.shape
    checked = 0
    for y in range(h):
        for x in range(w):
            sx = x + factor * (y + 0.5)
            i = int(np.floor(sx))
            t = sx - i
            if i + 1 < w:
                expected = (1 - t) * src[y, i] + t * src[y, i + 1]
                np.testing.assert_allclose(out[y, x], expected, atol=1.01)
                checked += 1
    assert checked > h * w // 2


def test_enhancements_against_pixel_loops():
    img = random_image(2)
    src = pixels(img)
    factor = 0.7 * 1.8 + 0.1
    out = pixels(apply_op(img, "brightness", 7, 1.0))
    for y in range(src.shape[0]):
        for x in range(src.shape[1]):
            for c in range(3):
                assert abs(out[y, x, c] - min(255, src[y, x, c] * factor)) <= 1
    sharp = pixels(apply_op(img, "sharpness", 7, 1.0))
    kernel = np.ones((3, 3)) / 13
    kernel[1, 1] = 5 / 13
    for y in range(1, src.shape[0] - 1):  # PIL keeps the border pixels
        for x in range(1, src.shape[1] - 1):
            for c in range(3):
                blur = round(float((src[y - 1:y + 2, x - 1:x + 2, c] * kernel).sum()))
                expected = np.clip(blur + factor * (src[y, x, c] - blur), 0, 255)
                assert abs(sharp[y, x, c] - expected) <= 1


def test_autocontrast_stretches_each_channel_to_full_range():
    src = np.stack([np.full((4, 4), 50), np.arange(16).reshape(4, 4) * 10 + 40,
                    np.full((4, 4), 200)], -1).astype(np.uint8)
    out = pixels(apply_op(Image.fromarray(src), "autocontrast", 7, 1.0))
    np.testing.assert_array_equal(out[..., 0], 50)  # a flat channel is left alone
    assert out[..., 1].min() == 0 and out[..., 1].max() == 255
    ramp = src[..., 1].astype(float)
    np.testing.assert_allclose(out[..., 1], (ramp - 40) * 255 / 150, atol=1)


def test_rotation_keeps_the_centre_and_fills_corners_grey():
    img = Image.new("RGB", (31, 31), (10, 200, 30))
    out = pixels(apply_op(img, "rotate", 10, -1.0))
    assert tuple(out[15, 15]) == (10, 200, 30)
    assert tuple(out[0, 0]) == GREY and tuple(out[30, 30]) == GREY
    assert np.array_equal(pixels(apply_op(img, "rotate", 0, 1.0)), pixels(img))


def test_identity_and_equalize_shapes():
    img = random_image(3)
    assert np.array_equal(pixels(apply_op(img, "identity", 7, 1.0)), pixels(img))
    assert apply_op(img, "equalize", 7, 1.0).size == img.size


def test_sampling_replays_the_generator(monkeypatch):
    """Ops drawn uniformly with replacement, each applied when its draw is < 1/2, sign from the
    second draw: replay the same generator by hand and compare with what was applied."""
    applied: list[tuple[str, float]] = []
    monkeypatch.setattr(randaugment, "apply_op",
                        lambda img, name, magnitude, sign: applied.append((name, sign)) or img)
    aug = RandAugment(num_ops=3, magnitude=7)
    gen, replay = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(50):
        applied.clear()
        aug(random_image(), gen)
        picks = torch.randint(len(FNE_OPS), (3,), generator=replay).tolist()
        draws = torch.rand(3, 2, generator=replay).tolist()
        expected = [(FNE_OPS[p], 1.0 if d[1] < 0.5 else -1.0)
                    for p, d in zip(picks, draws, strict=True) if d[0] < 0.5]
        assert applied == expected


def test_ops_are_drawn_about_uniformly_and_half_applied(monkeypatch):
    applied: list[str] = []
    monkeypatch.setattr(randaugment, "apply_op",
                        lambda img, name, magnitude, sign: applied.append(name) or img)
    aug, gen, img = RandAugment(), torch.Generator().manual_seed(0), random_image()
    for _ in range(2000):
        aug(img, gen)
    assert abs(len(applied) / 4000 - 0.5) < 0.03
    counts = [applied.count(name) for name in FNE_OPS]
    assert min(counts) > 0.7 * len(applied) / len(FNE_OPS)


@pytest.mark.parametrize("kwargs", [{"ops": ("solarize",)}, {"magnitude": 11}, {"num_ops": -1},
                                    {"ops": ()}])
def test_bad_settings_are_one_line_errors(kwargs):
    with pytest.raises(VsekitError, match="RandAugment needs"):
        RandAugment(**kwargs)
