"""RandAugment as the FNE/ALBEF training pipeline uses it, on PIL images with a seeded generator.

Per image: draw ``num_ops`` operations uniformly *with replacement* from ``ops``; apply each
with probability 1/2 at the fixed ``magnitude`` (out of 10). Geometric operations draw a random
sign and fill uncovered pixels with grey (128, 128, 128); enhancement factors are
``magnitude / 10 · 1.8 + 0.1`` (1.36 at magnitude 7). Shear: ``magnitude / 10 · 0.3``;
translation: ``magnitude`` pixels; rotation: ``magnitude / 10 · 30`` degrees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageEnhance, ImageOps

from vsekit.errors import VsekitError

MAX_LEVEL = 10.0
GREY = (128, 128, 128)
FNE_OPS = ("identity", "autocontrast", "equalize", "brightness", "sharpness",
           "shear_x", "shear_y", "translate_x", "translate_y", "rotate")


def _affine(img: Image.Image, inverse: tuple[float, ...]) -> Image.Image:
    """Apply an affine map given as PIL's output → input coefficients, grey fill."""
    return img.transform(img.size, Image.Transform.AFFINE, inverse,
                         resample=Image.Resampling.BILINEAR, fillcolor=GREY)


def apply_op(img: Image.Image, name: str, magnitude: float, sign: float) -> Image.Image:
    """One RandAugment operation at ``magnitude`` (0–10); ``sign`` ±1 for geometric ops."""
    level = magnitude / MAX_LEVEL
    if name == "identity":
        return img
    if name == "autocontrast":
        return ImageOps.autocontrast(img)
    if name == "equalize":
        return ImageOps.equalize(img)
    if name in ("brightness", "sharpness"):
        enhancer = ImageEnhance.Brightness if name == "brightness" else ImageEnhance.Sharpness
        return enhancer(img).enhance(level * 1.8 + 0.1)
    if name == "shear_x":
        return _affine(img, (1, sign * level * 0.3, 0, 0, 1, 0))
    if name == "shear_y":
        return _affine(img, (1, 0, 0, sign * level * 0.3, 1, 0))
    if name == "translate_x":
        return _affine(img, (1, 0, sign * magnitude, 0, 1, 0))
    if name == "translate_y":
        return _affine(img, (1, 0, 0, 0, 1, sign * magnitude))
    if name == "rotate":
        return img.rotate(sign * level * 30, resample=Image.Resampling.BILINEAR, fillcolor=GREY)
    raise VsekitError(f"unknown RandAugment operation {name!r}; choose from {', '.join(FNE_OPS)}")


@dataclass
class RandAugment:
    """Callable ``(PIL image, torch.Generator) → PIL image``; see the module docstring."""

    num_ops: int = 2
    magnitude: float = 7.0
    ops: Sequence[str] = FNE_OPS

    def __post_init__(self) -> None:
        unknown = sorted(set(self.ops) - set(FNE_OPS))
        if unknown or not self.ops or self.num_ops < 0 or not 0 <= self.magnitude <= MAX_LEVEL:
            raise VsekitError(f"RandAugment needs ops from {', '.join(FNE_OPS)}, num_ops >= 0 "
                              f"and magnitude in [0, 10]; got ops {list(self.ops)}, num_ops "
                              f"{self.num_ops}, magnitude {self.magnitude}")

    def __call__(self, img: Image.Image, generator: torch.Generator) -> Image.Image:
        picks = torch.randint(len(self.ops), (self.num_ops,), generator=generator).tolist()
        draws = torch.rand(self.num_ops, 2, generator=generator).tolist()
        for pick, (apply, sign) in zip(picks, draws, strict=True):
            if apply < 0.5:
                img = apply_op(img, self.ops[pick], self.magnitude, 1.0 if sign < 0.5 else -1.0)
        return img


PILAugment = Callable[[Image.Image, torch.Generator], Image.Image]
