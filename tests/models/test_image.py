"""Image encoders: shapes, inputs prepared from every store kind, gradients, freezing, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vsekit.data.dataset import ImageStore
from vsekit.errors import VsekitError
from vsekit.models import IMAGE_ENCODERS, ModelContext
from vsekit.models.efficientnet import FEATURE_DIM
from vsekit.models.image import CNNEncoder, EfficientNetEncoder, GPOEncoder, ProjectionEncoder


def build(section: dict, kind: str = "features", feature_dim: int | None = 6, embed_dim: int = 4):
    name, params = IMAGE_ENCODERS.parse(section, "model.image")
    context = ModelContext(embed_dim=embed_dim, image_kind=kind, image_feature_dim=feature_dim)
    return IMAGE_ENCODERS.build(name, params, context=context)


def feature_store(*shape: int, seed: int = 0) -> ImageStore:
    rng = np.random.default_rng(seed)
    return ImageStore("features", features=rng.standard_normal(shape).astype(np.float16))


def pixel_store(n: int = 5, size: int = 32, seed: int = 0) -> ImageStore:
    rng = np.random.default_rng(seed)
    return ImageStore("pixels", pixels=rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))


def file_store(folder, n: int = 3, size: int = 40) -> ImageStore:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        paths.append(folder / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (size, size + 10, 3), dtype=np.uint8)).save(paths[-1])
    return ImageStore("files", files=paths)


def assert_all_grads(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


# ------------------------------------------------------------------ projection


def test_projection_prepare_and_forward_pooled():
    enc = build({"type": "projection"})
    assert isinstance(enc, ProjectionEncoder)
    store = feature_store(10, 6)
    x = enc.prepare(store, np.array([7, 2, 2, 5]), train=True)
    assert x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(store.features[[7, 2, 2, 5]].astype(np.float32)))
    out = enc(x)
    assert out.shape == (4, 4)
    out.sum().backward()
    assert_all_grads(enc)


@pytest.mark.parametrize("pool", ["mean", "max"])
def test_projection_pools_regions_after_the_head(pool):
    enc = build({"type": "projection", "region_pool": pool, "hidden": 5}).eval()
    enc.requires_grad_(False)
    x = enc.prepare(feature_store(4, 3, 6), np.arange(4), train=False)
    out = enc(x)
    per_region = enc.head(x)  # [4, 3, 4]
    for b in range(4):
        for j in range(4):
            values = [float(per_region[b, r, j]) for r in range(3)]
            expected = sum(values) / 3 if pool == "mean" else max(values)
            assert abs(float(out[b, j]) - expected) < 1e-5


def test_projection_rejects_nan_batches_and_other_kinds():
    enc = build({"type": "projection"})
    store = feature_store(3, 6)
    store.features[1, 0] = np.nan
    with pytest.raises(VsekitError, match="NaN"):
        enc.prepare(store, np.array([0, 1]), train=True)
    with pytest.raises(VsekitError, match="needs precomputed features"):
        enc.prepare(pixel_store(), np.array([0]), train=True)
    with pytest.raises(VsekitError, match="takes features images.*'pixels'"):
        build({"type": "projection"}, kind="pixels", feature_dim=None)


@pytest.mark.parametrize("section, match", [
    ({"type": "projection", "hidden": 0}, "hidden must be positive"),
    ({"type": "projection", "dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ({"type": "projection", "region_pool": "sum"}, "not one of"),
    ({"type": "projection", "hiden": 3}, "did you mean 'hidden'"),
    ({"type": "gpo", "d_pe": 7}, "d_pe must be even"),
    ({"type": "gpo", "d_hidden": -1}, "d_hidden must be positive"),
    ({"type": "cnn", "width": 0}, "width must be positive"),
    ({"type": "efficientnet_lite0", "image_size": 16}, "image_size must be at least 32"),
    ({"type": "efficientnet_lite0", "crop_scale": [0.5]}, "crop_scale"),
    ({"type": "efficientnet_lite0", "crop_scale": [0.9, 0.5]}, "crop_scale"),
    ({"type": "efficientnet_lite0", "crop_scale": [0.0, 1.0]}, "crop_scale"),
])
def test_bad_params_are_one_line_errors(section, match):
    with pytest.raises(VsekitError, match=match):
        IMAGE_ENCODERS.parse(section, "model.image")


# ------------------------------------------------------------------ gpo


def test_gpo_encoder_is_head_then_gpo():
    enc = build({"type": "gpo", "hidden": 8, "d_pe": 4, "d_hidden": 3})
    assert isinstance(enc, GPOEncoder)
    x = enc.prepare(feature_store(6, 5, 6), np.array([1, 4, 0]), train=True)
    assert x.shape == (3, 5, 6)
    enc.eval()
    out = enc(x)
    expected, _ = enc.gpo(enc.head(x), torch.tensor([5, 5, 5]))
    assert out.shape == (3, 4)
    torch.testing.assert_close(out, expected)
    enc.train()
    enc(x).sum().backward()
    assert_all_grads(enc)


def test_gpo_encoder_rejects_pooled_features():
    enc = build({"type": "gpo"})
    with pytest.raises(VsekitError, match="region features"):
        enc.prepare(feature_store(3, 6), np.array([0]), train=True)


# ------------------------------------------------------------------ cnn


@pytest.mark.parametrize("size", [32, 64])
def test_cnn_prepare_normalises_pixels_and_forward_shape(size):
    enc = build({"type": "cnn", "width": 8}, kind="pixels", feature_dim=None)
    assert isinstance(enc, CNNEncoder)
    store = pixel_store(4, size)
    x = enc.prepare(store, np.array([3, 1]), train=True)
    assert x.shape == (2, 3, size, size) and x.dtype == torch.float32
    for i, row in enumerate([3, 1]):
        for c in range(3):
            for y, xx in [(0, 0), (size - 1, 5), (7, size - 1)]:
                expected = (store.pixels[row, y, xx, c] / 255.0 - 0.5) / 0.5
                assert abs(float(x[i, c, y, xx]) - expected) < 1e-6
    out = enc(x)
    assert out.shape == (2, 4)
    out.sum().backward()
    assert_all_grads(enc)


def test_cnn_flips_only_when_training_with_augment():
    store = pixel_store(16)
    index = np.arange(16)
    plain = build({"type": "cnn"}, kind="pixels", feature_dim=None)
    reference = plain.prepare(store, index, train=False)
    assert torch.equal(plain.prepare(store, index, train=True), reference)

    aug = build({"type": "cnn", "augment": True}, kind="pixels", feature_dim=None)
    assert torch.equal(aug.prepare(store, index, train=False), reference)
    flipped = aug.prepare(store, index, train=True)
    mirrored = [bool(torch.equal(flipped[i], reference[i].flip(-1))) for i in range(16)]
    kept = [bool(torch.equal(flipped[i], reference[i])) for i in range(16)]
    assert all(m or k for m, k in zip(mirrored, kept, strict=True))
    assert 0 < sum(mirrored) < 16

    again = build({"type": "cnn", "augment": True}, kind="pixels", feature_dim=None)
    assert torch.equal(again.prepare(store, index, train=True), flipped)  # seeded generator


def test_cnn_reads_files_resized(tmp_path):
    enc = build({"type": "cnn", "image_size": 24, "width": 4}, kind="files", feature_dim=None)
    store = file_store(tmp_path)
    x = enc.prepare(store, np.array([2, 0]), train=False)
    assert x.shape == (2, 3, 24, 24)
    expected = np.asarray(Image.open(store.files[2]).convert("RGB").resize((24, 24)))
    torch.testing.assert_close(x[0], torch.tensor(expected / 127.5 - 1.0,
                                                  dtype=torch.float32).permute(2, 0, 1))
    assert enc(x).shape == (2, 4)


def test_cnn_errors(tmp_path):
    with pytest.raises(VsekitError, match="use type projection or gpo"):
        build({"type": "cnn"}, kind="features")
    enc = build({"type": "cnn"}, kind="files", feature_dim=None)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(VsekitError, match="bad.jpg"):
        enc.prepare(ImageStore("files", files=[tmp_path / "bad.jpg"]), np.array([0]), True)
    with pytest.raises(VsekitError, match="precomputed features"):
        enc.prepare(feature_store(2, 6), np.array([0]), train=True)


# ------------------------------------------------------------------ efficientnet_lite0


def test_efficientnet_frozen_backbone_gets_no_grad_and_stays_in_eval(tmp_path):
    enc = build({"type": "efficientnet_lite0", "image_size": 64}, kind="files", feature_dim=None)
    assert isinstance(enc, EfficientNetEncoder)
    enc.train()
    assert enc.training and enc.head.training and not enc.backbone.training
    assert not any(m.training for m in enc.backbone.modules())
    x = enc.prepare(file_store(tmp_path), np.array([0, 2, 1]), train=True)
    assert x.shape == (3, 3, 64, 64)
    out = enc(x)
    assert out.shape == (3, 4)
    out.sum().backward()
    assert all(p.grad is None and not p.requires_grad for p in enc.backbone.parameters())
    assert_all_grads(enc.head)
    before = enc.backbone._bn1.running_mean.clone()
    enc(x)
    assert torch.equal(before, enc.backbone._bn1.running_mean)  # eval-mode BN: no update


def test_efficientnet_unfrozen_backbone_trains():
    enc = build({"type": "efficientnet_lite0", "freeze": False, "image_size": 32},
                kind="pixels", feature_dim=None).train()
    assert enc.backbone.training
    x = enc.prepare(pixel_store(2, 20), np.array([0, 1]), train=False)
    assert x.shape == (2, 3, 32, 32)
    enc(x).sum().backward()
    for name, p in enc.named_parameters():
        if name.startswith("backbone._fc."):  # the unused ImageNet classifier
            assert not p.requires_grad and p.grad is None
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_efficientnet_prepare_matches_backbone_preprocessing(tmp_path):
    enc = build({"type": "efficientnet_lite0", "image_size": 48}, kind="files", feature_dim=None)
    store = file_store(tmp_path)
    x = enc.prepare(store, np.array([1]), train=False)
    pixels = np.asarray(Image.open(store.files[1]).convert("RGB").resize((48, 48)), np.float64)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    expected = torch.tensor(((pixels / 255 - mean) / std).transpose(2, 0, 1), dtype=torch.float32)
    torch.testing.assert_close(x[0], expected)
    with torch.no_grad():
        torch.testing.assert_close(enc.eval()(x), enc.head(enc.backbone.features(x)))
    assert enc.head.linear.in_features == FEATURE_DIM


def test_efficientnet_augmentation_is_seeded(tmp_path):
    section = {"type": "efficientnet_lite0", "image_size": 32, "augment": True,
               "crop_scale": [0.3, 0.6]}
    store = file_store(tmp_path)
    a = build(section, kind="files", feature_dim=None)
    b = build(section, kind="files", feature_dim=None)
    xa, xb = a.prepare(store, np.arange(3), True), b.prepare(store, np.arange(3), True)
    assert torch.equal(xa, xb)
    assert not torch.equal(xa, a.prepare(store, np.arange(3), False))
    assert not torch.equal(xa, a.prepare(store, np.arange(3), True))  # generator advanced


def test_efficientnet_rejects_feature_data():
    with pytest.raises(VsekitError, match="efficientnet_lite0.*use type projection"):
        build({"type": "efficientnet_lite0"}, kind="features")
