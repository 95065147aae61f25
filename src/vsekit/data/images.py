"""Image decoding and the few transforms vsekit needs, with PIL and torch only.

Every random choice draws from a ``torch.Generator`` passed in by the caller, so a seeded
generator gives the same crops and flips on every run. Tensors are float32 ``[3, H, W]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vsekit.errors import VsekitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN_STD = (0.5, 0.5, 0.5)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# Leading bytes of the image formats datasets ship (WebP: "RIFF", 4 size bytes, "WEBP").
IMAGE_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"),
                    (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"),
                    (b"MM\x00*", "TIFF"))


def image_format(head: bytes) -> str | None:
    """The image format whose signature starts ``head`` (a file's first 12 bytes), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in IMAGE_SIGNATURES if head.startswith(magic)), None)


def load_image(path: str | Path) -> Image.Image:
    """Decode an image file to an RGB PIL image; unreadable or non-image files → VsekitError."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise VsekitError(f"image file {str(path)!r} not found; check the dataset's image "
                          "folder") from None
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, ValueError) as exc:
        raise VsekitError(f"image file {str(path)!r} cannot be decoded ({exc}); replace or "
                          "remove the corrupt file") from None


def resize(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """Resize to ``size`` (an int means a square ``size × size``; (width, height) otherwise).

    Bicubic, which is what ``PIL.Image.resize`` does by default for RGB images.
    """
    width, height = (size, size) if isinstance(size, int) else size
    if img.size == (width, height):
        return img
    return img.resize((width, height), Image.Resampling.BICUBIC)


def hflip(img: Image.Image) -> Image.Image:
    """Mirror left ↔ right."""
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def crop_box(width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float],
             generator: torch.Generator, attempts: int = 10) -> tuple[int, int, int, int]:
    """A random (left, top, crop_width, crop_height) covering ``scale`` of the area.

    As in the usual RandomResizedCrop: draw an area fraction in ``scale`` and a log-uniform
    aspect ratio (width / height) in ``ratio``; retry up to ``attempts`` times while the box
    does not fit, then fall back to the largest centred box with a ratio inside ``ratio``.
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, log_low, log_high))
        crop_w = round(math.sqrt(target * aspect))
        crop_h = round(math.sqrt(target / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = int(torch.randint(0, width - crop_w + 1, (), generator=generator))
            top = int(torch.randint(0, height - crop_h + 1, (), generator=generator))
            return left, top, crop_w, crop_h
    aspect = width / height
    if aspect < ratio[0]:
        crop_w, crop_h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        crop_w, crop_h = round(height * ratio[1]), height
    else:
        crop_w, crop_h = width, height
    return (width - crop_w) // 2, (height - crop_h) // 2, crop_w, crop_h


def random_resized_crop(img: Image.Image, size: int, generator: torch.Generator,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> Image.Image:
    """Crop a random box (see :func:`crop_box`) and resize it to ``size × size``."""
    left, top, crop_w, crop_h = crop_box(img.width, img.height, scale, ratio, generator)
    return resize(img.crop((left, top, left + crop_w, top + crop_h)), size)


def to_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB image → float32 [3, H, W]: pixel / 255, minus ``mean``, divided by ``std``."""
    mean_arr = np.asarray(mean, dtype=np.float32)
    std_arr = np.asarray(std, dtype=np.float32)
    pixels = (np.asarray(img, dtype=np.float32) / 255.0 - mean_arr) / std_arr
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def transform(img: Image.Image, size: int, mean: Sequence[float], std: Sequence[float],
              augment: bool = False, generator: torch.Generator | None = None,
              crop_scale: tuple[float, float] = (0.08, 1.0),
              extra: Callable[[Image.Image, torch.Generator], Image.Image] | None = None,
              ) -> torch.Tensor:
    """The full pipeline → [3, size, size]: resize (or, when ``augment``, a random resized crop
    with ``crop_scale``, a flip with probability 1/2 and then ``extra`` (e.g. RandAugment),
    all drawn from ``generator``), normalise.
    """
    if augment:
        if generator is None:
            raise ValueError("augment=True needs a torch.Generator")
        img = random_resized_crop(img, size, generator, scale=crop_scale)
        if float(torch.rand((), generator=generator)) < 0.5:
            img = hflip(img)
        if extra is not None:
            img = extra(img, generator)
    else:
        img = resize(img, size)
    return to_tensor(img, mean, std)
