"""The ``hf_vit`` image encoder on a tiny ViT written by save_pretrained (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vsekit.data.dataset import ImageStore
from vsekit.errors import VsekitError
from vsekit.models import IMAGE_ENCODERS, ModelContext
from vsekit.models.vit import CLIP_MEAN, CLIP_STD


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> str:
    from transformers import ViTConfig, ViTModel

    folder = tmp_path_factory.mktemp("tiny-vit")
    config = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, image_size=32, patch_size=16)
    torch.manual_seed(0)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    return str(folder)


def build(section, embed_dim=16, kind="pixels"):
    name, params = IMAGE_ENCODERS.parse(section, "model.image")
    return IMAGE_ENCODERS.build(name, params, context=ModelContext(embed_dim=embed_dim,
                                                                   image_kind=kind))


def test_mean_and_cls_pooling_against_the_tokens(tiny_vit):
    images = torch.randn(3, 3, 32, 32)
    mean = build({"type": "hf_vit", "model": tiny_vit, "image_size": 32, "project": False})
    cls = build({"type": "hf_vit", "model": tiny_vit, "image_size": 32, "project": False,
                 "pooling": "cls"})
    with torch.no_grad():
        tokens = mean.backbone(pixel_values=images).last_hidden_state  # [3, 1 + 4, 16]
        out_mean, out_cls = mean(images), cls(images)
    assert tokens.shape == (3, 5, 16)
    for b in range(3):
        torch.testing.assert_close(out_mean[b], sum(tokens[b, t] for t in range(5)) / 5)
        torch.testing.assert_close(out_cls[b], tokens[b, 0])


def test_projection_and_gradients(tiny_vit):
    enc = build({"type": "hf_vit", "model": tiny_vit, "image_size": 32}, embed_dim=8).train()
    out = enc(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 8)
    out.sum().backward()
    assert enc.head.weight.grad is not None
    assert all(p.grad is not None for p in enc.backbone.parameters() if p.requires_grad)


def test_frozen_backbone_stays_in_eval_mode_without_grad(tiny_vit):
    enc = build({"type": "hf_vit", "model": tiny_vit, "image_size": 32, "freeze": True}).train()
    assert enc.training and not enc.backbone.training
    assert not any(p.requires_grad for p in enc.backbone.parameters())


def test_prepare_normalises_pixels_with_the_chosen_statistics(tiny_vit):
    enc = build({"type": "hf_vit", "model": tiny_vit, "image_size": 32, "normalize": "clip"})
    pixels = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    batch = enc.prepare(ImageStore("pixels", pixels=pixels), np.array([1]), train=False)
    expected = [(pixels[1, :, :, c] / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c] for c in range(3)]
    np.testing.assert_allclose(batch[0].numpy(), np.stack(expected), atol=1e-5)


@pytest.mark.parametrize(("section", "match"), [
    ({"image_size": 64}, "expects 32-px inputs"),
    ({"image_size": 32, "project": False}, "embed_dim to 16"),
])
def test_mismatches_are_one_line_errors(tiny_vit, section, match):
    with pytest.raises(VsekitError, match=match):
        build({"type": "hf_vit", "model": tiny_vit, **section}, embed_dim=8)


def test_features_data_and_missing_weights_are_one_line_errors(tiny_vit, tmp_path):
    with pytest.raises(VsekitError, match="takes files or pixels images"):
        build({"type": "hf_vit", "model": tiny_vit, "image_size": 32}, kind="features")
    with pytest.raises(VsekitError, match="not available offline"):
        IMAGE_ENCODERS.parse({"type": "hf_vit", "model": str(tmp_path)}, "model.image")


def test_training_prepare_applies_crop_flip_and_randaugment_from_the_generator(tiny_vit):
    section = {"type": "hf_vit", "model": tiny_vit, "image_size": 32, "augment": True,
               "randaugment_ops": 2}
    pixels = np.random.default_rng(1).integers(0, 256, size=(4, 40, 40, 3), dtype=np.uint8)
    store, index = ImageStore("pixels", pixels=pixels), np.arange(4)
    first, second = build(section), build(section)
    a = first.prepare(store, index, train=True)
    b = second.prepare(store, index, train=True)
    torch.testing.assert_close(a, b)  # same seed, same pipeline
    plain = build({**section, "randaugment_ops": 0})
    assert not torch.allclose(plain.prepare(store, index, train=True), a)
    evaluation = first.prepare(store, index, train=False)  # no augmentation at test time
    torch.testing.assert_close(evaluation, second.prepare(store, index, train=False))
    with pytest.raises(VsekitError, match="RandAugment needs"):
        IMAGE_ENCODERS.parse({**section, "randaugment_magnitude": 12}, "model.image")
